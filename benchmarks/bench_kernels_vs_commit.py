"""The runtime's data-movement kernels (the residual stream's ``sums_affine``, ``sign_pack``,
``rprelu``, ``maxpool_planes``; the convolutions' ``im2col_f32`` and ``im2col_bits``) of this checkout
beside those of an earlier commit, in one process, their outputs checked identical.

The earlier commit's ``fewmult/runtime/csrc`` is read with ``git show`` and compiled with the
flags ``setup.py`` uses into a library of its own (``cc`` and OpenMP needed); each number is the
fastest of ``--calls`` calls on the same random operands. What a kernel change bought, measured as
a ratio in one process (these machines move by a third from run to run).

Run: ``python -m benchmarks.bench_kernels_vs_commit REV`` (``--threads``, ``--calls``).
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.bench_amx_kernels import fastest_us
from fewmult.runtime import kernels
from fewmult.runtime.kernels import _SIGNATURES, _ptr

KERNELS = (
    "fm_sums_affine",
    "fm_sign_pack",
    "fm_rprelu",
    "fm_maxpool_planes",
    "fm_im2col_f32",
    "fm_im2col_bits",
)
# CIFAR ResNet-18's first and third stage at batch 16, ImageNet's first at batch 4 (n, h, w, c of the
# stream; im2col_f32 reads an RGB image of 4h x 4w, the ImageNet stem's 224 pixels for h = 56)
SHAPES = [(16, 32, 32, 64), (16, 8, 8, 256), (4, 56, 56, 64)]


def build(rev: str, folder: Path) -> ctypes.CDLL:
    """``rev``'s kernels as a shared library (the Python module's file left out)."""
    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "fewmult/runtime/csrc/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=repo, capture_output=True, check=True)
        (folder / Path(name).name).write_bytes(text.stdout)
    sources = [str(p) for p in folder.glob("*.c") if p.name != "module.c"]
    library = folder / "earlier.so"
    flags = ["-O3", "-std=c11", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run(["cc", *flags, "-o", str(library), *sources, "-lm"], check=True)
    lib = ctypes.CDLL(str(library))
    for name in KERNELS:
        if hasattr(lib, name):
            getattr(lib, name).argtypes, getattr(lib, name).restype = _SIGNATURES[name]
    return lib


def calls(shape: tuple[int, int, int, int], threads: int) -> dict[str, Callable[[ctypes.CDLL], np.ndarray]]:
    """Per kernel, a call on ``shape``'s operands (NHWC sums, NCHW stream) through a library."""
    n, h, w, c = shape
    rng = np.random.default_rng(0)
    acc = rng.integers(-300, 300, shape).astype(np.int32)
    scale, bias, a, b, g, slope, z = (rng.normal(0, 1, c) for _ in range(7))
    stream, addend = rng.normal(0, 1, (n, c, h, w)), rng.normal(0, 1, (n, c, h, w))
    negative, words = (rng.random(c) < 0.3).astype(np.uint8), -(-c // 64)

    def sums_affine(lib: ctypes.CDLL) -> np.ndarray:
        out = np.empty((n, c, h, w))
        operands = (scale, bias, a, b, addend, g, slope, z, out)
        lib.fm_sums_affine(threads, _ptr(acc), 0, n, h * w, c, *map(_ptr, operands))
        return out

    def sign_pack(lib: ctypes.CDLL) -> np.ndarray:
        out = np.empty((n, h, w, words), dtype=np.uint64)
        lib.fm_sign_pack(threads, _ptr(stream), n, c, h * w, _ptr(g), _ptr(negative), _ptr(out), words)
        return out

    def rprelu(lib: ctypes.CDLL) -> np.ndarray:
        out = np.empty_like(stream)
        lib.fm_rprelu(threads, _ptr(stream), n, c, h * w, _ptr(g), _ptr(slope), _ptr(z), _ptr(out))
        return out

    def maxpool_planes(lib: ctypes.CDLL) -> np.ndarray:
        ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        out = np.empty((n, c, ho, wo))
        lib.fm_maxpool_planes(threads, _ptr(stream), n * c, h, w, 3, 2, 1, ho, wo, _ptr(out))
        return out

    image = rng.random((n, 4 * h, 4 * w, 3), dtype=np.float32)  # RGB NHWC, as the stem reads it
    bits = rng.integers(0, 2**63, (n, h, w, words), dtype=np.uint64)

    def im2col_f32(lib: ctypes.CDLL) -> np.ndarray:  # the 7x7 stride-2 stem
        rows = np.empty((n * 2 * h * 2 * w, 7 * 7 * 3), dtype=np.float32)
        geometry = (n, 4 * h, 4 * w, 3, 7, 7, 2, 2, 3, 3, 2 * h, 2 * w)
        lib.fm_im2col_f32(threads, _ptr(image), *geometry, _ptr(rows), 7 * 7 * 3)
        return rows

    def im2col_bits(lib: ctypes.CDLL) -> np.ndarray:  # a block's 3x3 binary convolution
        rows = np.empty((n * h * w, 9 * words), dtype=np.uint64)
        lib.fm_im2col_bits(threads, _ptr(bits), n, h, w, words, 3, 3, 1, 1, 1, 1, h, w, _ptr(rows), 9 * words)
        return rows

    return {
        "fm_sums_affine": sums_affine,
        "fm_sign_pack": sign_pack,
        "fm_rprelu": rprelu,
        "fm_maxpool_planes": maxpool_planes,
        "fm_im2col_f32": im2col_f32,
        "fm_im2col_bits": im2col_bits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    current = kernels.load()
    if current is None:
        raise SystemExit(kernels.unavailable_reason())
    with tempfile.TemporaryDirectory() as tmp:
        earlier = build(args.rev, Path(tmp))
        print(f"microseconds, fastest of {args.calls}, {args.threads} threads; {args.rev} -> this checkout")
        print("| n x h x w x c | kernel | earlier | now | ratio |")
        print("|---|---|---|---|---|")
        for shape in SHAPES:
            for name, call in calls(shape, args.threads).items():
                if not hasattr(earlier, name):
                    continue
                if not np.array_equal(call(earlier), call(current)):
                    raise SystemExit(f"{name} on {shape}: the outputs differ")
                before = fastest_us(lambda call=call: call(earlier), args.calls)
                now = fastest_us(lambda call=call: call(current), args.calls)
                label = "x".join(map(str, shape))
                print(f"| {label} | {name[3:]} | {before:,.0f} | {now:,.0f} | {before / now:.1f}x |")


if __name__ == "__main__":
    main()
