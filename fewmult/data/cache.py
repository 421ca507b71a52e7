"""Preprocessed tensors cached next to the data, so GCN/ZCA/LCN run once per dataset."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

CACHE_VERSION = 1


def cache_path(folder: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps({**key, "v": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()
    return folder / "fewmult-cache" / f"{name}-{digest[:12]}.pt"


def cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load ``path`` if it holds a readable cache, else compute, save atomically and return.

    A damaged cache file is derived data: it is replaced, with a warning, never trusted.
    """
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # truncated or foreign file: recompute
            warnings.warn(
                f"ignoring unreadable preprocessing cache {path} ({exc}); recomputing", stacklevel=2
            )
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(tensors, tmp)
    os.replace(tmp, path)
    return tensors
