"""The compiled kernels (``csrc/``), loaded with ctypes, and the instruction set they run with.

``pip install`` builds them where a C compiler works (setup.py; optional). Each call names the
instruction set, at most the CPU's best (``FEWMULT_RUNTIME_ISA=portable|avx2|avx512|amx`` lowers it,
e.g. to compare paths), and the number of threads (OpenMP). NumPy only: no torch is imported here.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import cache
from pathlib import Path

import numpy as np

ISAS = ("portable", "avx2", "avx512", "amx")  # the order of FM_PORTABLE, FM_AVX2, FM_AVX512, FM_AMX
ROW_WORDS = 8  # FM_ROW_WORDS: packed rows are padded to whole 512-bit blocks
# When the AMX products beat the AVX-512 kernels (benchmarks/bench_amx_kernels.py, BENCHMARKS.md):
# sign products and fixed-point float products from 16 rows (1.2x and 1.8x there, 0.2x and 0.4x at
# one row), bf16 float products from 64 (0.8x at 16, 1.3x at 64);
AMX_MIN_ROWS = 16
AMX_FLOAT_MIN_ROWS = 64
# sign products from 32,768 sums (rows x outputs): a small product pays the tiles' fixed costs
# (64 x 2048 x 10: xnor_gemm 8 us, amx_sign_gemm 18; x 256 outputs 36 and 42; 256 x 512 x 128: 40, 29);
AMX_MIN_SUMS = 32768
# float rows as fixed point on int8 tiles rather than three bf16 parts from 512 inputs (64 x 784 x
# 2048: 1.6x; the 27 inputs of a 3x3 RGB convolution: 0.5x).
AMX_FIXED_MIN_INPUTS = 512

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "fm_best_isa": ([], _I),
    "fm_max_threads": ([], _I),
    "fm_xnor_gemm": ([_I, _I, _P, _L, _P, _L, _L, ctypes.c_int32, _P], None),
    "fm_xnor_gemm_lanes": ([_I, _I, _P, _L, _P, _L, _L, ctypes.c_int32, _P], None),
    "fm_select_gemm": ([_I, _I, _P, _L, _L, _P, _P, _L, _L, _P], None),
    "fm_float_gemm": ([_I, _I, _P, _L, _L, _P, _L, _P], None),
    "fm_float_gemm_panels": ([_I, _I, _P, _L, _L, _P, _L, _P], None),
    "fm_amx_sign_gemm": ([_I, _P, _L, _L, _P, _P, _L, _L, ctypes.c_int32, _P, _P, _P, _P, _L], None),
    "fm_amx_select_gemm": ([_I, _P, _L, _L, _P, _P, _L, _P], None),
    "fm_amx_fixed_gemm": ([_I, _P, _L, _L, _P, _P, _P, _P, _L, _P, _P, _P, _P, _L], None),
    "fm_lut_gemm_avx512": ([_I, _P, _L, _L, _P, _P, _L, _P], None),
    "fm_lut_gemm_avx2": ([_I, _P, _L, _L, _P, _P, _L, _P], None),
    "fm_compare_pack": ([_I, _I, _P, _I, _L, _L, _P, _P, _P, _L], None),
    "fm_im2col_bits": ([_I, _P, *[_L] * 12, _P, _L], None),
    "fm_im2col_f32": ([_I, _P, *[_L] * 12, _P, _L], None),
    "fm_conv_border": ([_I, _P, _L, _L, _L, _L, _P, *[_L] * 8], None),
    "fm_maxpool_planes": ([_I, _P, *[_L] * 8, _P], None),
    "fm_avgpool_planes": ([_I, _P, *[_L] * 4, _P], None),
    "fm_pool_sums": ([_I, _P, _I, *[_L] * 9, _P, _P], None),
    "fm_sums_affine": ([_I, _P, _I, _L, _L, _L, *[_P] * 9], None),
    "fm_rprelu": ([_I, _P, _L, _L, _L, _P, _P, _P, _P], None),
    "fm_sign_pack": ([_I, _P, _L, _L, _L, _P, _P, _P, _L], None),
    "fm_dense_chain": ([_I, _P, _L, _P, _L, _P], None),
}


def library_path() -> Path | None:
    """The built extension next to this file, if ``pip install`` built one."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (path := here / f"_kernels{suffix}").is_file():
            return path
    return None


@cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """The kernels' library with typed functions, or None and why not."""
    path = library_path()
    if path is None:
        return None, "no compiled kernels (pip install found no working C compiler)"
    lib = ctypes.CDLL(str(path))
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:  # a build left by an older checkout (a failed rebuild keeps it)
            return None, f"{path.name} lacks {name}: it is older than this code; reinstall (pip install -e .)"
        fn.argtypes, fn.restype = args, result
    return lib, None


def load() -> ctypes.CDLL | None:
    """The kernels' library with typed functions, or None where none (or a stale one) was built."""
    return _loaded()[0]


def unavailable_reason() -> str | None:
    """One line saying why the compiled kernels cannot run here, or None when they can."""
    if load() is not None:
        return None
    return f"fewmult.runtime: {_loaded()[1]}; running the NumPy reference"


def best_isa(asked: str | None = None) -> str:
    """The widest instruction set of this CPU that the kernels use, lowered to ``asked`` (default:
    ``FEWMULT_RUNTIME_ISA``) where that is narrower."""
    lib = load()
    best = ISAS[lib.fm_best_isa()] if lib is not None else "portable"
    asked = asked or os.environ.get("FEWMULT_RUNTIME_ISA")
    if asked is None:
        return best
    if asked not in ISAS:
        raise ValueError(f"instruction set {asked!r}: use one of {', '.join(ISAS)}")
    return ISAS[min(ISAS.index(asked), ISAS.index(best))]


def max_threads() -> int:
    lib = load()
    return lib.fm_max_threads() if lib is not None else 1


def row_words(k: int) -> int:
    """64-bit words of a packed row of ``k`` values, padded to whole 512-bit blocks."""
    return -(-k // (64 * ROW_WORDS)) * ROW_WORDS


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Boolean rows (n, k) as the kernels' packed rows (n, row_words(k)) of uint64 (bit t of word w
    is element 64 w + t; padding bits are zero)."""
    n, k = bits.shape
    padded = np.zeros((n, row_words(k) * 64), dtype=bool)
    padded[:, :k] = bits
    return np.ascontiguousarray(np.packbits(padded, axis=1, bitorder="little").view("<u8"))


def unpack_rows(words: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`pack_rows`: boolean rows (n, k)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, count=k, bitorder="little").astype(bool)


def lut_layout(bits: np.ndarray, isa: str = "avx512") -> np.ndarray:
    """Boolean weight rows (o, k) as :func:`lut_gemm` reads them on ``isa`` (csrc/select_lut.c): for
    each block of L rows and each group of G inputs, the L rows' G-bit selections, one byte each
    (zero-padded)."""
    lanes, group = LUT_SHAPES[isa]
    o, k = bits.shape
    padded = np.zeros((-(-o // lanes) * lanes, -(-k // group) * group), dtype=np.uint8)
    padded[:o, :k] = bits
    selections = padded.reshape(len(padded), -1, group) @ (1 << np.arange(group, dtype=np.uint8))
    return pinned(selections.reshape(-1, lanes, selections.shape[1]).transpose(0, 2, 1))


def amx_layout(bits: np.ndarray, group: int) -> np.ndarray:
    """Boolean weight rows (o, k) as the AMX products read them (csrc/amx_gemm.c): per block of 16
    rows and block of 16 ``group`` inputs, 16 masks of 16 ``group`` bits, bit ``group * j + q`` of mask r
    holding input ``group * r + q`` of row j (zero-padded). ``group`` 4 (int8 tiles, uint64 masks) or 2
    (bf16 tiles, uint32 masks)."""
    o, k = bits.shape
    span = 16 * group
    padded = np.zeros((-(-o // 16) * 16, -(-k // span) * span), dtype=bool)
    padded[:o, :k] = bits
    tiles = padded.reshape(-1, 16, padded.shape[1] // span, 16, group).transpose(0, 2, 3, 1, 4)
    masks = np.packbits(tiles.reshape(-1, span), axis=1, bitorder="little")
    return pinned(masks.view("<u8" if group == 4 else "<u4").reshape(*tiles.shape[:3]))


class Pinned(np.ndarray):
    """A C-contiguous array whose data address was read once: what a plan passes to every call (its
    weights, thresholds, per-unit parameters). Reading ``array.ctypes.data`` costs about 1 us, some 30
    reads a forward of an MLP; views and copies read theirs again."""

    address: int | None = None  # set by pinned(); a view or copy made from one starts without it


def pinned(array: np.ndarray) -> Pinned:
    """``array`` (made C-contiguous) with its data address kept."""
    out = np.ascontiguousarray(array).view(Pinned)
    out.address = out.ctypes.data
    return out


def _ptr(array: np.ndarray | None) -> int | None:
    """A C-contiguous array's data pointer for ctypes (None stays NULL). A writable one's through
    ``ctypes.c_char.from_buffer``: 0.3 us against ``array.ctypes.data``'s 0.8, read ten times a forward."""
    if array is None:
        return None
    if type(array) is Pinned and array.address is not None:
        return array.address
    if not array.flags.c_contiguous:
        raise ValueError("the kernels take C-contiguous arrays")
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only, or empty
        return array.ctypes.data


# Typed calls of the kernels (csrc/fewmult_kernels.h states each formula): arrays in, arrays out.


def xnor_gemm(a: np.ndarray, w: np.ndarray, k: int, isa: str, threads: int) -> np.ndarray:
    """Packed +-1 rows ``a`` (n, words) times packed rows ``w`` (o, words) of length k: int32 (n, o)."""
    out = np.empty((len(a), len(w)), dtype=np.int32)
    load().fm_xnor_gemm(ISAS.index(isa), threads, _ptr(a), len(a), _ptr(w), len(w), w.shape[1], k, _ptr(out))
    return out


LANES = 4  # outputs a group of xnor_gemm_lanes (csrc/xnor_gemm.c)


def xnor_lanes(w: np.ndarray) -> np.ndarray:
    """Packed weight rows (o, words) as :func:`xnor_gemm_lanes` reads them: (ceil(o / 4), words, 4),
    word t of output 4 g + l at [g, t, l] (zero rows past o)."""
    o, words = w.shape
    padded = np.zeros((-(-o // LANES) * LANES, words), dtype=np.uint64)
    padded[:o] = w
    return pinned(padded.reshape(-1, LANES, words).transpose(0, 2, 1))


def xnor_gemm_lanes(a: np.ndarray, lanes: np.ndarray, o: int, k: int, isa: str, threads: int) -> np.ndarray:
    """:func:`xnor_gemm` with the weights as :func:`xnor_lanes`: int32 (n, o)."""
    out = np.empty((len(a), o), dtype=np.int32)
    load().fm_xnor_gemm_lanes(
        ISAS.index(isa), threads, _ptr(a), len(a), _ptr(lanes), o, a.shape[1], k, _ptr(out)
    )
    return out


Thresholds = tuple[np.ndarray, np.ndarray, int]  # compare_pack's tau and up masks, and words a row


def _outputs(n: int, o: int, dtype: type, thresholds: Thresholds | None) -> tuple[np.ndarray, list]:
    """A product's output array: its sums (n, o), or with ``thresholds`` the packed bits (n, words)
    that :func:`compare_pack` makes of them; and the kernel's arguments after ``out``."""
    if thresholds is None:
        out = np.empty((n, o), dtype=dtype)
        return out, [_ptr(out), None, None, None, 0]
    tau, up, words = thresholds
    if tau.dtype != dtype:
        raise ValueError(f"thresholds of {tau.dtype} for sums of {np.dtype(dtype)}")
    bits = np.empty((n, words), dtype=np.uint64)
    return bits, [None, _ptr(tau), _ptr(up), _ptr(bits), words]


def amx_sign_gemm(
    a: np.ndarray,
    w: np.ndarray,
    w_ones: np.ndarray,
    k: int,
    o: int,
    threads: int,
    thresholds: Thresholds | None = None,
) -> np.ndarray:
    """:func:`xnor_gemm` on AMX tiles: packed rows ``a`` (n, words) times weights in
    :func:`amx_layout` (group 4) with each weight row's ones ``w_ones`` (int32, o): int32 (n, o), or
    given ``thresholds`` the bits :func:`compare_pack` makes of those sums."""
    out, rest = _outputs(len(a), o, np.int32, thresholds)
    load().fm_amx_sign_gemm(
        threads, _ptr(a), len(a), a.shape[1], _ptr(w), _ptr(w_ones), o, w.shape[1], k, *rest
    )
    return out


def amx_select_gemm(
    x: np.ndarray, plus: np.ndarray, minus: np.ndarray | None, o: int, threads: int
) -> np.ndarray:
    """:func:`select_gemm` on AMX tiles, the selections in :func:`amx_layout` (group 2)."""
    (n, k) = x.shape
    out = np.empty((n, o), dtype=np.float32)
    load().fm_amx_select_gemm(threads, _ptr(x), n, k, _ptr(plus), _ptr(minus), o, _ptr(out))
    return out


def amx_fixed_gemm(
    x: np.ndarray,
    plus: np.ndarray,
    plus_ones: np.ndarray,
    minus: np.ndarray | None,
    minus_ones: np.ndarray | None,
    o: int,
    threads: int,
    thresholds: Thresholds | None = None,
) -> np.ndarray:
    """:func:`select_gemm` on int8 AMX tiles, each float32 row as 24-bit fixed point (csrc/amx_gemm.c),
    the selections in :func:`amx_layout` (group 4) with each weight row's selected count (int32, o);
    given ``thresholds``, the bits :func:`compare_pack` makes of those float32 sums (the tiles then run
    two of the three byte planes, and the third only for units whose sums are near their threshold)."""
    (n, k) = x.shape
    out, rest = _outputs(n, o, np.float32, thresholds)
    load().fm_amx_fixed_gemm(
        threads, _ptr(x), n, k, _ptr(plus), _ptr(plus_ones), _ptr(minus), _ptr(minus_ones), o, *rest
    )
    return out


def select_gemm(
    x: np.ndarray, plus: np.ndarray, minus: np.ndarray | None, isa: str, threads: int
) -> np.ndarray:
    """Float32 rows ``x`` (n, k) times binary (``minus`` None) or ternary weights given as packed
    selection rows (o, words): float32 (n, o)."""
    (n, k), o = x.shape, len(plus)
    out = np.empty((n, o), dtype=np.float32)
    load().fm_select_gemm(
        ISAS.index(isa), threads, _ptr(x), n, k, _ptr(plus), _ptr(minus), o, plus.shape[1], _ptr(out)
    )
    return out


def float_gemm(x: np.ndarray, w: np.ndarray, isa: str, threads: int) -> np.ndarray:
    """Float32 rows ``x`` (n, k) times float32 weight rows ``w`` (o, k): float32 (n, o)."""
    (n, k), o = x.shape, len(w)
    out = np.empty((n, o), dtype=np.float32)
    load().fm_float_gemm(ISAS.index(isa), threads, _ptr(x), n, k, _ptr(w), o, _ptr(out))
    return out


PANEL = 16  # weight columns a panel of float_gemm_panels (csrc/float_gemm.c)


def float_panels(w: np.ndarray) -> np.ndarray:
    """Float32 weight rows (o, k) as :func:`float_gemm_panels` reads them: (ceil(o / 16), k, 16),
    column j of panel p holding row 16 p + j (zeros past o)."""
    o, k = w.shape
    padded = np.zeros((-(-o // PANEL) * PANEL, k), dtype=np.float32)
    padded[:o] = w
    return pinned(padded.reshape(-1, PANEL, k).transpose(0, 2, 1))


def float_gemm_panels(x: np.ndarray, panels: np.ndarray, o: int, isa: str, threads: int) -> np.ndarray:
    """:func:`float_gemm` with the weights as :func:`float_panels`: float32 (n, o)."""
    n, k = x.shape
    out = np.empty((n, o), dtype=np.float32)
    load().fm_float_gemm_panels(ISAS.index(isa), threads, _ptr(x), n, k, _ptr(panels), o, _ptr(out))
    return out


LUT_SHAPES = {"avx512": (16, 4), "avx2": (8, 3)}  # lanes L (outputs a permute), inputs G a group


def lut_gemm(
    x: np.ndarray, plus: np.ndarray, minus: np.ndarray | None, o: int, isa: str, threads: int
) -> np.ndarray:
    """:func:`select_gemm`'s product by table lookups (AVX-512 or AVX2), the weights in
    :func:`lut_layout` for ``isa``."""
    (n, k) = x.shape
    out = np.empty((n, o), dtype=np.float32)
    kernel = load().fm_lut_gemm_avx512 if isa == "avx512" else load().fm_lut_gemm_avx2
    kernel(threads, _ptr(x), n, k, _ptr(plus), _ptr(minus), o, _ptr(out))
    return out


def unit_masks(flags: np.ndarray) -> np.ndarray:
    """Booleans (o,) as 16-bit masks, bit j % 16 of mask j // 16 (zero-padded)."""
    packed = np.packbits(np.asarray(flags, bool), bitorder="little")
    return pinned(np.pad(packed, (0, len(packed) % 2)).view("<u2"))


def compare_pack(
    acc: np.ndarray, tau: np.ndarray, up: np.ndarray, isa: str, threads: int, words: int | None = None
) -> np.ndarray:
    """Bit (i, j) of packed rows: ``acc[i, j] >= tau[j]`` where bit j of ``up`` (:func:`unit_masks`),
    else ``acc[i, j] <= tau[j]``; ``acc`` int32 or float32 (n, o), ``tau`` the same dtype; rows of
    ``words`` words (default: a dense row's, :func:`row_words`)."""
    n, o = acc.shape
    if tau.dtype != acc.dtype:
        raise ValueError(f"thresholds of {tau.dtype} for sums of {acc.dtype}")
    out = np.empty((n, words or row_words(o)), dtype=np.uint64)
    load().fm_compare_pack(
        ISAS.index(isa),
        threads,
        _ptr(acc),
        int(acc.dtype == np.float32),
        n,
        o,
        _ptr(tau),
        _ptr(up),
        _ptr(out),
        out.shape[1],
    )
    return out


def _geometry(g: dict[str, int]) -> list[int]:
    return [g[key] for key in ("h", "w")]


def _window(g: dict[str, int]) -> list[int]:
    return [g[key] for key in ("kh", "kw", "sh", "sw", "ph", "pw")]


def im2col_bits(x: np.ndarray, g: dict[str, int], threads: int) -> np.ndarray:
    """NHWC packed images (n, h, w, cw) as one row per output pixel of a convolution of geometry ``g``
    (``c, h, w, kh, kw, sh, sw, ph, pw, ho, wo``): (n * ho * wo, kh * kw * cw) words, zero words for
    taps outside the image."""
    n, cw = len(x), x.shape[-1]
    rows = np.empty((n * g["ho"] * g["wo"], g["kh"] * g["kw"] * cw), dtype=np.uint64)
    load().fm_im2col_bits(
        threads, _ptr(x), n, *_geometry(g), cw, *_window(g), g["ho"], g["wo"], _ptr(rows), rows.shape[1]
    )
    return rows


def im2col_f32(x: np.ndarray, g: dict[str, int], threads: int) -> np.ndarray:
    """NHWC float32 images (n, h, w, c) as :func:`im2col_bits` does bits: (n * ho * wo, kh * kw * c)."""
    n, c = len(x), x.shape[-1]
    rows = np.empty((n * g["ho"] * g["wo"], g["kh"] * g["kw"] * c), dtype=np.float32)
    load().fm_im2col_f32(
        threads, _ptr(x), n, *_geometry(g), c, *_window(g), g["ho"], g["wo"], _ptr(rows), rows.shape[1]
    )
    return rows


def conv_border(acc: np.ndarray, tap_sums: np.ndarray, g: dict[str, int], threads: int) -> None:
    """Correct, in place, the int32 sums (n, ho, wo, o) of a binary convolution read from packed
    zero-padded taps: add ``tap_sums[t, j]`` for each tap t outside the image."""
    n, ho, wo, o = acc.shape
    load().fm_conv_border(threads, _ptr(acc), n, ho, wo, o, _ptr(tap_sums), *_geometry(g), *_window(g))


def pooled_side(side: int, k: int, stride: int, padding: int) -> int:
    """Windows along a side of a max-pool (floor mode)."""
    return (side + 2 * padding - k) // stride + 1


def maxpool_planes(x: np.ndarray, k: int, stride: int, padding: int, threads: int) -> np.ndarray:
    """``torch.nn.MaxPool2d(k, stride, padding)`` of float64 NCHW images: each value the reference's
    (:func:`fewmult.packed_forward.maxpool2d`; a maximum rounds nothing)."""
    n, c, h, w = x.shape
    ho, wo = pooled_side(h, k, stride, padding), pooled_side(w, k, stride, padding)
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty((n, c, ho, wo))
    load().fm_maxpool_planes(threads, _ptr(x), n * c, h, w, k, stride, padding, ho, wo, _ptr(out))
    return out


def pool_sums(
    x: np.ndarray, k: int, stride: int, padding: int, take_min: np.ndarray, threads: int
) -> np.ndarray:
    """NHWC int32 or float32 sums (n, h, w, c) pooled over ``torch.nn.MaxPool2d(k, stride, padding)``'s
    windows: per channel the maximum, the minimum where ``take_min`` (a NaN winning either)."""
    n, h, w, c = x.shape
    ho, wo = pooled_side(h, k, stride, padding), pooled_side(w, k, stride, padding)
    out = np.empty((n, ho, wo, c), dtype=x.dtype)
    take_min = np.ascontiguousarray(take_min, dtype=np.uint8)
    load().fm_pool_sums(
        threads,
        _ptr(x),
        int(x.dtype == np.float32),
        n,
        h,
        w,
        c,
        k,
        stride,
        padding,
        ho,
        wo,
        _ptr(take_min),
        _ptr(out),
    )
    return out


def avgpool_planes(x: np.ndarray, k: int, threads: int) -> np.ndarray:
    """``torch.nn.AvgPool2d(k, ceil_mode=True, count_include_pad=False)`` of float64 NCHW images, each
    value summed in the reference's order (:func:`fewmult.packed_forward.avgpool2d`)."""
    n, c, h, w = x.shape
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty((n, c, -(-h // k), -(-w // k)))
    load().fm_avgpool_planes(threads, _ptr(x), n * c, h, w, k, _ptr(out))
    return out


def sums_affine(
    acc: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    a: np.ndarray,
    b: np.ndarray,
    threads: int,
    addend: np.ndarray | None = None,
    rprelu: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``(acc * scale + bias) * a + b`` per channel in float64, NHWC int32 or float32 sums (n, h, w, c)
    or rows (n, c) to NCHW (n, c, h, w) or (n, c): a product's output and the batch norm after it.
    In the same pass, where given: ``+ addend`` (float64, the output's shape: a ResNet block's
    shortcut), then RPReLU with ``rprelu = (shift_in, slope, shift_out)`` (see :func:`rprelu`)."""
    n, c = acc.shape[0], acc.shape[-1]
    hw = acc.size // (n * c)
    out = np.empty((n, c, *acc.shape[1:-1]), dtype=np.float64)
    if addend is not None and (addend.shape != out.shape or addend.dtype != np.float64):
        raise ValueError(f"addend must be float64 of shape {out.shape}, got {addend.dtype} {addend.shape}")
    addend = None if addend is None else np.ascontiguousarray(addend)  # alive through the call
    shift_in, slope, shift_out = rprelu or (None, None, None)
    load().fm_sums_affine(
        threads,
        _ptr(acc),
        int(acc.dtype == np.float32),
        n,
        hw,
        c,
        _ptr(scale),
        _ptr(bias),
        _ptr(a),
        _ptr(b),
        _ptr(addend),
        _ptr(shift_in),
        _ptr(slope),
        _ptr(shift_out),
        _ptr(out),
    )
    return out


def rprelu(
    x: np.ndarray, shift_in: np.ndarray, slope: np.ndarray, shift_out: np.ndarray, threads: int
) -> np.ndarray:
    """ReActNet's RPReLU per channel of float64 images (n, c, h, w): ``x - g`` where positive, else
    ``slope (x - g)``, plus ``shift_out``."""
    n, c = x.shape[:2]
    out = np.empty_like(x)
    load().fm_rprelu(
        threads, _ptr(x), n, c, x.size // (n * c), _ptr(shift_in), _ptr(slope), _ptr(shift_out), _ptr(out)
    )
    return out


def sign_pack(x: np.ndarray, threshold: np.ndarray, negative: np.ndarray, threads: int) -> np.ndarray:
    """Float64 images (n, c, h, w) compared per channel with ``threshold`` (``<=`` where ``negative``)
    as NHWC packed bits (n, h, w, ceil(c / 64)), channel j in bit j % 64 of word j // 64."""
    n, c, h, w = x.shape
    words = -(-c // 64)
    out = np.empty((n, h, w, words), dtype=np.uint64)
    load().fm_sign_pack(threads, _ptr(x), n, c, h * w, _ptr(threshold), _ptr(negative), _ptr(out), words)
    return out


class DenseLayer(ctypes.Structure):
    """One layer of :func:`dense_chain` (csrc/fewmult_kernels.h's ``fm_dense_layer``, which says what
    each field holds): pointers to arrays its caller keeps alive."""

    _fields_ = [
        *[(name, ctypes.c_int64) for name in ("k", "o", "kblocks", "words", "min_rows", "min_sums")],
        ("isa", ctypes.c_int32),
        *[
            (name, ctypes.c_void_p)
            for name in ("tiles", "minus_tiles", "packed", "ones", "minus_ones", "tau", "up")
        ],
        *[(name, ctypes.c_void_p) for name in ("scale", "bias", "a", "b")],
    ]


def dense_chain(x: np.ndarray, layers: ctypes.Array, o: int, threads: int) -> np.ndarray:
    """Float32 rows ``x`` (n, k) through a chain of dense layers in one call (csrc/chain.c): the last
    layer's float64 scores (n, o)."""
    out = np.empty((len(x), o))
    load().fm_dense_chain(threads, _ptr(x), len(x), ctypes.addressof(layers), len(layers), _ptr(out))
    return out
