"""The fused functions' one entry: each elementwise pass of a quantizer, binary activation, QBP or
LSTM cell runs as one loop over memory instead of one per operation.

On the CPU the loop comes from a package compiled ahead of time (:mod:`fewmult.quant.ahead`);
elsewhere, with ``FEWMULT_AOT=0``, or where a function cannot be compiled ahead of time, from
``torch.compile``; without any working compiler the callers run the function eagerly.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator

import torch

from fewmult.quant import ahead
from fewmult.run.source_keys import reuse_source_keys

_COMPILED: dict[Callable, Callable | None] = {}


def fused_or_eager(fn: Callable, *args):
    """``fn(*args)``, fused where a compiler works (:func:`run_fused`), eagerly where none does."""
    out = run_fused(fn, *args)
    return fn(*args) if out is None else out


_EAGER = threading.local()


@contextlib.contextmanager
def eager_fusion() -> Iterator[None]:
    """Run the fused functions eagerly inside (the same numbers up to float rounding): for one-off
    passes, such as the one-example forward passes that count a model's layers, which would
    otherwise compile each function for shapes, modes and global settings that training never sees
    again."""
    before = getattr(_EAGER, "on", False)
    _EAGER.on = True
    try:
        yield
    finally:
        _EAGER.on = before


def run_fused(fn: Callable, *args):
    """``fn(*args)`` as one fused loop: on the CPU from its package compiled ahead of time
    (:mod:`fewmult.quant.ahead`), else from ``torch.compile(fn)``; None where neither can compile
    here (warned once).

    Callers pass long rows: compiled with dynamic shapes, the loop's vectorized inner dimension is
    the tensor's last one, so a (512, 512, 3, 3) kernel ran 16-lane vectors over rows of 3 (its
    stochastic binarization took 7.1 ms; flattened 1.3 ms, the same numbers).

    Each compiled version is guarded on what it was traced with, and Dynamo stops compiling a
    function after 8 versions (then it runs eagerly, unfused). So no fused function takes part in
    autograd (every caller is a no-grad computation or a custom ``autograd.Function``), and tensors
    go in detached (no guard on ``requires_grad``, and a view's reshape becomes a tensor of its own,
    not guarded on its base's shape) and with autocast off (the same elementwise numbers; no
    version per precision setting).
    """
    if getattr(_EAGER, "on", False):
        return fn(*args)
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    with (
        torch.autocast(device, enabled=False)
        if torch.is_autocast_enabled(device)
        else contextlib.nullcontext()
    ):
        if ahead.applies(args) and (out := ahead.run_ahead(fn, args)) is not None:
            return out
        return _run_compiled(fn, args)


def _run_compiled(fn: Callable, args: tuple):
    if fn not in _COMPILED:
        if not _COMPILED:  # the process's first: torch hashes its sources unless they are remembered
            reuse_source_keys()
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    compiled = _COMPILED[fn]
    if compiled is None:
        return None
    try:
        return compiled(*args)
    except Exception as exc:  # no C++ compiler, an unsupported device, ...
        _COMPILED[fn] = None
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {exc}); {fn.__name__} runs unfused (slower; "
            "stochastic quantizers then draw from torch.rand)",
            stacklevel=3,
        )
        return None
