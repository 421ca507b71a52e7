"""Exclusive file locks that die with their holder.

:class:`FileLock` takes ``flock`` on a lock file: the kernel releases it when the holding process
exits for any reason, SIGKILL included, so a killed job never blocks its relaunch and no stale
lock file needs cleaning. The holder writes who it is into the file, so that a process that finds
the lock taken can say by whom. On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which
other clients see (unless the share is mounted with ``local_lock=flock`` or ``nolock``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


class FileLock:
    """An exclusive lock on ``path`` (created if missing, never deleted: deleting lock files races).

    Use as a context manager (waits for the lock) or through :meth:`acquire`. ``on_wait(holder)``
    is called once before a wait, with who holds the lock (to tell the user why nothing happens).
    """

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.on_wait = on_wait
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, return False at once if another process holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                if self.on_wait is not None:
                    self.on_wait(self.holder())
                fcntl.flock(fd, fcntl.LOCK_EX)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds (or last held) the lock, as the holder wrote it."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
