"""An exported network planned onto the compiled kernels.

Each op of the file (:mod:`fewmult.packed_forward`) becomes a step; the values between steps stay
in the form the next kernel reads:

* ``bits``: +-1 activations packed 64 to a word, rows padded to 512 bits (a sign activation's output);
* ``acc``: a product's sums before its per-unit scale and bias, int32 for +-1 x binary (exact) and
  float32 for float activations x binary or ternary weights;
* ``float``: anything else, in float64 as the reference computes it.

A product of packed activations and binary weights is XNOR + popcount (``fm_xnor_gemm``); float
activations times binary or ternary weights select and add (``fm_select_gemm``); packed activations
times real-valued weights select weights instead; a batch norm + sign after a product is one
comparison per unit that writes the next layer's packed bits (``fm_threshold_pack``). Every other op
(and a layer the kernels do not cover, e.g. convolutions for now) runs the NumPy reference, which
:meth:`CompiledNetwork.describe` names.

Where the reference is integer (+-1 x binary, then scale and bias in float64 in the same order)
the answers are identical; float32 sums of float activations differ from the reference's float64
within rounding.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from fewmult.packed_forward import PackedNetwork
from fewmult.runtime import kernels


@dataclass
class Value:
    """What flows between steps: ``kind`` is ``bits``, ``acc`` or ``float`` (module docstring)."""

    kind: str
    data: np.ndarray
    features: int = 0  # bits: values per row
    scale: np.ndarray | None = None  # acc: per unit
    bias: np.ndarray | None = None  # acc: per unit, or None

    def as_float(self) -> np.ndarray:
        """The values as the reference holds them: float64, or token codes as they came."""
        if self.kind == "bits":
            return np.where(kernels.unpack_rows(self.data, self.features), 1.0, -1.0)
        if self.kind == "acc":
            out = self.data.astype(np.float64) * self.scale
            return out if self.bias is None else out + self.bias
        return self.data.astype(np.float64, copy=False) if self.data.dtype.kind == "f" else self.data


@dataclass
class PackedWeight:
    """A layer's weights as the kernels read them: selection rows and a per-unit scale."""

    encoding: str  # binary | ternary | float32
    shape: tuple[int, ...]
    plus: np.ndarray | None  # binary: the +1 bits; ternary: the +1 bits
    minus: np.ndarray | None  # ternary: the -1 bits
    scale: np.ndarray  # per output unit, float64
    values: np.ndarray | None  # float32: the weights
    lut_plus: np.ndarray | None = None  # AVX-512: plus and minus as fm_lut_gemm's 4-bit selections
    lut_minus: np.ndarray | None = None

    @classmethod
    def of(cls, network: PackedNetwork, spec: dict[str, Any], lut: bool) -> PackedWeight:
        shape, encoding = tuple(spec["shape"]), spec["encoding"]
        o, k = shape[0], int(np.prod(shape[1:]))
        if encoding == "float32":
            values = network.arrays[spec["values"]].astype(np.float32).reshape(o, k)
            return cls(encoding, shape, None, None, np.ones(o), np.ascontiguousarray(values))
        scale = spec["scale"]
        per_unit = network.arrays[scale].astype(np.float64) if isinstance(scale, str) else np.full(o, scale)

        def plane(name: str) -> np.ndarray:
            return np.unpackbits(network.arrays[spec[name]], count=o * k).astype(bool).reshape(o, k)

        if encoding == "binary":
            plus, minus = plane("bits"), None
        else:
            nonzero, negative = plane("nonzero"), plane("negative")
            plus, minus = nonzero & ~negative, nonzero & negative
        packed = [None if p is None else kernels.pack_rows(p) for p in (plus, minus)]
        tables = [None if p is None or not lut else kernels.lut_layout(p) for p in (plus, minus)]
        return cls(encoding, shape, *packed, per_unit, None, *tables)


class CompiledNetwork:
    """A ``fewmult.export`` file run by the compiled kernels (NumPy where they are not built).

    Args:
        path: the exported ``model.npz``.
        threads: threads of every kernel (default: OpenMP's, i.e. the cores).
        isa: ``portable``, ``avx2`` or ``avx512`` (default: the CPU's widest; at most that).
    """

    def __init__(self, path: str, threads: int | None = None, isa: str | None = None) -> None:
        self.reference = PackedNetwork(str(path))
        self.manifest = self.reference.manifest
        self.lib = kernels.load()
        self.isa = kernels.best_isa(isa)
        self.threads = threads or kernels.max_threads()
        if (reason := kernels.unavailable_reason()) is not None:
            print(reason, file=sys.stderr)
        arrays = self.reference.arrays
        self._weights: dict[int, PackedWeight] = {}
        self._arrays: dict[int, dict[str, np.ndarray | None]] = {}  # per op, as the kernels take them
        for i, op in enumerate(self.reference.layers if self.compiled else ()):
            if op["op"] == "linear":
                self._weights[i] = PackedWeight.of(self.reference, op["weight"], lut=self.isa == "avx512")
                bias = None if op["bias"] is None else arrays[op["bias"]].astype(np.float64)
                self._arrays[i] = {"bias": bias}
            elif op["op"] == "sign_threshold":
                self._arrays[i] = {
                    "threshold": np.ascontiguousarray(arrays[op["threshold"]], dtype=np.float64),
                    "negative": np.ascontiguousarray(arrays[op["negative"]], dtype=np.uint8),
                }

    @property
    def compiled(self) -> bool:
        return self.lib is not None

    def describe(self) -> list[str]:
        """One line per op: what runs it (the kind of input it gets is decided when it runs, so
        this follows the ops' order: a linear op after a sign activation reads packed bits)."""
        lines, reads_bits = [], False
        select = "lut_gemm (4-input tables)" if self.isa == "avx512" else "select_gemm"
        for i, op in enumerate(self.reference.layers):
            kind = op["op"]
            if not self.compiled:
                lines.append(f"{kind}: NumPy reference")
                continue
            if kind == "linear":
                w = self._weights[i]
                what = "packed +-1" if reads_bits else "float"
                kernel = {
                    (True, "binary"): "xnor_gemm (XNOR + popcount)",
                    (True, "float32"): "select_gemm (weights selected by activation bits)",
                    (False, "binary"): f"{select} (binary weights)",
                    (False, "ternary"): f"{select} (ternary weights)",
                    (False, "float32"): "NumPy float32 matmul",
                }.get((reads_bits, w.encoding), "NumPy reference")
                lines.append(f"linear {w.shape[1]}->{w.shape[0]}, {what} x {w.encoding}: {kernel}")
                reads_bits = False
            elif kind == "sign_threshold":
                lines.append("sign_threshold: threshold_pack (BN + sign -> packed bits)")
                reads_bits = True
            else:
                lines.append(f"{kind}: NumPy reference")
                reads_bits = reads_bits and kind == "flatten"
        return lines

    def forward(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores (N, num_classes) in float64 for inputs (N, *input_shape)."""
        if not self.compiled:
            return self.reference.forward(x, batch_size)
        outputs = []
        for start in range(0, len(x), batch_size):
            v = Value("float", np.asarray(x[start : start + batch_size]))
            for i, op in enumerate(self.reference.layers):
                v = self._step(i, op, v)
            outputs.append(v.as_float())
        return np.concatenate(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted class of every input."""
        return self.forward(x).argmax(axis=-1)

    def _step(self, i: int, op: dict[str, Any], v: Value) -> Value:
        kind = op["op"]
        if (
            kind == "linear"
            and v.data.ndim == 2
            and (v.kind, self._weights[i].encoding) != ("bits", "ternary")
        ):
            return self._linear(self._weights[i], self._arrays[i]["bias"], v)
        if kind == "sign_threshold" and v.kind == "acc":
            return self._threshold(self._arrays[i], v)
        if kind == "flatten":  # bits are flat already; floats keep their precision (float32 stays)
            return (
                v
                if v.kind == "bits"
                else Value(v.kind, v.data.reshape(len(v.data), -1), v.features, v.scale, v.bias)
            )
        out = self.reference._apply(op, v.as_float())
        if kind == "sign_threshold" and out.ndim == 2:  # +-1 rows: packed for the next product
            return Value("bits", kernels.pack_rows(out > 0), features=out.shape[1])
        return Value("float", out)

    def _linear(self, w: PackedWeight, bias: np.ndarray | None, v: Value) -> Value:
        isa, threads = self.isa, self.threads
        if v.kind == "bits" and w.encoding == "binary":
            acc = kernels.xnor_gemm(v.data, w.plus, int(np.prod(w.shape[1:])), isa, threads)
        elif v.kind == "bits":  # real-valued weights, +-1 activations: the activation bits select weights
            acc = np.ascontiguousarray(kernels.select_gemm(w.values, v.data, None, isa, threads).T)
        else:
            x = np.ascontiguousarray(v.as_float() if v.kind == "acc" else v.data, dtype=np.float32)
            if w.encoding == "float32":
                acc = x @ w.values.T
            elif w.lut_plus is not None:
                acc = kernels.lut_gemm(x, w.lut_plus, w.lut_minus, w.shape[0], threads)
            else:
                acc = kernels.select_gemm(x, w.plus, w.minus, isa, threads)
        return Value("acc", acc, scale=w.scale, bias=bias)

    def _threshold(self, arrays: dict[str, np.ndarray | None], v: Value) -> Value:
        bits = kernels.threshold_pack(
            v.data, v.scale, v.bias, arrays["threshold"], arrays["negative"], self.threads
        )
        return Value("bits", bits, features=v.data.shape[1])


def load(path: str, threads: int | None = None, isa: str | None = None) -> CompiledNetwork:
    """Load an exported ``model.npz`` for prediction: ``load(path).predict(x)``."""
    return CompiledNetwork(path, threads=threads, isa=isa)
