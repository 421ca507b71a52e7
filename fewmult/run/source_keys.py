"""Inductor's source keys, remembered between processes, so that a job's first compiled kernel
does not rehash torch and Triton.

Before its first compiled function, every process hashes the contents of torch's Python modules
(``torch_key``, ~0.2 s here) and, where Triton is installed (every CUDA build of torch, with or
without a GPU), Triton's compiler, language and its ~100 MB ``libtriton`` (``triton_key``, ~0.45 s):
0.7 s of each job's start even when every kernel is already in inductor's cache. The keys change
only when those files do. So the first process stores them beside inductor's cache, each under a
fingerprint of the paths, sizes and modification times of the files its hash reads (a stat of each,
~0.03 s), and later processes hand a stored key whose fingerprint still matches to torch's own memo
(``torch._inductor.codecache.{torch,triton}_key.set``). A changed, added or removed file changes
the fingerprint, and torch computes that key afresh (and it is stored again). Several
installations sharing the cache folder (a project's and CI's virtual environments) keep an entry
each, the newest ``KEPT``.

Only an optimization: where this torch has no such memo (another version), nothing is stored or set
and torch hashes as it always does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fewmult.atomic import atomic_write_text

STORE_NAME = "fewmult-source-keys.json"
KEPT = 8  # installations (virtual environments) sharing one cache folder, each its own entry
_done = False


def _files(root: Path, enters: Callable[[Path], bool]) -> Iterator[Path]:
    """The files below ``root`` in the folders ``enters`` accepts, without bytecode caches."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and enters(Path(folder, d)))
        for name in sorted(files):
            if not name.endswith(".pyc"):
                yield Path(folder, name)


def _package_files(root: Path) -> Iterator[Path]:
    """The files of ``root`` and of its sub-packages (folders with ``__init__.py``: the ones
    ``pkgutil.iter_modules`` enters)."""
    return _files(root, lambda folder: (folder / "__init__.py").exists())


def fingerprint(files: Iterator[Path], version: str) -> str:
    """A digest of each file's path, size and modification time (nanoseconds), and ``version``."""
    digest = hashlib.sha256(version.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _torch_fingerprint() -> str:
    return fingerprint(_package_files(Path(torch.__file__).parent), torch.__version__)


def _triton_fingerprint() -> str | None:
    try:
        import triton  # already imported by inductor's codecache, where installed
    except ImportError:
        return None
    return fingerprint(_files(Path(triton.__file__).parent, lambda _: True), triton.__version__)


def store_path() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / STORE_NAME


def _read_store(path: Path) -> dict[str, Any]:
    try:
        store = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: the keys are computed as without it
        return {}
    return store if isinstance(store, dict) else {}


def _keys() -> dict[str, tuple[Callable[[], str | None], Any, Callable, Callable]]:
    """name: (fingerprint, torch's memoized key function, to JSON, from JSON)."""
    from torch._inductor import codecache

    return {
        "torch_key": (_torch_fingerprint, codecache.torch_key, bytes.hex, bytes.fromhex),
        "triton_key": (_triton_fingerprint, codecache.triton_key, str, str),
    }


def reuse_source_keys() -> None:
    """Set torch's source keys from the store where their files are unchanged; compute and store
    the others. Once per process; call before the first ``torch.compile``d function runs."""
    global _done
    if _done:
        return
    _done = True
    keys = _keys()
    if not all(hasattr(memo, "set") for _, memo, _, _ in keys.values()):
        return
    path = store_path()
    store = _read_store(path)
    changed = False
    for name, (current, memo, encode, decode) in keys.items():
        now = current()
        if now is None:  # no Triton: torch does not hash it either
            continue
        known = store.get(name) if isinstance(store.get(name), dict) else {}
        if isinstance(known.get(now), str):
            with contextlib.suppress(RuntimeError):  # already computed here: nothing left to save
                memo.set(decode(known[now]))
            continue
        value = memo()
        if value is not None:  # the newest last; the oldest go beyond KEPT installations
            store[name] = dict([*list(known.items())[-(KEPT - 1) :], (now, encode(value))])
            changed = True
    if changed:
        try:
            atomic_write_text(path, json.dumps(store, indent=1) + "\n")
        except OSError as exc:  # a read-only cache folder: the next process hashes again
            warnings.warn(f"could not remember torch's source keys in {path}: {exc}", stacklevel=2)
