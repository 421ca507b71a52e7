"""An exported MLP's dense layers as one kernel call (``kernels.dense_chain``, csrc/chain.c).

A plan runs op by op, returning to Python between kernels; for Hou et al.'s MLP at batch 64 on AMX
that was about 20 us of a 350-400 us forward (BENCHMARKS.md). Where a network is a chain of dense
layers that the AMX kernels run whole (float rows into a first product of binary or ternary weights,
then packed signs into binary weights, each layer's BN + sign compared inside its product, the last
layer's batch norm after it), :func:`dense_chain` hands the same kernels, with the same arrays and the
same choices by size, to one C loop. Its answers are the plan's (tested), and ``forward`` runs it from
``kernels.AMX_MIN_ROWS`` rows on (below that the plan's other kernels run).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fewmult.runtime import kernels

if TYPE_CHECKING:
    from fewmult.runtime.network import CompiledNetwork


@dataclass
class DenseChain:
    """The call: float rows (n, *input_shape) in, the last layer's float64 scores (n, o) out."""

    layers: ctypes.Array  # of kernels.DenseLayer
    arrays: list[dict[str, np.ndarray | None]]  # what the layers point to: alive while the chain is
    o: int
    threads: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        return kernels.dense_chain(rows, self.layers, self.o, self.threads)


def _layer(
    net: CompiledNetwork, op: dict[str, Any], after: dict[str, Any], k: int, bits: bool
) -> tuple[dict[str, int], dict[str, np.ndarray | None]] | None:
    """A ``DenseLayer``'s sizes and the arrays it points to, or None where the chain cannot take it."""
    from fewmult.runtime.network import State, _planes

    spec = op["weight"]
    o = spec["shape"][0]
    if (
        spec["encoding"] not in (("binary",) if bits else ("binary", "ternary"))
        or int(np.prod(spec["shape"][1:])) != k
    ):
        return None
    summed = net._summed(op, State("bits" if bits else "float", (k,)))
    plus, minus = (None if p is None else p.reshape(o, k) for p in _planes(net.reference, spec))
    arrays = {
        "tiles": kernels.amx_layout(plus, 4),
        "ones": kernels.pinned(plus.sum(axis=1, dtype=np.int32)),
        "minus_tiles": None if minus is None else kernels.amx_layout(minus, 4),
        "minus_ones": None if minus is None else kernels.pinned(minus.sum(axis=1, dtype=np.int32)),
        "packed": kernels.pinned(kernels.pack_rows(plus)) if bits else None,
    }
    if after["op"] == "sign_threshold":
        if (on_sums := net._on_sums(after, summed)) is None:
            return None
        arrays["tau"], arrays["up"] = on_sums
    else:  # the last layer's batch norm
        (arrays["scale"], arrays["bias"]), (arrays["a"], arrays["b"]) = (
            summed.sums_scale,
            net._per_channel(after, "scale", "shift"),
        )
    return {"k": k, "o": o, "kblocks": -(-k // 64), "words": kernels.row_words(o)}, arrays


def dense_chain(net: CompiledNetwork, input_shape: tuple[int, ...]) -> DenseChain | None:
    """The network's layers as one call, or None where they are not such a chain or the CPU has no
    AMX: ``[flatten], (linear, sign_threshold)..., linear, affine``, the first product of at least
    ``kernels.AMX_FIXED_MIN_INPUTS`` inputs."""
    ops = list(net.reference.layers)
    if net.isa != "amx" or not ops:
        return None
    if ops[0]["op"] == "flatten":
        ops = ops[1:]
    k = int(np.prod(input_shape))
    if len(ops) < 2 or len(ops) % 2 or k < kernels.AMX_FIXED_MIN_INPUTS:
        return None
    layers, held = [], []
    for i in range(0, len(ops), 2):
        op, after = ops[i], ops[i + 1]
        last = i + 2 == len(ops)
        if op["op"] != "linear" or after["op"] != ("affine" if last else "sign_threshold"):
            return None
        if (layer := _layer(net, op, after, k, bits=i > 0)) is None:
            return None
        sizes, arrays = layer
        held.append(arrays)
        addresses = {name: None if a is None else kernels._ptr(a) for name, a in arrays.items()}
        layers.append(
            kernels.DenseLayer(
                **sizes,
                min_rows=kernels.AMX_MIN_ROWS,
                min_sums=kernels.AMX_MIN_SUMS,
                isa=kernels.ISAS.index(net.isa),
                **addresses,
            )
        )
        k = sizes["o"]
    return DenseChain((kernels.DenseLayer * len(layers))(*layers), held, k, net.threads)
