"""Crash-safe files: a kill at any instant leaves either the old or the new complete file.

Every file a run or a job shares (checkpoints, ``results.json``, ``metrics.csv``, the run's config
record, preprocessing caches) is written to a temporary file in the same folder, flushed to disk,
and renamed over the target (``os.replace`` is atomic within one file system, NFS included). A
killed writer leaves only its temporary file, named ``.<name>.<pid>.<random>.tmp``, which no reader
opens and :func:`remove_stale_temporaries` clears once the folder's lock is held.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    # created like open() would (mode 0o666 minus the umask), so colleagues can read shared results
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Delete temporary files left in ``folder`` by killed writers of ``name`` (call under a lock)."""
    stale = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale
