"""One training process (or torchrun job) per run directory at a time.

`RUN_DIR/.lock` holds an exclusive `flock` and the holder's PID while a run trains. A second launch
into the same `--out` fails at once with one line naming that PID, instead of both "succeeding"
with interleaved metrics and checkpoints. The kernel drops a flock when its process dies, so a lock
left by a killed run (its file still names the dead PID) is simply taken over. Where the file
system has no flock (some network mounts), the PID in the file decides: a live process other than
this one holds the directory, a dead one does not.

The lock file is removed at release (after checking, on acquiring, that the file locked is still
the one at the path, so a launch racing with that removal cannot hold a deleted file's lock).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from mmtlab.rundir import LOCK_NAME, pid_alive

try:
    import fcntl
except ImportError:  # not POSIX: only the PID check
    fcntl = None


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


class RunDirLock:
    """Exclusive use of a run directory; `error` is the exception class raised when another
    process holds it (the loop passes RunDirError, which the command line prints as one line)."""

    def __init__(self, run_dir: str | Path, error: type[Exception] = RuntimeError):
        self.run_dir, self.error = Path(run_dir), error
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.created: Path | None = None  # the outermost directory acquire() created, if any

    def _busy(self, pid: int) -> Exception:
        holder = f"another mmtlab process (PID {pid})" if pid else "another mmtlab process"
        return self.error(
            f"{self.run_dir} is in use by {holder}: wait for it to finish, stop it, or choose another --out"
        )

    def acquire(self) -> RunDirLock:
        try:
            missing = [d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()]
            self.created = missing[-1] if missing else None
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self.error(f"--out {self.run_dir}: cannot create the run directory: {e.strerror or e}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise self.error(
                    f"--out {self.run_dir}: cannot write in the run directory: {e.strerror or e}"
                ) from None
            try:
                if fcntl is None:
                    raise OSError(errno.ENOLCK, "no flock")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise self._busy(pid) from None
                pid = _read_pid(fd)  # no flock here: a live holder's PID decides
                if pid != os.getpid() and pid_alive(pid):
                    os.close(fd)
                    raise self._busy(pid) from None
            try:  # the file a previous holder removed while we opened it is not the lock any more
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self, remove_empty_dir: bool = False) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still holding the lock: see the module docstring
        os.close(self.fd)  # drops the flock
        self.fd = None
        if remove_empty_dir and self.created is not None:  # nothing written: leave no empty directories
            with contextlib.suppress(OSError):
                for d in (self.run_dir, *self.run_dir.parents):
                    d.rmdir()  # fails (and stops) at the first one something was written in
                    if d == self.created:
                        break

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(remove_empty_dir=exc_type is not None)


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, dp=None, error: type[Exception] = RuntimeError):
    """Hold `run_dir` for this run. Under torchrun rank 0 takes the lock and every rank learns
    whether it got it (they fail together rather than some waiting at a barrier forever)."""
    is_main = dp is None or dp.is_main
    lock, failure = RunDirLock(run_dir, error), None
    if is_main:
        try:
            lock.acquire()
        except Exception as e:
            failure = e
    if dp is not None and dp.any(failure is not None) and failure is None:
        failure = error(f"{run_dir}: rank 0 could not take the run directory's lock")
    if failure is not None:
        lock.release()
        raise failure
    try:
        yield lock
    except BaseException:
        lock.release(remove_empty_dir=True)
        raise
    lock.release()
