"""SIGTERM as a request to stop at the next step boundary (after a checkpoint), not a kill.

Schedulers (SLURM at a time limit, Kubernetes on preemption, torchrun when a peer fails) send
SIGTERM and wait a while before SIGKILL; a run that checkpoints and exits in that window resumes
where it stopped.
"""

from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """While active, SIGTERM sets `requested` instead of ending the process."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(self.signum, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False
