"""SIGTERM and SIGINT (Ctrl-C) as requests to stop at the next step boundary, after a checkpoint.

Schedulers (SLURM at a time limit, Kubernetes on preemption, torchrun when a peer fails) send
SIGTERM and wait a while before SIGKILL; a run that checkpoints and exits in that window resumes
where it stopped. Ctrl-C is the same request from a person: the loop saves the step it is in, then
raises KeyboardInterrupt (the command line exits 130 with a line saying how to resume). A second
Ctrl-C while the first is pending interrupts at once, as Ctrl-C normally does.
"""

from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """While active, SIGTERM and SIGINT set `requested` (and `reason`, the first signal's name)
    instead of ending the process."""

    def __init__(self, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signums = (signums,) if isinstance(signums, int) else tuple(signums)
        self.requested = False
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C (SIGINT), which the caller turns into KeyboardInterrupt."""
        return self.reason == "SIGINT"

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested:  # pressed again: do not wait for the step
            raise KeyboardInterrupt
        self.requested = True
        self.reason = self.reason or signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
