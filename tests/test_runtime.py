"""The compiled runtime: every kernel on every instruction set this CPU has equals its NumPy
formula, every method's exported network predicts as the NumPy reference on the compiled paths,
and the runtime imports no torch, says so when it has no kernels, and is timed by the export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.packed_forward import PackedNetwork, avgpool2d, maxpool2d
from fewmult.runtime import CompiledNetwork, kernels, network
from fewmult.runtime.thresholds import sums_thresholds
from tests.conftest import REPO
from tests.test_export import BIREAL_BLOCK, MAXPOOLS, NETS, RESNETS, trained_looking, write
from tests.test_methods_train import METHODS

COMPILED = kernels.load() is not None
ISAS = list(kernels.ISAS[: kernels.ISAS.index(kernels.best_isa()) + 1]) if COMPILED else []
needs_kernels = pytest.mark.skipif(not COMPILED, reason="no compiled kernels (no C compiler at install)")
# the kernels with no AMX path take "amx" as "avx512": their own tests need not run it twice
VECTOR_ISAS = [isa for isa in ISAS if isa != "amx"]
needs_amx = pytest.mark.skipif(
    "amx" not in ISAS, reason="no AMX here (CPU before Sapphire Rapids, Linux before 5.16, or no kernels)"
)
# odd sizes: partial tiles (n, o not multiples of 4), rows shorter than, equal to and longer than a
# 64-bit word and a 512-bit block, a 16-float block and its tail
SHAPES = [(1, 1, 1), (5, 63, 7), (4, 64, 4), (6, 65, 9), (3, 513, 5), (9, 1100, 17)]


def test_the_kernels_were_built_where_a_compiler_exists():
    """pip install built them here (CI's machine has gcc); a missing build would hide behind the
    NumPy fallback otherwise."""
    if shutil.which("cc") or shutil.which("gcc"):
        assert COMPILED, kernels.unavailable_reason()


def random_bits(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.random((n, k)) < 0.5


@pytest.mark.parametrize("k", [1, 63, 64, 65, 700])
def test_packed_rows_hold_element_64w_plus_t_in_bit_t_of_word_w(k):
    bits = random_bits(np.random.default_rng(k), 3, k)
    words = kernels.pack_rows(bits)
    assert words.shape == (3, kernels.row_words(k)) and words.shape[1] % kernels.ROW_WORDS == 0
    for i, t in [(0, 0), (1, k - 1), (2, k // 2)]:
        assert bool(words[i, t // 64] >> np.uint64(t % 64) & np.uint64(1)) == bits[i, t]
    assert np.array_equal(kernels.unpack_rows(words, k), bits)
    assert np.array_equal(
        kernels.unpack_rows(words, words.shape[1] * 64)[:, k:], np.zeros((3, words.shape[1] * 64 - k), bool)
    )


def xnor(a: np.ndarray, w: np.ndarray, k: int, isa: str, form: str) -> np.ndarray:
    """Boolean rows times boolean weight rows through ``xnor_gemm`` (rows) or ``xnor_gemm_lanes``."""
    packed = kernels.pack_rows(w)
    if form == "rows":
        return kernels.xnor_gemm(kernels.pack_rows(a), packed, k, isa, threads=2)
    return kernels.xnor_gemm_lanes(
        kernels.pack_rows(a), kernels.xnor_lanes(packed), len(w), k, isa, threads=2
    )


@needs_kernels
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize(("n", "k", "o"), [*SHAPES, (300, 576, 70)])  # and threaded: a 3x3 conv's rows
@pytest.mark.parametrize("form", ["rows", "lanes"])
def test_xnor_gemm_is_the_dot_product_of_the_signs(isa, n, k, o, form):
    """Each weight row against each activation row, or each output a lane of 4 (partial groups, an
    odd last row)."""
    rng = np.random.default_rng(n * 1000 + k)
    a, w = random_bits(rng, n, k), random_bits(rng, o, k)
    out = xnor(a, w, k, isa, form)
    expected = (2 * a.astype(np.int64) - 1) @ (2 * w.astype(np.int64) - 1).T
    assert np.array_equal(out, expected)


@needs_kernels
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("form", ["rows", "lanes"])
def test_xnor_gemm_counts_long_rows_whose_every_bit_differs(isa, form):
    """Rows of 9,000 bits (over 31 blocks of 256) against their complements and against random rows:
    every bit differs, the most that AVX2's per-byte counts hold before it sums them (every 31 blocks,
    or 31 words where an output is a lane)."""
    rng = np.random.default_rng(9)
    w = random_bits(rng, 6, 9000)
    a = np.concatenate([~w[:4], random_bits(rng, 3, 9000)])
    out = xnor(a, w, 9000, isa, form)
    assert np.array_equal(out, (2 * a.astype(np.int64) - 1) @ (2 * w.astype(np.int64) - 1).T)
    assert (out.diagonal()[:4] == -9000).all()


# AMX tiles hold 16 rows: one tile, partial tiles, more than one group of four row tiles
AMX_SHAPES = [*SHAPES, (16, 64, 16), (17, 130, 33), (70, 1100, 40)]


@needs_amx
@pytest.mark.parametrize(("n", "k", "o"), AMX_SHAPES)
def test_amx_sign_gemm_is_xnor_gemm_exactly(n, k, o):
    """The 0/1-byte tile product, corrected by the rows' ones, is the dot product of the signs, also
    with zero words inside a row (a convolution's taps outside the image) and rows longer than k."""
    rng = np.random.default_rng(n * 1000 + k)
    a, w = random_bits(rng, n, k), random_bits(rng, o, k)
    packed = kernels.pack_rows(a)
    packed[::3, : packed.shape[1] // 2] = 0  # taps outside the image: zero words, read as -1
    out = kernels.amx_sign_gemm(packed, kernels.amx_layout(w, 4), w.sum(1, dtype=np.int32), k, o, threads=2)
    assert np.array_equal(out, kernels.xnor_gemm(packed, kernels.pack_rows(w), k, "avx512", threads=2))


@pytest.mark.parametrize("group", [4, 2])
def test_amx_layout_holds_each_weight_tile_rows_masks(group):
    """Mask r of (row block b, input block c) has bit ``group * j + q`` = input ``group * r + q`` of
    the block's row j: a weight tile's row r, as TDPBUUD (4 bytes) and TDPBF16PS (2 bf16) read it."""
    bits = np.random.default_rng(group).random((21, 150)) < 0.5
    layout = kernels.amx_layout(bits, group)
    span = 16 * group
    assert layout.shape == (2, -(-150 // span), 16) and layout.dtype == np.dtype(f"<u{2 * group}")
    for row, t in [(0, 0), (17, 149), (20, 37), (5, 64), (9, 3)]:
        block, j, r, q = row // 16, row % 16, t % span // group, t % group
        assert bool(int(layout[block, t // span, r]) >> (group * j + q) & 1) == bits[row, t]
    assert not any(int(m) >> (group * (21 - 16)) for m in layout[1].ravel())  # rows past 21: none


# select_gemm on every instruction set; lut_gemm (tables, AVX2 and AVX-512) and AMX tiles where the
# CPU has them
PRODUCTS = [
    *(f"select_gemm-{isa}" for isa in VECTOR_ISAS),
    *(f"lut_gemm-{isa}" for isa in VECTOR_ISAS if isa in kernels.LUT_SHAPES),
    pytest.param("amx_select_gemm-amx", marks=needs_amx),
    pytest.param("amx_fixed_gemm-amx", marks=needs_amx),
]


@needs_kernels
@pytest.mark.parametrize("kernel", PRODUCTS)
@pytest.mark.parametrize(("n", "k", "o"), AMX_SHAPES)
@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_float_times_binary_and_ternary_weights_sums_the_selected_activations(kernel, n, k, o, encoding):
    rng = np.random.default_rng(n * 1000 + k + o)
    x = rng.standard_normal((n, k)).astype(np.float32)
    positive, nonzero = random_bits(rng, o, k), rng.random((o, k)) < 0.6
    if encoding == "binary":
        signs, plus, minus = np.where(positive, 1.0, -1.0), kernels.pack_rows(positive), None
    else:
        signs = np.where(nonzero, np.where(positive, 1.0, -1.0), 0.0)
        plus, minus = kernels.pack_rows(nonzero & positive), kernels.pack_rows(nonzero & ~positive)
    name, isa = kernel.split("-")
    plus_bits = positive if encoding == "binary" else nonzero & positive
    if name == "lut_gemm":
        minus_lut = None if encoding == "binary" else kernels.lut_layout(nonzero & ~positive, isa)
        out = kernels.lut_gemm(x, kernels.lut_layout(plus_bits, isa), minus_lut, o, isa, threads=2)
    elif name == "amx_select_gemm":
        minus_tiles = None if encoding == "binary" else kernels.amx_layout(nonzero & ~positive, 2)
        out = kernels.amx_select_gemm(x, kernels.amx_layout(plus_bits, 2), minus_tiles, o, threads=2)
    elif name == "amx_fixed_gemm":
        out = fixed_gemm(x, plus_bits, None if encoding == "binary" else nonzero & ~positive)
    else:
        out = kernels.select_gemm(x, plus, minus, isa, threads=2)
    expected = x.astype(np.float64) @ signs.T
    # float32 sums in another order (fixed point: each value within 2^-22 of its row's largest, then
    # one rounding): within a few float32 roundings of the sum of magnitudes
    bound = 4 * k * np.finfo(np.float32).eps * np.abs(x).astype(np.float64).sum(1, keepdims=True)
    assert np.all(np.abs(out - expected) <= bound)


def fixed_gemm(x, plus, minus, thresholds=None) -> np.ndarray:
    """``amx_fixed_gemm`` of float rows and boolean weight rows (plus; minus None: binary)."""
    weights = [
        (None, None) if p is None else (kernels.amx_layout(p, 4), p.sum(1, dtype=np.int32))
        for p in (plus, minus)
    ]
    return kernels.amx_fixed_gemm(x, *weights[0], *weights[1], len(plus), 2, thresholds)


@needs_amx
def test_fixed_point_rows_of_any_magnitude_and_ieees_infinities_and_nan():
    """Rows scaled near float32's ends (and a zero row) keep their relative precision: each row is
    scaled by its own power of two. A row with an infinity or NaN is summed in float32 by IEEE's
    rules: NaN and infinities where the float64 reference has them."""
    rng = np.random.default_rng(6)
    n, k, o = 40, 600, 33
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[0] *= np.float32(1e-36)
    x[1] *= np.float32(1e36)
    x[2] = 0
    x[3, 5], x[4, 6], x[5, [7, 9]], x[6, 8] = np.inf, -np.inf, [np.inf, -np.inf], np.nan
    plus = random_bits(rng, o, k)
    out = fixed_gemm(x, plus, None)
    with np.errstate(invalid="ignore"):
        expected = x.astype(np.float64) @ np.where(plus, 1.0, -1.0).T
    finite = np.isfinite(x).all(axis=1)
    bound = 4 * k * np.finfo(np.float32).eps * np.abs(x[finite]).astype(np.float64).sum(1, keepdims=True)
    assert np.all(np.abs(out[finite] - expected[finite]) <= bound)
    assert not out[2].any() and np.all(np.abs(out[0]) > 0)
    assert np.array_equal(out[~finite], expected[~finite].astype(np.float32), equal_nan=True)
    assert np.isnan(out[6]).all() and np.isinf(out[3:5]).all() and np.isnan(out[5]).any()


@needs_amx
@pytest.mark.parametrize("product", ["sign", "fixed"])
def test_amx_products_compare_their_own_sums_as_compare_pack(product):
    """Given thresholds, the AMX products write the bits compare_pack makes of their sums: partial
    tiles and 16-unit groups, rows of another length than their units', a row with an infinity."""
    rng = np.random.default_rng(7)
    n, k, o = 70, 1100, 70
    w = random_bits(rng, o, k)
    scale, bias, threshold = rng.normal(0, 1, o), rng.normal(0, 3, o), rng.normal(0, 3, o)
    negative = (rng.random(o) < 0.4).astype(np.uint8)
    dtype = np.int32 if product == "sign" else np.float32
    tau, up = sums_thresholds(scale, bias, threshold, negative, dtype)
    thresholds = (tau, kernels.unit_masks(up), kernels.row_words(o) + 8)
    if product == "sign":
        a = kernels.pack_rows(random_bits(rng, n, k))
        args = (a, kernels.amx_layout(w, 4), w.sum(1, dtype=np.int32), k, o, 2)
        sums, bits = kernels.amx_sign_gemm(*args), kernels.amx_sign_gemm(*args, thresholds)
    else:
        x = rng.standard_normal((n, k)).astype(np.float32)
        x[3, 5] = np.inf
        sums, bits = fixed_gemm(x, w, None), fixed_gemm(x, w, None, thresholds)
    assert np.array_equal(bits, kernels.compare_pack(sums, *thresholds[:2], "avx512", 2, thresholds[2]))
    assert bits.any() and not bits.all()


@needs_amx
@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_fixed_point_bits_at_their_thresholds_are_those_of_its_sums(encoding):
    """Before a BN + sign the fixed-point product skips the low byte plane wherever that cannot move a
    sum across its threshold: with thresholds at the sums themselves and one float32 step either side
    (every unit of those rows needs its low plane), the bits are still those of its own sums; so they
    are for rows and thresholds of magnitudes its float32 comparison leaves to the exact path."""
    rng = np.random.default_rng(11)
    n, k, o = 40, 700, 50
    plus = random_bits(rng, o, k)
    minus = None if encoding == "binary" else random_bits(rng, o, k) & ~plus
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[3:6] *= np.array([[1e-20], [1e30], [2.0**-36]], dtype=np.float32)  # 2^-36: the last row scaled
    sums = fixed_gemm(x, plus, minus)
    on = np.concatenate([sums[0], np.nextafter(sums[1], np.inf), np.nextafter(sums[2], -np.inf)])
    on[[7, 60, 120]] = [1e-25, sums[3, 10], sums[5, 20]]
    for tau in np.split(on, 3):
        up = rng.random(o) < 0.5
        thresholds = (kernels.pinned(tau), kernels.unit_masks(up), kernels.row_words(o))
        bits = fixed_gemm(x, plus, minus, thresholds)
        assert np.array_equal(bits, kernels.compare_pack(sums, tau, thresholds[1], "avx512", 2))


@needs_kernels
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize(("n", "k", "o"), [*SHAPES, (200, 147, 70)])  # and threaded: a 7x7 RGB stem
@pytest.mark.parametrize("form", ["rows", "panels"])
def test_float_gemm_is_the_float_product(isa, n, k, o, form):
    """Dot products of weight rows, and outer products over panels of 16 weight columns (a last
    partial panel, a last partial block of 6 rows)."""
    rng = np.random.default_rng(n + k + o)
    x, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((o, k)).astype(np.float32)
    if form == "rows":
        out = kernels.float_gemm(x, w, isa, threads=2)
    else:
        out = kernels.float_gemm_panels(x, kernels.float_panels(w), o, isa, threads=2)
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    bound = 4 * k * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    assert np.all(np.abs(out - expected) <= bound)


@pytest.mark.parametrize(("isa", "lanes", "group"), [("avx512", 16, 4), ("avx2", 8, 3)])
def test_lut_layout_holds_the_rows_selections_per_group(isa, lanes, group):
    bits = np.random.default_rng(3).random((21, 10)) < 0.5
    layout = kernels.lut_layout(bits, isa)
    assert layout.shape == (-(-21 // lanes), -(-10 // group), lanes) and layout.dtype == np.uint8
    for row, g in [(0, 0), (17, 2), (20, 1), (5, 2)]:
        expected = sum(int(bits[row, group * g + i]) << i for i in range(group) if group * g + i < 10)
        assert layout[row // lanes, g, row % lanes] == expected
    assert not layout[-1, :, 21 % lanes :].any()  # rows past 21 do not exist


def test_pinned_arrays_keep_their_address_and_their_views_read_their_own():
    """A plan's arrays pass the address read when pinned; a view or copy of one (another address) is
    read again, never given its parent's."""
    base = kernels.pinned(np.arange(10, dtype=np.float64))
    assert kernels._ptr(base) == base.ctypes.data == base.address
    read_only = np.arange(4.0)
    read_only.flags.writeable = False
    for other in (base[2:], base.copy(), base * 2, read_only, np.empty((0, 3))):
        assert kernels._ptr(other) == other.ctypes.data
        assert other.size == 0 or kernels._ptr(other) != base.address
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels._ptr(base[::2])


def reference_bits(acc, scale, bias, threshold, negative) -> np.ndarray:
    """The reference's BN + sign of sums: ``acc * scale + bias`` in float64, compared with the threshold."""
    v = acc.astype(np.float64) * scale + bias
    return np.where(negative.astype(bool), v <= threshold, v >= threshold)


@needs_kernels
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_thresholds_moved_onto_the_sums_give_the_references_bits(dtype, isa):
    """Each unit's ``tau`` found by bisection, compared with its sums, gives the reference's bit for
    every sum at and beside it (the next integer, the next float32 each way), for negative scales
    and BN signs, units always on or off (thresholds far outside the sums), NaN and infinite sums."""
    rng = np.random.default_rng(4)
    o = 70  # a 16-unit group cut by the row's end
    scale = rng.normal(0, 1, o) * 10.0 ** rng.integers(-4, 4, o)
    bias, threshold = rng.normal(0, 5, o), rng.normal(0, 5, o)
    threshold[:4] = [1e300, -1e300, 1e300, -1e300]
    negative = (np.arange(o) % 3 == 0).astype(np.uint8)
    if dtype == np.int32:
        scale[4:6] = [0.0, -0.0]  # a constant bit
    tau, up = sums_thresholds(scale, bias, threshold, negative, dtype)
    assert tau.dtype == dtype and {0, 1} <= set(up.astype(int)) | {0}
    if dtype == np.int32:
        near = np.clip(tau.astype(np.int64), -(2**30), 2**30)
        acc = np.stack([near + step for step in (-2, -1, 0, 1, 2)] + [np.zeros(o, np.int64)]).astype(np.int32)
    else:
        near = np.where(np.isfinite(tau), tau, np.float32(1.5))
        with np.errstate(over="ignore"):  # the next float32 past the largest is infinite
            beside = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
        acc = np.stack(beside + [np.full(o, v, np.float32) for v in (np.nan, np.inf, -np.inf, -0.0)])
    out = kernels.compare_pack(acc, tau, kernels.unit_masks(up), isa, threads=2)
    expected = reference_bits(acc, scale, bias, threshold, negative)
    assert np.array_equal(kernels.unpack_rows(out, o), expected)
    assert not kernels.unpack_rows(out, out.shape[1] * 64)[:, o:].any()  # padding stays zero
    finite = expected[np.isfinite(acc).all(axis=1), :4]
    assert finite.all(axis=0).any() and (~finite).all(axis=0).any()  # units always on and never on


def test_thresholds_stay_float64_where_the_affine_need_not_be_monotone():
    """A parameter that is not finite, or (float32 sums) a zero scale (``inf * 0`` is NaN): no
    thresholds on the sums, the float64 comparison runs."""
    ones, zeros = np.ones(3), np.zeros(3, np.uint8)
    for scale, bias, threshold, dtype in [
        ([1.0, np.inf, 1.0], ones, ones, np.int32),
        (ones, [0.0, np.nan, 0.0], ones, np.int32),
        (ones, None, [1.0, 1.0, -np.inf], np.float32),
        ([1.0, 0.0, 1.0], ones, ones, np.float32),
    ]:
        assert sums_thresholds(np.asarray(scale), bias, np.asarray(threshold), zeros, dtype) is None
    assert sums_thresholds(np.array([1.0, 0.0, 1.0]), ones, ones, zeros, np.int32) is not None


@needs_kernels
@pytest.mark.parametrize("acc_dtype", [np.int32, np.float32])
def test_the_residual_streams_kernels_equal_the_reference_to_the_last_bit(acc_dtype):
    """A ResNet's sums through scale, bias and BN, its RPReLU and its per-channel sign packing, in
    float64 in the reference's order of operations (no fused multiply-add): equal, not close. 70
    channels: a pixel's second word is partly padding, which stays zero."""
    rng = np.random.default_rng(3)
    n, h, w, c = 3, 5, 4, 70
    acc = rng.integers(-300, 300, (n, h, w, c)) if acc_dtype == np.int32 else rng.normal(0, 9, (n, h, w, c))
    acc = acc.astype(acc_dtype)
    scale, bias, a, b = (rng.normal(0, 1, c) for _ in range(4))
    nchw = np.ascontiguousarray(acc.transpose(0, 3, 1, 2), dtype=np.float64)
    per = {name: v.reshape(1, c, 1, 1) for name, v in (("scale", scale), ("bias", bias), ("a", a), ("b", b))}
    expected = (nchw * per["scale"] + per["bias"]) * per["a"] + per["b"]
    assert np.array_equal(kernels.sums_affine(acc, scale, bias, a, b, 2), expected)
    no_bias = (nchw * per["scale"]) * per["a"] + per["b"]
    assert np.array_equal(kernels.sums_affine(acc, scale, None, a, b, 2), no_bias)
    g, slope, z = (rng.normal(0, 1, c) for _ in range(3))
    shifted = expected - g.reshape(1, c, 1, 1)
    rprelu = np.where(shifted > 0, shifted, slope.reshape(1, c, 1, 1) * shifted) + z.reshape(1, c, 1, 1)
    assert np.array_equal(kernels.rprelu(expected, g, slope, z, 2), rprelu)
    # a block's last batch norm, its sum with the shortcut and the RPReLU after it, in one pass
    shortcut = rng.normal(0, 3, expected.shape)
    summed = expected + shortcut
    assert np.array_equal(kernels.sums_affine(acc, scale, bias, a, b, 2, addend=shortcut), summed)
    fused = kernels.sums_affine(acc, scale, bias, a, b, 2, addend=shortcut, rprelu=(g, slope, z))
    assert np.array_equal(fused, kernels.rprelu(summed, g, slope, z, 2))
    assert np.array_equal(kernels.sums_affine(acc, scale, bias, a, b, 2, rprelu=(g, slope, z)), rprelu)
    threshold, negative = rng.normal(0, 1, c), (rng.random(c) < 0.3).astype(np.uint8)
    threshold[:3] = expected[0, :3, 0, 0]  # ties: x >= t and x <= t both hold
    t, neg = threshold.reshape(1, c, 1, 1), negative.reshape(1, c, 1, 1).astype(bool)
    on = np.where(neg, expected <= t, expected >= t).transpose(0, 2, 3, 1).reshape(-1, c)
    bits = kernels.sign_pack(expected, threshold, negative, 2)
    assert bits.shape == (n, h, w, 2)
    assert np.array_equal(kernels.unpack_rows(bits.reshape(-1, 2), 128), np.pad(on, ((0, 0), (0, 58))))


@needs_kernels
def test_the_streams_pools_equal_the_reference_to_the_last_bit():
    """Max- and average-pooling of float64 NCHW images: on odd and even sizes, windows cut by the
    edge or by padding, a NaN (it wins a max, as in torch), and maps large enough to run threaded."""
    rng = np.random.default_rng(5)
    for shape, k, stride, padding in [*MAXPOOLS, ((2, 64, 40, 40), 3, 2, 1)]:
        x = rng.normal(0, 1, shape)
        x.flat[7] = np.nan
        got = kernels.maxpool_planes(x, k, stride, padding, 2)
        assert np.array_equal(got, maxpool2d(x, k, stride, padding), equal_nan=True)
        assert np.isnan(got).sum() >= 1
        for size in (2, 3):
            assert np.array_equal(kernels.avgpool_planes(x, size, 2), avgpool2d(x, size), equal_nan=True)


@needs_kernels
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_pooled_sums_then_their_affine_are_the_affine_then_the_max_pool(dtype):
    """The ImageNet stem's batch norm and max-pool run as the sums pooled (the minimum where a
    channel's affine falls: a negative scale or batch-norm slope, not both), then the affine: each
    value the reference's, on odd and even sizes with padding, a NaN included for float sums."""
    rng = np.random.default_rng(7)
    for shape, k, stride, padding in [*MAXPOOLS, ((2, 40, 40, 64), 3, 2, 1)]:
        n, c, h, w = shape
        acc = rng.integers(-300, 300, (n, h, w, c)) if dtype == np.int32 else rng.normal(0, 9, (n, h, w, c))
        acc = acc.astype(dtype)
        if dtype == np.float32:
            acc.flat[5] = np.nan
        scale, bias, a, b = (rng.normal(0, 1, c) for _ in range(4))
        per = [v.reshape(1, c, 1, 1) for v in (scale, bias, a, b)]
        nchw = acc.transpose(0, 3, 1, 2).astype(np.float64)
        expected = maxpool2d((nchw * per[0] + per[1]) * per[2] + per[3], k, stride, padding)
        pooled = kernels.pool_sums(acc, k, stride, padding, (scale < 0) ^ (a < 0), 2)
        got = kernels.sums_affine(pooled, scale, bias, a, b, 2)
        assert np.array_equal(got, expected, equal_nan=True)
        if c >= 4:  # channels of both directions
            assert ((scale < 0) ^ (a < 0)).any() and not ((scale < 0) ^ (a < 0)).all()


@needs_kernels
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_predicts_as_the_numpy_reference(tmp_path, net, method, isa=None):
    overrides, shape = NETS[net]
    cfg = compose_config("dataset=synthetic", f"method={method}", *overrides)
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, shape, 10)))
    path = str(tmp_path / "model.npz")
    x = torch.rand(200, *shape).numpy()
    reference, runtime = PackedNetwork(path).forward(x), CompiledNetwork(path, isa=isa).forward(x)
    assert np.array_equal(runtime.argmax(-1), reference.argmax(-1))
    assert np.allclose(runtime, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
def test_every_instruction_set_runs_whole_networks(tmp_path, isa):
    """The kernels of each instruction set, one network each of float x ternary (tc) and sign x
    binary (lab2) products; every method runs on the best set above."""
    for method in ("tc", "lab2"):
        test_every_method_predicts_as_the_numpy_reference(tmp_path, "mlp", method, isa)


@needs_amx
@pytest.mark.parametrize("method", ["bnn", "tc"])
def test_rows_of_many_inputs_run_as_fixed_point_and_signs_are_compared_in_the_kernel(tmp_path, method):
    """On AMX a dense layer of 512 inputs or more runs as fixed point on int8 tiles; before a BN +
    sign its kernel, and the sign product's after it, write the next layer's bits (bnn); a float32
    product's sums stay sums (tc). Predictions equal the reference's; scores within rounding."""
    cfg = compose_config("dataset=synthetic", f"method={method}", "model=mlp", "model.arch=256FC-256FC")
    torch.manual_seed(0)
    shape = (1, 24, 24)  # 576 inputs
    write(tmp_path, trained_looking(build_model(cfg, shape, 10)))
    path = str(tmp_path / "model.npz")
    runtime = CompiledNetwork(path)
    first, second = runtime.describe(shape)[1:3]
    assert "576->256" in first and "amx_fixed_gemm" in first, first
    assert ("compared in its output" in first) == (method == "bnn"), first
    if method == "bnn":  # 200 rows x 256 outputs: on tiles
        assert "amx_sign_gemm" in second and "compared in its output" in second, second
    x = torch.rand(200, *shape).numpy()
    reference, scores = PackedNetwork(path).forward(x), runtime.forward(x)
    assert np.array_equal(scores.argmax(-1), reference.argmax(-1))
    assert np.allclose(scores, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@needs_amx
def test_a_sign_mlp_runs_its_dense_layers_as_one_call_with_the_plans_answers(tmp_path, monkeypatch):
    """On AMX an MLP of sign layers runs as one kernel call (fewmult/runtime/chain.py) from
    AMX_MIN_ROWS rows on, each layer on the kernel its step would take at that size (16 and 70 rows:
    the hidden layer's 256 outputs on xnor_gemm and compare_pack; 200: on tiles): its scores are the
    plan's, step by step, to the last bit. Below those rows the steps run; float activations (lab)
    are no such chain."""
    calls = []
    chained = kernels.dense_chain
    monkeypatch.setattr(kernels, "dense_chain", lambda *a: calls.append(len(a[0])) or chained(*a))
    shape = (1, 24, 24)
    for method in ("bnn", "lab"):
        cfg = compose_config("dataset=synthetic", f"method={method}", "model=mlp", "model.arch=256FC-256FC")
        torch.manual_seed(0)
        write(tmp_path, trained_looking(build_model(cfg, shape, 10)))
        runtime = CompiledNetwork(str(tmp_path / "model.npz"))
        steps = runtime.plan(shape)
        for n in (kernels.AMX_MIN_ROWS - 1, kernels.AMX_MIN_ROWS, 70, 200):
            x = torch.rand(n, *shape).numpy()
            by_steps = network._run(steps, network.Value("float", x)).as_float()
            assert np.array_equal(runtime.forward(x), by_steps), (method, n)
    assert calls == [kernels.AMX_MIN_ROWS, 70, 200]


# and "valid" convolutions over 70 channels (two words a pixel, the second partly padding)
SIGN_NETS = {
    **NETS,
    "cnn_valid": (("model=cnn", "model.arch=70C3-MP2-12C2-16FC", "model.padding=0"), (2, 12, 12)),
}


@needs_kernels
@pytest.mark.parametrize("net", list(SIGN_NETS))
@pytest.mark.parametrize("method", ["bnn", "lab2", "xnor"])
def test_sign_networks_run_xnor_popcount_and_answer_exactly(tmp_path, method, net):
    """With +-1 inputs every layer's sum is an integer: the runtime's scores equal the reference's
    to the last bit (convolutions' zero padding corrected, max-pooling of sums, flattened NHWC bits
    against reordered dense weights), and the products ran on XNOR + popcount, not the fallback."""
    overrides, shape = SIGN_NETS[net]
    cfg = compose_config("dataset=synthetic", f"method={method}", *overrides)
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, shape, 10)))
    runtime = CompiledNetwork(str(tmp_path / "model.npz"))
    x = np.where(np.random.default_rng(0).random((100, *shape)) < 0.5, 1.0, -1.0).astype(np.float32)
    assert np.array_equal(runtime.forward(x), PackedNetwork(str(tmp_path / "model.npz")).forward(x))
    steps = runtime.describe(shape)
    products = [line for line in steps if line.startswith(("linear", "conv2d"))]
    assert all("xnor_gemm" in line for line in products[1:]), steps  # all but the first layer
    assert "NumPy reference" not in " ".join(steps[:-1]), steps  # only the last affine
    assert sum("compare_pack" in line for line in steps) == len(products) - 1, steps


@needs_kernels
@pytest.mark.parametrize("net", list(NETS))
def test_a_threshold_that_is_not_finite_is_compared_in_float64_as_the_reference(tmp_path, net):
    """A BN + sign with an infinite threshold (a unit always off) cannot move onto its sums: its
    layer compares the sums' float64 values as the reference does; the scores stay identical."""
    overrides, shape = NETS[net]
    cfg = compose_config("dataset=synthetic", "method=bnn", *overrides)
    torch.manual_seed(0)
    network = write(tmp_path, trained_looking(build_model(cfg, shape, 10)))
    arrays = dict(network.arrays)
    for op in network.layers:  # every BN + sign: one unit's threshold infinite
        if op["op"] == "sign_threshold":
            arrays[op["threshold"]] = arrays[op["threshold"]].astype(np.float64)
            arrays[op["threshold"]][1] = np.inf
    np.savez(tmp_path / "model.npz", manifest=np.array(json.dumps(network.manifest)), **arrays)
    runtime = CompiledNetwork(str(tmp_path / "model.npz"))
    assert any("float64 (a parameter not finite)" in line for line in runtime.describe(shape))
    x = np.where(np.random.default_rng(1).random((40, *shape)) < 0.5, 1.0, -1.0).astype(np.float32)
    assert np.array_equal(runtime.forward(x), PackedNetwork(str(tmp_path / "model.npz")).forward(x))


@pytest.fixture
def reload_kernels():
    """Forget the loaded kernels before and after (a test changes what loading finds)."""
    kernels._loaded.cache_clear()
    yield
    kernels._loaded.cache_clear()


@pytest.mark.parametrize("built", ["none", "stale"])
def test_without_kernels_the_numpy_reference_runs_and_says_so(
    tmp_path, monkeypatch, capsys, reload_kernels, built
):
    """No build (no C compiler at install), or one older than the code (a failed rebuild keeps the
    old file): one line says which, and the NumPy reference answers."""
    cfg = compose_config("dataset=synthetic", "method=bnn", *NETS["mlp"][0])
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, (1, 8, 8), 10)))
    if built == "none":
        monkeypatch.setattr(kernels, "library_path", lambda: None)
    else:
        monkeypatch.setitem(kernels._SIGNATURES, "fm_kernel_of_a_newer_version", ([], None))
    runtime = CompiledNetwork(str(tmp_path / "model.npz"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "NumPy reference" in line
    assert "no compiled kernels" in line if built == "none" else "lacks fm_kernel_of_a_newer_version" in line
    x = torch.rand(30, 1, 8, 8).numpy()
    assert np.array_equal(runtime.forward(x), PackedNetwork(str(tmp_path / "model.npz")).forward(x))
    assert all("NumPy reference" in d for d in runtime.describe())


@needs_kernels
def test_the_runtime_needs_no_torch(tmp_path):
    """``fewmult.runtime`` loads and predicts in a Python where importing torch fails."""
    cfg = compose_config("dataset=synthetic", "method=lab2", *NETS["mlp"][0])
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, (1, 8, 8), 10)))
    x = torch.rand(20, 1, 8, 8).numpy()
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys; sys.modules['torch'] = None; import numpy as np, fewmult.runtime as rt; "
        "print(*rt.load('model.npz').predict(np.load('x.npy')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert [int(v) for v in proc.stdout.split()] == PackedNetwork(str(tmp_path / "model.npz")).predict(
        x
    ).tolist()


def test_export_refuses_bad_bench_sizes(capsys):
    from fewmult import export

    for args in (["--batches", "0"], ["--batches", "1,x"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exit_:
            export.main(["some_run", "--bench", *args])
        assert exit_.value.code == 2 and args[0] in capsys.readouterr().err


@needs_kernels
def test_a_block_whose_convolution_has_no_kernel_is_summed_step_by_step(tmp_path):
    """Ternary weights on ReActNet's sign activations: no kernel runs that convolution (the NumPy
    reference does), so the block's batch norm, sum and RPReLU go step by step, still as the reference."""
    overrides = ("~method.weight_quantizer.per_channel", "method.weight_quantizer.name=tc", *BIREAL_BLOCK)
    cfg = compose_config("dataset=synthetic", "model=resnet20", "method=reactnet", *overrides)
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, (3, 8, 8), 10)))
    path = str(tmp_path / "model.npz")
    x = torch.randn(50, 3, 8, 8).numpy()
    runtime = CompiledNetwork(path)
    blocks = [line for line in runtime.describe((3, 8, 8)) if line.startswith("residual")]
    assert blocks and all(
        "conv2d: NumPy reference" in b and b.endswith("rprelu: rprelu (float64)") for b in blocks
    )
    reference, ours = PackedNetwork(path).forward(x), runtime.forward(x)
    assert np.array_equal(ours.argmax(-1), reference.argmax(-1))
    assert np.allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@needs_kernels
@pytest.mark.parametrize("setup", list(RESNETS))
def test_resnets_run_their_binary_convolutions_on_xnor_popcount(tmp_path, monkeypatch, setup):
    """Every block's sign (Bi-Real's, ReActNet's shifted one) packs the block's input and its
    convolution runs XNOR + popcount, the stem's max-pool and the shortcuts' average pools run in C;
    the scores are the NumPy reference's within float32 rounding
    (the float stem and shortcut convolutions) and no prediction differs."""
    cfg = compose_config("dataset=synthetic", "model=resnet20", *RESNETS[setup])
    torch.manual_seed(0)
    write(tmp_path, trained_looking(build_model(cfg, (3, 8, 8), 10)))
    path = str(tmp_path / "model.npz")
    x = torch.randn(200, 3, 8, 8).numpy()
    runtime = CompiledNetwork(path)
    reference, ours = PackedNetwork(path).forward(x), runtime.forward(x)
    assert np.array_equal(ours.argmax(-1), reference.argmax(-1))
    assert np.allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    blocks = [line for line in runtime.describe((3, 8, 8)) if line.startswith("residual")]
    binary = cfg.method.activation is not None
    assert len(blocks) == 9 * (2 if cfg.model.convs_per_shortcut == 1 else 1)
    assert all(("xnor_gemm" in line) == binary and "conv2d: NumPy" not in line for line in blocks), blocks
    # each block's last batch norm, the sum and (ReActNet) the RPReLU after it: one pass of the stream
    rprelu = "RPReLU: one pass" if "method=reactnet" in RESNETS[setup] else "+ the shortcut: one pass"
    assert all(rprelu in line for line in blocks), blocks
    described = runtime.describe((3, 8, 8))
    assert not any(line.startswith("rprelu") for line in described)
    assert not any("pool2d: NumPy" in line for line in described), described  # stem, shortcuts: C
    if "model.stem=imagenet" in RESNETS[setup]:  # its batch norm and max-pool: the sums pooled first
        assert any(line.startswith("affine, maxpool2d: pool_sums") for line in described), described
    # inputs whose layers' outputs pass CHUNK_BYTES (large images) run a few at a time, same answers
    monkeypatch.setattr(
        network, "CHUNK_BYTES", 3 * 8 * network._largest_output(runtime.reference.layers, x.shape[1:])
    )
    chunks = []
    monkeypatch.setattr(
        network, "_run", lambda steps, v, run=network._run: chunks.append(v.data.shape) or run(steps, v)
    )
    chunked = runtime.forward(x[:7])
    assert [c[0] for c in chunks if c[1:] == x.shape[1:]] == [3, 3, 1]
    if runtime.isa != "amx":
        assert np.array_equal(chunked, ours[:7])
    else:  # AMX runs float products from 64 rows on, fewer on AVX-512: within rounding, same predictions
        assert np.array_equal(chunked.argmax(-1), ours[:7].argmax(-1))
        assert np.allclose(chunked, ours[:7], rtol=1e-5, atol=1e-5 * np.abs(ours).max())
