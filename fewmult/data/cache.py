"""Preprocessed tensors cached next to the data, so GCN/ZCA/LCN run once per dataset.

Many jobs may start on one empty cache (a sweep on a shared disk). Each cache entry has a lock:
the first job computes and writes the file atomically while the others wait for it, then read
the same bytes. A job killed while computing or writing leaves no file behind (only a temporary
one that the next holder of the lock deletes), and its lock dies with it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from fewmult.atomic import atomic_open, remove_stale_temporaries
from fewmult.locks import FileLock

CACHE_VERSION = 1


def cache_path(folder: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()
    return folder / "fewmult-cache" / f"{name}-{digest[:12]}.pt"


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the file is missing or unreadable (derived data: recomputed)."""
    if not path.is_file():
        return None
    try:
        # mapped, not read: DDP ranks and side-by-side jobs on one machine share the pages
        return torch.load(path, weights_only=True, mmap=True)
    except Exception as exc:  # damaged by something other than fewmult (fewmult writes atomically)
        warnings.warn(f"ignoring unreadable preprocessing cache {path} ({exc}); recomputing", stacklevel=3)
        return None


def cached(
    path: Path, compute: Callable[[], dict[str, torch.Tensor]], what: str = "the preprocessing cache"
) -> dict[str, torch.Tensor]:
    """Load ``path`` if it holds a readable cache, else compute it (once across processes) and save it;
    ``what`` names it in the lines printed while waiting and computing."""
    if (tensors := _load(path)) is not None:  # the common case takes no lock
        return tensors

    def waiting(holder: str) -> None:
        print(f"waiting for {holder} to finish {what} {path}", flush=True)

    with FileLock(path.with_name(path.name + ".lock"), on_wait=waiting):
        if (tensors := _load(path)) is not None:  # written by the process we waited for
            return tensors
        remove_stale_temporaries(path.parent, path.name)
        print(f"computing {what} once into {path}", flush=True)
        tensors = compute()
        with atomic_open(path) as f:
            torch.save(tensors, f)
        return tensors
