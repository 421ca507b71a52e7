"""Fused functions compiled ahead of time for the CPU (AOTInductor), so that a job's first step
neither imports inductor's compiler nor traces with Dynamo.

``torch.compile`` costs every launch about 2.2 s importing inductor's compiler and 1.2 s tracing and
loading kernels even when every kernel is in inductor's cache (``BENCHMARKS.md``, "From launch to
the first training step"): a sweep's every job pays it before its first step. Here each fused
function (:func:`fewmult.quant.fusion.run_fused`) is exported with ``torch.export`` and compiled by
AOTInductor into a package (a shared library and its metadata) the first time a CPU process needs
it; later processes load the package (about 0.1 s for the first, 0.01 s for each further one) and
call it without Dynamo or inductor's compiler.

A package serves every call with the same *signature*: the function, and for each argument, if a
tensor, its dtype and which of its dims have size 1 (compiled as constants; the others are dynamic),
otherwise its value (compiled in). The file name also fingerprints everything else the compiled
code depends on: the contents of the fewmult modules the function can call (an edited function is
never served stale; see :func:`source_files`), torch's and Python's versions, the instructions
torch's CPU kernels use, the thread count (inductor's code generation splits loops by it) and
inductor's settings from the environment. Packages live in ``fewmult-aot/`` inside inductor's cache
folder (``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_<user>``); on a cluster whose
``/tmp`` is wiped between jobs, point that variable at a shared folder.

A missing package is built at once, in the process that needs it (6-10 s per signature on a 2-core
CPU, against 1-4 s for ``torch.compile`` with a cold cache), under a file lock so that the jobs of
a sweep build each one once, and checked on that first call against the eager function (exact for
integer and boolean results, within float rounding otherwise). The run then always calls the
package, so its numbers do not depend on whether it was built or loaded: a killed job relaunched
continues with the same arithmetic. Reductions (LAB's scale, the per-channel sums of ReActNet's
backward passes) are compiled for the sizes of the call that built the package and give the same
results for other sizes to within float rounding, not bit for bit, as ``torch.compile`` (which
recompiles at some size thresholds) or eager; bit-identical repeats of a run need the same package,
i.e. the same cache folder, or ``FEWMULT_AOT=0`` (``torch.compile``, as on GPUs).

Where a function cannot be exported or compiled, or its package fails the check, the reason is
written beside the packages (so no later process tries again) and warned once, and the function
goes to ``torch.compile``.

Packages of edited sources, other torch versions or other thread counts are never loaded again; so
that the folder does not grow without end, each build first deletes the packages and refusals no
process has loaded or written for :data:`STALE_DAYS` days (loading a package renews its date).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fewmult.atomic import atomic_write_text
from fewmult.locks import FileLock

ENV = "FEWMULT_AOT"  # "0": torch.compile on the CPU too
FOLDER = "fewmult-aot"
STALE_DAYS = 30  # a package or refusal unused this long is deleted by the next build
log = logging.getLogger(__name__)

# signature -> the loaded package, or None where this function goes to torch.compile
_RUNNERS: dict[tuple, Callable | None] = {}


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def signature(fn: Callable, args: Sequence[Any]) -> tuple:
    """What a package is compiled for: ``fn`` and, per argument, a tensor's dtype and which of its
    dims have size 1, or another argument's type and value.

    The other dims are compiled as dynamic, each its own size: ``torch.export`` assumes no equality
    between them that the function does not require (sizes that happened to coincide in the call
    that built the package are not tied; tested), so any call the function itself accepts fits."""
    parts = [
        ("tensor", str(a.dtype), tuple(s == 1 for s in a.shape))
        if isinstance(a, torch.Tensor)
        else (type(a).__name__, repr(a))
        for a in args
    ]
    return (fn.__module__, fn.__qualname__, *parts)


def source_files(module: str) -> list[Path]:
    """The files of ``module`` and of every fewmult module whose functions, classes or module objects
    it holds, transitively: the code a fused function defined in ``module`` can call. An edit
    there compiles its packages afresh; an edit elsewhere (a model, the trainer) keeps them."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            owner = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.partition(".")[0] == "fewmult" and owner in sys.modules:
                todo.append(owner)
    return sorted(Path(sys.modules[name].__file__) for name in seen)


@functools.cache
def _fingerprint(module: str) -> str:
    """The sources a function of ``module`` can call, and what compiled code depends on besides
    the signature."""
    digest = hashlib.sha256()
    for path in source_files(module):  # by name and content: a clone elsewhere shares the packages
        digest.update(f"{path.name}\0".encode() + path.read_bytes())
    inductor_env = sorted(
        (k, v)
        for k, v in os.environ.items()
        if k.startswith(("TORCHINDUCTOR_", "AOT_INDUCTOR_")) and k != "TORCHINDUCTOR_CACHE_DIR"
    )
    setting = (
        torch.__version__,
        sys.version_info[:2],
        platform.machine(),
        torch.backends.cpu.get_cpu_capability(),
        inductor_env,
    )
    digest.update(repr(setting).encode())
    return digest.hexdigest()


def folder() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / FOLDER


def package_path(sig: tuple) -> Path:
    """The package of ``sig`` at this process's thread count."""
    key = hashlib.sha256(repr((_fingerprint(sig[0]), torch.get_num_threads(), sig)).encode()).hexdigest()[:32]
    return folder() / f"{sig[1]}-{key}.pt2"


class _Exported(torch.nn.Module):
    """``fn`` with its non-tensor arguments compiled in: ``forward`` takes the tensors only."""

    def __init__(self, fn: Callable, args: Sequence[Any]) -> None:
        super().__init__()
        self.fn = fn
        self.constants = [None if isinstance(a, torch.Tensor) else a for a in args]
        self.is_tensor = [isinstance(a, torch.Tensor) for a in args]

    def forward(self, *tensors: torch.Tensor):
        given = iter(tensors)
        pairs = zip(self.is_tensor, self.constants, strict=True)
        return self.fn(*(next(given) if t else c for t, c in pairs))


def exported(fn: Callable, args: Sequence[Any]) -> torch.export.ExportedProgram:
    """``fn`` at ``args`` through ``torch.export``, every dim of size above 1 dynamic."""
    from torch.export import Dim, export

    tensors = tuple(_tensors(args))
    dynamic = tuple({d: Dim.DYNAMIC for d, s in enumerate(t.shape) if s > 1} for t in tensors)
    return export(_Exported(fn, args), tensors, dynamic_shapes=(dynamic,))


def _build(fn: Callable, args: Sequence[Any], path: Path) -> None:
    """Compile ``fn`` for calls of the signature of ``args`` into the package ``path``."""
    program = exported(fn, args)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.pt2")
    try:
        # the wrapper only hands sizes and pointers to the kernels: compiled at -O0, 2 s sooner
        settings = {"aot_inductor.compile_wrapper_opt_level": "O0"}
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=settings)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def mismatch(got: Any, expected: Any) -> str | None:
    """Why ``got`` is not ``expected`` up to float rounding, None if it is: a float result may differ
    by ``max(1e-4, 4 eps)`` of its largest magnitude (float32: 1e-4, which another order of summation
    stays far within; bfloat16: 4 units in the last place), others not at all. A check against
    wrong code (an index, a broadcast), not a measure of rounding."""
    got, expected = _flat(got), _flat(expected)
    if len(got) != len(expected):
        return f"{len(got)} results instead of {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if g.shape != e.shape or g.dtype != e.dtype:
            return f"result {i} is {g.dtype}{list(g.shape)} instead of {e.dtype}{list(e.shape)}"
        if e.is_floating_point():
            rtol = max(1e-4, 4 * torch.finfo(e.dtype).eps)
            bound = rtol * float(e.abs().max()) if e.numel() else 0.0
            if not torch.allclose(g, e, rtol=rtol, atol=bound, equal_nan=True):
                return f"result {i} differs by up to {float((g - e).abs().max()):.3g}"
        elif not torch.equal(g, e):
            return f"result {i} differs in {int((g != e).sum())} of {e.numel()} elements"
    return None


def _refusal(path: Path) -> Path:
    return path.with_suffix(".refused")


def prune(where: Path, days: float = STALE_DAYS) -> list[Path]:
    """Delete the packages and refusals in ``where`` not loaded or written for ``days`` days; the
    files deleted. Lock files stay (deleting them races with a process that waits on one)."""
    cutoff = time.time() - days * 86_400
    deleted = []
    for path in where.glob("*"):
        try:
            if path.suffix in (".pt2", ".refused") and path.stat().st_mtime < cutoff:
                path.unlink()
                deleted.append(path)
        except OSError:  # pruned by another process meanwhile, or a folder this job may not write
            continue
    return deleted


def _load(fn: Callable, args: Sequence[Any], path: Path) -> Callable | None:
    """The package at ``path``, built first if missing; None (and the reason stored) if refused."""
    from torch._inductor.package import load_package

    refusal = _refusal(path)
    if not path.exists() and not refusal.exists():

        def waiting(holder: str) -> None:
            log.info("waiting for %s to compile %s ahead of time", holder, fn.__qualname__)

        with FileLock(path.with_suffix(".lock"), on_wait=waiting):
            if not path.exists() and not refusal.exists():
                if stale := prune(path.parent):
                    log.info(
                        "deleted %d packages unused for %d days from %s", len(stale), STALE_DAYS, path.parent
                    )
                log.info("compiling %s ahead of time for this CPU (once per cache folder)", fn.__qualname__)
                try:
                    _build(fn, args, path)
                    problem = mismatch(load_package(str(path))(*_tensors(args)), fn(*args))
                except Exception as exc:  # not exportable, no C++ compiler, ...
                    problem = f"{type(exc).__name__}: {exc}"
                if problem is not None:
                    path.unlink(missing_ok=True)
                    atomic_write_text(refusal, problem + "\n")
    if refusal.exists():
        warnings.warn(
            f"{fn.__qualname__} is not compiled ahead of time ({refusal.read_text().strip()[:500]}; "
            f"remembered in {refusal}: delete that file to try again); it goes to torch.compile",
            stacklevel=3,
        )
        return None
    with contextlib.suppress(OSError):  # a cache folder this job may only read
        os.utime(path)  # in use: not pruned
    try:
        return load_package(str(path))
    except FileNotFoundError:
        if path.exists():
            raise
        return _load(fn, args, path)  # pruned by another process just now: build it again


def _tensors(args: Sequence[Any]) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def applies(args: Sequence[Any]) -> bool:
    """Whether calls with ``args`` go to packages: on, and every tensor a non-empty CPU tensor."""
    tensors = _tensors(args)
    return enabled() and bool(tensors) and all(t.device.type == "cpu" and t.numel() for t in tensors)


def run_ahead(fn: Callable, args: Sequence[Any]) -> Any | None:
    """``fn(*args)`` through its package (detached CPU tensors; see :func:`applies`); None where
    ``fn`` goes to torch.compile instead. Tensors go in contiguous, as packages are compiled for."""
    args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    sig = signature(fn, args)
    if sig not in _RUNNERS:
        _RUNNERS[sig] = _load(fn, args, package_path(sig))
    runner = _RUNNERS[sig]
    return None if runner is None else runner(*_tensors(args))
