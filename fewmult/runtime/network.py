"""An exported network planned onto the compiled kernels.

When a file is loaded, its ops are walked once with the input's shape, and each becomes a step
that reads its input in the form the step before leaves it:

* ``bits``: +-1 activations packed 64 to a word (a sign activation's output): dense rows padded to
  512 bits, images NHWC with ``ceil(C / 64)`` words a pixel;
* ``acc``: a product's sums before its per-unit scale and bias, int32 for +-1 x binary (exact) and
  float32 for float activations; images NHWC;
* ``float``: anything else, in float64 and NCHW as the reference computes it.

Products of packed activations and binary weights are XNOR + popcount (``xnor_gemm``, convolutions
through a packed im2col and a correction for zero padding); float activations times binary or
ternary weights select and add (``lut_gemm`` on AVX-512, ``select_gemm`` elsewhere); packed
activations times real-valued weights select weights; max-pooling of sums keeps them sums (the
minimum where their scale is negative), and floats are pooled in float64 as the reference pools
them; a batch norm + sign after them is one comparison per unit that writes the next layer's packed
bits. Every other op runs the NumPy reference (:mod:`fewmult.packed_forward`), and
:meth:`CompiledNetwork.describe` says which step runs each op. An MLP of sign layers on AMX runs its
steps' kernels in one call instead (:mod:`fewmult.runtime.chain`), from ``kernels.AMX_MIN_ROWS`` rows.

Where the reference is integer (+-1 x binary, then scale and bias in float64 in the same order)
the answers are identical; float32 sums of float activations differ from the reference's float64
within rounding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fewmult.packed_forward import PackedNetwork
from fewmult.runtime import kernels
from fewmult.runtime.chain import DenseChain, dense_chain
from fewmult.runtime.thresholds import sums_thresholds

# At most as many inputs run at once as keep every layer's float64 output within this. Larger arrays
# are mapped fresh from the OS at every call (glibc keeps no freed block above 32 MB): an ImageNet
# ResNet-18 ran 16 images at once at 31-50 images/s, against 50-66 two to four at a time.
CHUNK_BYTES = 16 << 20


@dataclass
class Value:
    """What flows between steps (module docstring); 4-D bits and sums are NHWC."""

    kind: str  # bits | acc | float
    data: np.ndarray
    features: int = 0  # bits: values a row (dense) or channels (images)
    scale: np.ndarray | None = None  # acc: per unit, float64 (the product's, from _sums_scale)
    bias: np.ndarray | None = None  # acc: per unit, or None

    def as_float(self) -> np.ndarray:
        """The values as the reference holds them: float64 (images NCHW), or token codes as they came."""
        if self.kind == "bits":
            shape = self.data.shape
            signs = kernels.unpack_rows(self.data.reshape(-1, shape[-1]), self.features)
            out = np.where(signs, 1.0, -1.0).reshape(*shape[:-1], self.features)
        elif self.kind == "acc":
            out = self.data.astype(np.float64) * self.scale
            out = out if self.bias is None else out + self.bias
        else:
            return self.data.astype(np.float64, copy=False) if self.data.dtype.kind == "f" else self.data
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


@dataclass
class State:
    """What the planner knows of a step's output: its kind and per-example shape (C, H, W) or (K,);
    ``pixels``: dense bits flattened from NHWC bits of (H, W, C) (their order, channels padded);
    ``sums_scale``: sums' per-unit scale and bias (or None), as their Value will carry them;
    ``sums_dtype``: int32 (+-1 x binary products) or float32."""

    kind: str
    shape: tuple[int, ...]
    pixels: tuple[int, int, int] | None = None
    sums_scale: tuple[np.ndarray, np.ndarray | None] | None = None  # acc: the product's scale, bias
    sums_dtype: type | None = None  # acc


@dataclass
class Step:
    """One op as it runs: ``run`` maps the value before to the value after."""

    op: str
    how: str
    run: Callable[[Value], Value]


@dataclass
class Product:
    """Rows (n, k) times a layer's weights: ``run`` gives the sums (n, o); ``thresholded``, where the
    kernel can compare its sums itself, the bits :func:`kernels.compare_pack` makes of them given its
    thresholds, or None where another kernel runs this many rows."""

    how: str
    run: Callable[[np.ndarray], np.ndarray]
    thresholded: Callable[[np.ndarray, kernels.Thresholds], np.ndarray | None] | None = None


def _planes(network: PackedNetwork, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """A binary or ternary weight's selections (o, *rest) as booleans: +1, and -1 for ternary."""
    shape = tuple(spec["shape"])

    def plane(name: str) -> np.ndarray:
        return (
            np.unpackbits(network.arrays[spec[name]], count=int(np.prod(shape))).astype(bool).reshape(shape)
        )

    if spec["encoding"] == "binary":
        return plane("bits"), None
    nonzero, negative = plane("nonzero"), plane("negative")
    return nonzero & ~negative, nonzero & negative


def _sums_scale(network: PackedNetwork, op: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """A product's per output unit scale (ones for float32 weights) and bias (or None), float64."""
    spec = op["weight"]
    scale = spec.get("scale", 1.0)
    if isinstance(scale, str):
        scale = network.arrays[scale].astype(np.float64)
    else:
        scale = np.full(spec["shape"][0], float(scale))
    bias = None if op["bias"] is None else kernels.pinned(network.arrays[op["bias"]].astype(np.float64))
    return kernels.pinned(scale), bias


def _pixel_order(values: np.ndarray, pixels: tuple[int, int, int]) -> np.ndarray:
    """Dense weight columns (o, C*H*W) in NCHW order as (o, H*W*C') for NHWC inputs whose C channels
    are padded to C' = 64 ceil(C / 64) (zeros there)."""
    h, w, c = pixels
    o = len(values)
    padded = np.zeros((o, h, w, -(-c // 64) * 64), dtype=values.dtype)
    padded[..., :c] = values.reshape(o, c, h, w).transpose(0, 2, 3, 1)
    return padded.reshape(o, -1)


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
        self._plans: dict[tuple[int, ...], list[Step]] = {}  # per input shape
        self._largest: dict[tuple[int, ...], int] = {}  # its values of the largest layer output
        self._chains: dict[tuple[int, ...], DenseChain | None] = {}  # per input shape (chain.py)

    @property
    def compiled(self) -> bool:
        return self.lib is not None

    def describe(self, input_shape: tuple[int, ...] | None = None) -> list[str]:
        """One line per op: the step that runs it, for inputs of ``input_shape`` (default: the file's)."""
        if not self.compiled:
            return [f"{op['op']}: NumPy reference" for op in self.reference.layers]
        shape = tuple(input_shape or self.manifest.get("input_shape") or ())
        return [f"{s.op}: {s.how}" for s in self.plan(shape)]

    def plan(self, input_shape: tuple[int, ...]) -> list[Step]:
        """The steps for inputs of one shape (planned once)."""
        if input_shape not in self._plans:
            self._plans[input_shape] = self._plan_ops(self.reference.layers, State("float", input_shape))[0]
            self._largest[input_shape] = _largest_output(self.reference.layers, input_shape)
            self._chains[input_shape] = dense_chain(self, input_shape)
        return self._plans[input_shape]

    def forward(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores (N, num_classes) in float64 for inputs (N, *input_shape), ``batch_size`` inputs at a
        time, fewer where a layer's float64 output would pass ``CHUNK_BYTES`` (large images)."""
        if not self.compiled:
            return self.reference.forward(x, batch_size)
        shape = tuple(np.shape(x)[1:])
        outputs, steps = [], self.plan(shape)
        if largest := self._largest[shape]:
            batch_size = min(batch_size, max(1, CHUNK_BYTES // (8 * largest)))
        chain = self._chains[shape]  # the dense layers in one call, from AMX_MIN_ROWS rows on
        for start in range(0, len(x), batch_size):
            batch = np.asarray(x[start : start + batch_size])
            if chain is not None and len(batch) >= kernels.AMX_MIN_ROWS:
                outputs.append(chain(batch))
            else:
                outputs.append(_run(steps, Value("float", batch)).as_float())
        if len(outputs) == 1 and not np.may_share_memory(outputs[0], x):
            return outputs[0]
        return np.concatenate(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted class of every input."""
        return self.forward(x).argmax(axis=-1)

    # planning: each op's step, from what the op before leaves

    def _plan_ops(self, ops: list[dict[str, Any]], s: State) -> tuple[list[Step], State]:
        steps, i = [], 0
        while i < len(ops):
            op, follower = ops[i], ops[i + 1] if i + 1 < len(ops) else None
            if op["op"] == "residual" and follower is not None and follower["op"] == "rprelu":
                step, s = self._residual(op, s, rprelu=follower)  # the RPReLU after the sum, in its pass
                i += 2
            elif op["op"] == "linear" and follower and follower["op"] == "sign_threshold" and _dense(op, s):
                step, s = self._linear_sign(op, follower, s)  # its kernel may compare its own sums
                i += 2
            elif (
                (op["op"], s.kind, len(s.shape)) == ("affine", "acc", 3)
                and follower
                and follower["op"] == "maxpool2d"
            ):
                step, s = self._pooled_affine(op, follower, s)  # the ImageNet stem: pooled before its BN
                i += 2
            else:
                step, s = self._plan_op(op, s)
                i += 1
            steps.append(step)
        return steps, s

    def _plan_op(self, op: dict[str, Any], s: State) -> tuple[Step, State]:
        kind, image = op["op"], len(s.shape) == 3
        out = _output_shape(op, s.shape)
        if kind in ("linear", "conv2d"):
            summed = self._summed(op, s)
            encoding = op["weight"]["encoding"]
        if kind == "linear" and len(s.shape) == 1 and (s.kind, encoding) != ("bits", "ternary"):
            return self._linear(op, s), summed
        if kind == "conv2d" and image and op["groups"] == 1 and tuple(op["dilation"]) == (1, 1):
            if s.kind == "bits" and encoding == "binary":
                return self._conv_bits(op, s), summed
            if s.kind != "bits":
                return self._conv_float(op, s), summed
        if kind == "maxpool2d" and s.kind == "acc" and image:
            return self._maxpool(op), replace(s, shape=out)
        if kind in ("maxpool2d", "avgpool2d") and s.kind == "float" and image:
            return self._pool_planes(op), State("float", out)
        if kind == "sign_threshold" and s.kind == "acc":
            return self._threshold(op, s, self._on_sums(op, s)), State("bits", s.shape)
        if kind == "sign_threshold" and s.kind == "float" and image:
            return self._sign_bits(op, s), State("bits", s.shape)
        if kind == "affine" and s.kind == "acc":
            return self._sums_affine(op, s), State("float", s.shape)
        if kind == "rprelu" and s.kind == "float" and image:
            return self._rprelu(op), State("float", s.shape)
        if kind == "residual":
            return self._residual(op, s)
        if kind == "flatten" and s.kind == "bits" and image:
            c, h, w = s.shape
            return Step(kind, "NHWC bits as one row", _flatten), State("bits", out, pixels=(h, w, c))
        if kind == "flatten" and s.kind == "float":
            return Step(kind, "reshape", _flatten), State("float", out)
        return self._reference(op, s, out)

    def _reference(self, op: dict[str, Any], s: State, out: tuple[int, ...]) -> tuple[Step, State]:
        apply = self.reference._apply
        if op["op"] == "sign_threshold" and len(s.shape) == 1:  # +-1 rows: packed for the next product

            def run(v: Value) -> Value:
                out = apply(op, v.as_float())
                return Value("bits", kernels.pack_rows(out > 0), features=out.shape[1])

            return Step(op["op"], "NumPy reference, then packed", run), State("bits", s.shape)
        step = Step(op["op"], "NumPy reference", lambda v: Value("float", apply(op, v.as_float())))
        return step, State("float", out)

    def _linear(self, op: dict[str, Any], s: State) -> Step:
        spec = op["weight"]
        o, k = spec["shape"][0], int(np.prod(spec["shape"][1:]))
        scale, bias = _sums_scale(self.reference, op)
        if s.kind == "bits" and spec["encoding"] == "float32":  # +-1 activations select real-valued weights
            values = self.reference.arrays[spec["values"]].astype(np.float32).reshape(o, k)
            values = np.ascontiguousarray(_pixel_order(values, s.pixels) if s.pixels else values)
            isa, threads = self.isa, self.threads
            return Step(
                "linear",
                f"{k}->{o}, packed +-1 x float32: select_gemm (weights selected by activation bits)",
                lambda v: Value(
                    "acc",
                    np.ascontiguousarray(kernels.select_gemm(values, v.data, None, isa, threads).T),
                    scale=scale,
                    bias=bias,
                ),
            )
        return _summing(*self._dense_product(op, s), scale, bias)

    def _dense_product(
        self, op: dict[str, Any], s: State
    ) -> tuple[Product, Callable[[Value], np.ndarray], str]:
        """A dense layer's product of binary or ternary weights (float32 ones for float rows): the
        product, the rows it takes from the value before, and what runs it."""
        spec = op["weight"]
        o, k = spec["shape"][0], int(np.prod(spec["shape"][1:]))
        if s.kind == "bits":
            plus, _ = _planes(self.reference, spec)
            plus = _pixel_order(plus.reshape(o, k), s.pixels) if s.pixels else plus.reshape(o, k)
            product = self._sign_product(
                plus, kernels.pinned(kernels.pack_rows(plus) if not s.pixels else _pack_words(plus)), k
            )
            return product, lambda v: v.data, f"{k}->{o}, packed +-1 x binary: {product.how}"

        def rows(v: Value) -> np.ndarray:
            x = np.ascontiguousarray(v.as_float() if v.kind != "float" else v.data, dtype=np.float32)
            return x.reshape(len(x), -1)

        product = self._float_product(spec, lambda p: p.reshape(o, k))
        return product, rows, f"{k}->{o}, float x {spec['encoding']}: {product.how}"

    def _linear_sign(self, op: dict[str, Any], sign: dict[str, Any], s: State) -> tuple[Step, State]:
        """A dense product and the BN + sign after it: one step where the product's kernel compares its
        own sums (the AMX products: no sums written and read again), else the product's sums, then
        the BN + sign of them (:meth:`_threshold`), in one step."""
        summed = self._summed(op, s)
        scale, bias = summed.sums_scale
        product, rows, how = self._dense_product(op, s)
        on_sums = self._on_sums(sign, summed)
        apart = self._threshold(sign, summed, on_sums)  # the BN + sign of the sums, where the kernel does not
        units = summed.shape[0]
        if product.thresholded is None or on_sums is None:
            linear = _summing(product, rows, how, scale, bias)
            step = Step("linear, sign_threshold", f"{how}; {apart.how}", lambda v: apart.run(linear.run(v)))
            return step, State("bits", summed.shape)
        thresholds = (*on_sums, kernels.row_words(units))

        def run(v: Value) -> Value:
            x = rows(v)
            if (bits := product.thresholded(x, thresholds)) is None:
                return apart.run(Value("acc", product.run(x), scale=scale, bias=bias))
            return Value("bits", bits, features=units)

        how += f"; BN + sign compared in its output (else: {apart.how})"
        return Step("linear, sign_threshold", how, run), State("bits", summed.shape)

    def _float_product(
        self, spec: dict[str, Any], rows: Callable[[np.ndarray], np.ndarray], isa: str | None = None
    ) -> Product:
        """Float32 rows (n, k) times the weight's rows, the weight arranged (o, k) by ``rows``, on
        ``isa`` (default: the network's)."""
        isa, threads, o = isa or self.isa, self.threads, spec["shape"][0]
        if spec["encoding"] == "float32":
            values = np.ascontiguousarray(rows(self.reference.arrays[spec["values"]].astype(np.float32)))
            if isa == "avx2":  # outer products over panels: 1.5-5x the dot form there (BENCHMARKS.md)
                panels = kernels.float_panels(values)
                return Product(
                    "float_gemm_panels (outer products, 16 outputs a panel)",
                    lambda x: kernels.float_gemm_panels(x, panels, o, isa, threads),
                )
            return Product("float_gemm", lambda x: kernels.float_gemm(x, values, isa, threads))
        plus, minus = (None if p is None else rows(p) for p in _planes(self.reference, spec))
        if isa == "amx":
            below = self._float_product(spec, rows, "avx512")
            return self._amx_float_product(plus, minus, spec["encoding"], below)
        if isa in kernels.LUT_SHAPES:
            tables = [None if p is None else kernels.lut_layout(p, isa) for p in (plus, minus)]
            return Product(
                f"lut_gemm ({kernels.LUT_SHAPES[isa][1]}-input tables, {spec['encoding']} weights)",
                lambda x: kernels.lut_gemm(x, tables[0], tables[1], o, isa, threads),
            )
        packed = [None if p is None else kernels.pinned(kernels.pack_rows(p)) for p in (plus, minus)]
        return Product(
            f"select_gemm ({spec['encoding']} weights)",
            lambda x: kernels.select_gemm(x, packed[0], packed[1], isa, threads),
        )

    def _amx_float_product(
        self, plus: np.ndarray, minus: np.ndarray | None, encoding: str, below: Product
    ) -> Product:
        """Float rows times binary or ternary weights on AMX tiles, ``below`` for fewer rows: rows of
        many inputs as 24-bit fixed point on int8 tiles (``amx_fixed_gemm``, which can compare its
        sums itself), short ones as three bf16 parts (``kernels.AMX_*``: where each beats ``below``)."""
        threads, (o, k) = self.threads, plus.shape
        if k < kernels.AMX_FIXED_MIN_INPUTS:
            least = kernels.AMX_FLOAT_MIN_ROWS
            tiles = [None if p is None else kernels.amx_layout(p, 2) for p in (plus, minus)]
            return Product(
                f"amx_select_gemm (bf16 tiles, {encoding} weights; below {least} rows {below.how})",
                lambda x: kernels.amx_select_gemm(x, *tiles, o, threads) if len(x) >= least else below.run(x),
            )
        least = kernels.AMX_MIN_ROWS
        planes = [
            (None, None)
            if p is None
            else (kernels.amx_layout(p, 4), kernels.pinned(p.sum(axis=1, dtype=np.int32)))
            for p in (plus, minus)
        ]

        def fixed(x: np.ndarray, thresholds: kernels.Thresholds | None = None) -> np.ndarray | None:
            if len(x) < least:
                return None
            return kernels.amx_fixed_gemm(x, *planes[0], *planes[1], o, threads, thresholds)

        return Product(
            f"amx_fixed_gemm (int8 tiles, rows as 24-bit fixed point, {encoding} weights; below {least} "
            f"rows {below.how})",
            lambda x: out if (out := fixed(x)) is not None else below.run(x),
            fixed,
        )

    def _sign_product(self, rows: np.ndarray, packed: np.ndarray, k: int) -> Product:
        """Packed +-1 activation rows (n, words) times binary weight rows given as booleans (o, bits)
        and as the same bits ``packed`` (o, words), padding included: the int32 sums (n, o)."""
        isa, threads, o = self.isa, self.threads, len(rows)
        if isa == "avx2":  # an output a lane, from 2 rows on: 1.2-1.8x (BENCHMARKS.md); 1 row: 0.8x
            lanes = kernels.xnor_lanes(packed)
            return Product(
                "xnor_gemm_lanes (XNOR + popcount, an output a lane; one row: xnor_gemm)",
                lambda a: (
                    kernels.xnor_gemm_lanes(a, lanes, o, k, isa, threads)
                    if len(a) > 1
                    else kernels.xnor_gemm(a, packed, k, isa, threads)
                ),
            )
        if isa != "amx":
            return Product(
                "xnor_gemm (XNOR + popcount)", lambda a: kernels.xnor_gemm(a, packed, k, isa, threads)
            )
        tiles, ones = kernels.amx_layout(rows, 4), kernels.pinned(rows.sum(axis=1, dtype=np.int32))

        def tiled(a: np.ndarray, thresholds: kernels.Thresholds | None = None) -> np.ndarray | None:
            if len(a) < kernels.AMX_MIN_ROWS or len(a) * o < kernels.AMX_MIN_SUMS:
                return None
            return kernels.amx_sign_gemm(a, tiles, ones, k, o, threads, thresholds)

        return Product(
            f"amx_sign_gemm (int8 tiles; below {kernels.AMX_MIN_ROWS} rows or {kernels.AMX_MIN_SUMS:,} sums "
            "xnor_gemm)",
            lambda a: out if (out := tiled(a)) is not None else kernels.xnor_gemm(a, packed, k, isa, threads),
            tiled,
        )

    def _conv_geometry(self, op: dict[str, Any], s: State) -> dict[str, int]:
        _, c, kh, kw = op["weight"]["shape"]
        (sh, sw), (ph, pw) = op["stride"], op["padding"]
        h, w = s.shape[1], s.shape[2]
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        return {
            "c": c,
            "h": h,
            "w": w,
            "kh": kh,
            "kw": kw,
            "sh": sh,
            "sw": sw,
            "ph": ph,
            "pw": pw,
            "ho": ho,
            "wo": wo,
        }

    def _conv_bits(self, op: dict[str, Any], s: State) -> Step:
        spec = op["weight"]
        o = spec["shape"][0]
        g = self._conv_geometry(op, s)
        plus, _ = _planes(self.reference, spec)  # (o, c, kh, kw)
        taps = plus.transpose(0, 2, 3, 1)  # (o, kh, kw, c): im2col's order
        cw = -(-g["c"] // 64)
        padded = np.zeros((o, g["kh"], g["kw"], cw * 64), dtype=bool)
        padded[..., : g["c"]] = taps
        rows = padded.reshape(o, -1)
        product = self._sign_product(rows, kernels.pinned(_pack_words(rows)), g["c"] * g["kh"] * g["kw"])
        # the sum over channels of each tap's +-1 weights, for the zero-padding correction
        tap_sums = np.ascontiguousarray(
            (2 * taps.astype(np.int32) - 1).sum(axis=3).reshape(o, -1).T, dtype=np.int32
        )
        scale, bias = _sums_scale(self.reference, op)
        threads = self.threads

        def run(v: Value) -> Value:
            n = len(v.data)
            rows = kernels.im2col_bits(v.data, g, threads)
            acc = product.run(rows).reshape(n, g["ho"], g["wo"], o)
            if g["ph"] or g["pw"]:
                kernels.conv_border(acc, tap_sums, g, threads)
            return Value("acc", acc, scale=scale, bias=bias)

        return Step(
            "conv2d", f"{g['c']}->{o} {g['kh']}x{g['kw']}, packed +-1 x binary: im2col + {product.how}", run
        )

    def _conv_float(self, op: dict[str, Any], s: State) -> Step:
        spec = op["weight"]
        o = spec["shape"][0]
        g = self._conv_geometry(op, s)
        product = self._float_product(spec, lambda p: p.transpose(0, 2, 3, 1).reshape(o, -1))
        scale, bias = _sums_scale(self.reference, op)
        threads = self.threads

        def run(v: Value) -> Value:
            x = v.as_float() if v.kind != "float" else v.data
            nhwc = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))
            rows = kernels.im2col_f32(nhwc, g, threads)
            acc = product.run(rows).reshape(len(x), g["ho"], g["wo"], o)
            return Value("acc", acc, scale=scale, bias=bias)

        return Step(
            "conv2d",
            f"{g['c']}->{o} {g['kh']}x{g['kw']}, float x {spec['encoding']}: im2col + {product.how}",
            run,
        )

    def _maxpool(self, op: dict[str, Any]) -> Step:
        """A max-pool of a product's sums, which stay sums: the maximum where their scale is not
        negative, the minimum where it is (scaling, then adding the bias, is monotone per unit)."""
        k, threads = op["size"], self.threads
        stride, padding = op.get("stride", k), op.get("padding", 0)
        return Step(
            "maxpool2d",
            f"pool_sums ({k}x{k}, stride {stride}, padding {padding}: the max of the sums, the min where "
            "their scale is negative)",
            lambda v: replace(v, data=kernels.pool_sums(v.data, k, stride, padding, v.scale < 0, threads)),
        )

    def _pooled_affine(self, op: dict[str, Any], pool: dict[str, Any], s: State) -> tuple[Step, State]:
        """A product's batch norm and the max-pool after it (the ImageNet stem), as the sums pooled,
        then their affine on a quarter of the values. The affine of a channel is monotone (products and
        sums rounded correctly never reverse an order), rising where its slope ``scale * a`` is not
        negative and falling where it is: the maximum of its values is its value at the sums' maximum,
        or at their minimum. Each value equals the reference's, which pools after the affine."""
        a, b = self._per_channel(op, "scale", "shift")
        k, threads = pool["size"], self.threads
        stride, padding = pool.get("stride", k), pool.get("padding", 0)

        def run(v: Value) -> Value:
            scale, bias = v.scale, v.bias
            falls = (scale < 0) ^ (a < 0)  # signs, not their product: that can round to zero
            pooled = kernels.pool_sums(v.data, k, stride, padding, falls, threads)
            return Value("float", kernels.sums_affine(pooled, scale, bias, a, b, threads))

        how = (
            f"pool_sums ({k}x{k}, stride {stride}, padding {padding}: per channel the max, the min where "
            "the affine falls), then sums_affine (float64)"
        )
        return Step("affine, maxpool2d", how, run), State("float", _output_shape(pool, s.shape))

    def _pool_planes(self, op: dict[str, Any]) -> Step:
        """Max- or average-pooling of the float64 NCHW stream (Bi-Real's pooled shortcuts; a stem's max-pool
        after its batch norm is pooled before it, :meth:`_pooled_affine`)."""
        k, threads = op["size"], self.threads
        if op["op"] == "avgpool2d":
            return Step(
                "avgpool2d",
                f"avgpool_planes ({k}x{k}, float64)",
                lambda v: Value("float", kernels.avgpool_planes(v.as_float(), k, threads)),
            )
        stride, padding = op.get("stride", k), op.get("padding", 0)
        return Step(
            "maxpool2d",
            f"maxpool_planes ({k}x{k}, stride {stride}, padding {padding}, float64)",
            lambda v: Value("float", kernels.maxpool_planes(v.as_float(), k, stride, padding, threads)),
        )

    def _residual(
        self, op: dict[str, Any], s: State, rprelu: dict[str, Any] | None = None
    ) -> tuple[Step, State]:
        """A ResNet block (and the RPReLU after it, if given): its body and shortcut planned from the
        same input, the sum in float64 (as the reference). Where the body ends with a product's batch
        norm, that affine, the addition of the shortcut and the RPReLU run as one pass over the
        stream (``sums_affine``: each value computed by the same operations in the same order)."""
        shortcut, _ = self._plan_ops(op["shortcut"], s)
        head, before = self._plan_ops(op["body"][:-1], s)
        last = op["body"][-1] if op["body"] else None
        image = len(before.shape) == 3
        if last is None or last["op"] != "affine" or before.kind != "acc" or not image:
            body, after = head, before  # planned once: the head, then the body's last op from it
            if last is not None:
                last_step, after = self._plan_op(last, before)
                body = [*head, last_step]
            return self._unfused_residual(body, after, rprelu, shortcut)
        a, b = self._per_channel(last, "scale", "shift")
        act = tuple(self._per_channel(rprelu, "shift_in", "slope", "shift_out")) if rprelu else None
        threads = self.threads

        def run(v: Value) -> Value:
            sums, addend = _run(head, v), _run(shortcut, v).as_float()
            scale, bias = sums.scale, sums.bias
            out = kernels.sums_affine(sums.data, scale, bias, a, b, threads, addend=addend, rprelu=act)
            return Value("float", out)

        tail = "sums_affine (scale, bias and batch norm of the sums, + the shortcut"
        tail += ", RPReLU: one pass, float64)" if rprelu else ": one pass, float64)"
        body = f"{_listed(head)}; affine: {tail}" if head else f"affine: {tail}"
        return Step("residual", f"[{body}] + [{_listed(shortcut)}]", run), State("float", before.shape)

    def _unfused_residual(
        self, body: list[Step], after: State, rprelu: dict[str, Any] | None, shortcut: list[Step]
    ) -> tuple[Step, State]:
        """:meth:`_residual` step by step: the body's steps (leaving ``after``), the sum in NumPy, the
        RPReLU after it."""
        act = [self._rprelu(rprelu)] if rprelu else []

        def run(v: Value) -> Value:
            return _run(act, Value("float", _run(body, v).as_float() + _run(shortcut, v).as_float()))

        how = f"[{_listed(body)}] + [{_listed(shortcut)}]" + "".join(f"; {a.op}: {a.how}" for a in act)
        return Step("residual", how, run), State("float", after.shape)

    def _per_channel(self, op: dict[str, Any], *names: str, dtype: type = np.float64) -> list[np.ndarray]:
        return [kernels.pinned(self.reference.arrays[op[name]].astype(dtype)) for name in names]

    def _sign_bits(self, op: dict[str, Any], s: State) -> Step:
        """sign(x - t) of float images (a ResNet block's input) as NHWC packed bits, compared in float64."""
        (threshold,), (negative,) = (
            self._per_channel(op, "threshold"),
            self._per_channel(op, "negative", dtype=np.uint8),
        )
        threads = self.threads

        def run(v: Value) -> Value:
            x = np.ascontiguousarray(v.as_float())
            return Value("bits", kernels.sign_pack(x, threshold, negative, threads), features=s.shape[0])

        return Step("sign_threshold", "sign_pack (float64 images -> packed NHWC bits)", run)

    def _sums_affine(self, op: dict[str, Any], s: State) -> Step:
        """A batch norm after a product: its sums through their scale and the BN, in float64."""
        a, b = self._per_channel(op, "scale", "shift")
        threads = self.threads

        def run(v: Value) -> Value:
            return Value("float", kernels.sums_affine(v.data, v.scale, v.bias, a, b, threads))

        return Step("affine", "sums_affine (scale, bias and batch norm of the sums, float64)", run)

    def _rprelu(self, op: dict[str, Any]) -> Step:
        shift_in, slope, shift_out = self._per_channel(op, "shift_in", "slope", "shift_out")
        threads = self.threads

        def run(v: Value) -> Value:
            x = np.ascontiguousarray(v.as_float())
            return Value("float", kernels.rprelu(x, shift_in, slope, shift_out, threads))

        return Step("rprelu", "rprelu (float64)", run)

    def _summed(self, op: dict[str, Any], s: State) -> State:
        """What a linear or conv2d op's product leaves from inputs ``s``: its sums."""
        exact = s.kind == "bits" and op["weight"]["encoding"] == "binary"
        return State(
            "acc",
            _output_shape(op, s.shape),
            sums_scale=_sums_scale(self.reference, op),
            sums_dtype=np.int32 if exact else np.float32,
        )

    def _on_sums(self, op: dict[str, Any], s: State) -> tuple[kernels.Pinned, kernels.Pinned] | None:
        """A BN + sign's comparison moved onto the sums ``s`` (:mod:`fewmult.runtime.thresholds`):
        ``compare_pack``'s ``tau`` and ``up`` masks, or None where it cannot move."""
        threshold, negative = self.reference.arrays[op["threshold"]], self.reference.arrays[op["negative"]]
        found = sums_thresholds(*s.sums_scale, threshold, negative, s.sums_dtype)
        return None if found is None else (kernels.pinned(found[0]), kernels.unit_masks(found[1]))

    def _threshold(
        self, op: dict[str, Any], s: State, on_sums: tuple[kernels.Pinned, kernels.Pinned] | None
    ) -> Step:
        """BN + sign of a product's sums as packed bits: each unit's comparison moved onto its sums
        (``on_sums``, :meth:`_on_sums`; ``compare_pack``). Where it cannot move (None: a parameter
        not finite, or a float32 product's scale zero), the reference's float64 values of the sums
        are compared (``sign_pack`` for images). Both give the reference's bits."""
        threshold = kernels.pinned(self.reference.arrays[op["threshold"]].astype(np.float64))
        negative = kernels.pinned(self.reference.arrays[op["negative"]].astype(np.uint8))
        isa, threads, units, image = self.isa, self.threads, s.shape[0], len(s.shape) == 3
        words = -(-units // 64) if image else kernels.row_words(units)

        def in_float64(v: Value) -> np.ndarray:
            h = v.as_float()
            if image:
                return kernels.sign_pack(np.ascontiguousarray(h), threshold, negative, threads)
            return kernels.pack_rows(np.where(negative.astype(bool), h <= threshold, h >= threshold))

        if on_sums is None:
            return Step(
                "sign_threshold",
                "BN + sign of the sums in float64 (a parameter not finite), packed",
                lambda v: Value("bits", in_float64(v), features=units),
            )

        def run(v: Value) -> Value:
            bits = kernels.compare_pack(v.data.reshape(-1, units), *on_sums, isa, threads, words)
            return Value("bits", bits.reshape(*v.data.shape[:-1], words), features=units)

        return Step(
            "sign_threshold", "compare_pack (BN + sign as thresholds on the sums -> packed bits)", run
        )


def _dense(op: dict[str, Any], s: State) -> bool:
    """Whether a linear op's product is a dense one of binary or ternary weights (or float32 weights
    on float rows): not ternary or float32 weights on packed bits."""
    return len(s.shape) == 1 and (s.kind != "bits" or op["weight"]["encoding"] == "binary")


def _summing(
    product: Product,
    rows: Callable[[Value], np.ndarray],
    how: str,
    scale: np.ndarray,
    bias: np.ndarray | None,
) -> Step:
    """A dense product's step: its sums, with the product's scale and bias."""
    return Step("linear", how, lambda v: Value("acc", product.run(rows(v)), scale=scale, bias=bias))


def _output_shape(op: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """An op's per-example output shape as the reference computes it; () where it is a sequence's
    (the LSTM's) or the input's was not known."""
    kind = op["op"]
    if kind == "lstm" or not shape:
        return ()
    if kind == "residual":
        for inner in op["body"]:
            shape = _output_shape(inner, shape)
        return shape
    if kind in ("avgpool2d", "channel_pad") and len(shape) == 3:
        k = op["size"] if kind == "avgpool2d" else op["stride"]
        channels = shape[0] + (op["before"] + op["after"] if kind == "channel_pad" else 0)
        return (channels, -(-shape[1] // k), -(-shape[2] // k))
    if kind == "global_avgpool" and len(shape) == 3:
        return (shape[0],)
    if kind == "flatten":
        return (int(np.prod(shape)),)
    if kind == "linear":
        return (op["weight"]["shape"][0],) if len(shape) == 1 else ()
    if kind == "conv2d" and len(shape) == 3:
        _, _, kh, kw = op["weight"]["shape"]
        (sh, sw), (ph, pw), (dh, dw) = op["stride"], op["padding"], op["dilation"]
        h = (shape[1] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w = (shape[2] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return (op["weight"]["shape"][0], h, w)
    if kind == "maxpool2d" and len(shape) == 3:
        k = op["size"]
        stride, padding = op.get("stride", k), op.get("padding", 0)
        return (shape[0], *(kernels.pooled_side(side, k, stride, padding) for side in shape[1:]))
    return shape if kind in ("affine", "sign_threshold", "relu", "hardtanh", "rprelu") else ()


def _largest_output(ops: list[dict[str, Any]], shape: tuple[int, ...]) -> int:
    """The most values any op's output holds for one input of ``shape`` (a residual's body and
    shortcut included); 0 where a shape is not known (the LSTM's)."""
    largest = 0
    for op in ops:
        if op["op"] == "residual":
            largest = max(largest, _largest_output(op["body"], shape), _largest_output(op["shortcut"], shape))
        shape = _output_shape(op, shape)
        if not shape:
            return 0
        largest = max(largest, int(np.prod(shape)))
    return largest


def _listed(steps: list[Step]) -> str:
    return "; ".join(f"{step.op}: {step.how}" for step in steps) or "identity"


def _run(steps: list[Step], v: Value) -> Value:
    for step in steps:
        v = step.run(v)
    return v


def _flatten(v: Value) -> Value:
    """Dense rows of a batch: NHWC bits or sums keep their pixel order; floats are the reference's."""
    return Value(v.kind, v.data.reshape(len(v.data), -1), v.features, v.scale, v.bias)  # replace() costs 3 us


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """Boolean rows whose length is a multiple of 64 as packed words, no further padding."""
    return np.ascontiguousarray(np.packbits(bits, axis=1, bitorder="little").view("<u8"))


def load(path: str, threads: int | None = None, isa: str | None = None) -> CompiledNetwork:
    """Load an exported ``model.npz`` for prediction: ``load(path).predict(x)``."""
    return CompiledNetwork(path, threads=threads, isa=isa)
