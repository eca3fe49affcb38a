"""One process per run directory: an OS file lock held for the run's life.

The lock is ``<study dir>/.<run id>.lock`` beside the run directory (so it survives the run
directory being moved aside by ``overwrite=true``), taken with ``flock``: the kernel releases it
when the holder dies, so a lock left by a killed process is simply taken over (its file says who
held it last). A second process asking for a held lock gets one line naming the holder's PID and
host. ``flock`` works on local file systems and on NFS (Linux emulates it with POSIX locks), so
it holds across the nodes of a cluster that share ``results_root``.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

from dropens.failures import RunFailed


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """``with RunLock(run_dir): ...``: hold the run's lock, or raise :class:`RunFailed`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self._fd: int | None = None

    def holder(self) -> str:
        """``PID 123 on host x`` as written by the current holder (best effort)."""
        try:
            text = self.path.read_text().split()
        except OSError:
            text = []
        if len(text) >= 2:
            return f"PID {text[0]} on host {text[1]}"
        return "another process"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFailed(
                    f"run {self.run_dir.name} is being trained by {self.holder()} (lock "
                    f"{self.path}); wait for it to finish, or stop that process and rerun"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # the file may have been removed by its previous holder between open and flock:
            # then this lock is on a dead inode, so start again
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still held: nobody else has this inode locked
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
