"""How close the AMX products come to this machine's tile limit.

A probe compiled here (C, with the system's ``cc``) times, on one core, int8 tile products
(``TDPBUUD``: 16 x 64 bytes times 64 x 16 bytes into 16 x 16 int32 sums) back to back on four sums
tiles with operands already in tiles, then the same products in the runtime's 2 x 2 form with every
operand tile loaded from L1 (two activation and two weight tiles a step). That is the most an int8
tile product of this core could do, and what it does when its operands must be loaded. The runtime's
AMX products (``amx_sign_gemm``, ``amx_fixed_gemm``) are then timed on Hou et al.'s MLP at batch 64
(its first layer of 784 inputs as three byte planes, and a 2048 x 2048 sign layer) and reported
against the tile products they need per thread at the loaded rate.

Run: ``python -m benchmarks.bench_amx_limit`` (a CPU and OS with AMX).
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_amx_kernels import fastest_us
from fewmult.runtime import kernels

PROBE = r"""
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t bytes[16]; uint8_t rows[16]; } config;
__attribute__((target("amx-tile")))
static void configure(void) {
    config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++)
        c.bytes[t] = 64, c.rows[t] = 16;
    _tile_loadconfig(&c);
}
static uint8_t buffer[32768] __attribute__((aligned(64))); /* L1-resident operands, whole cache lines */
/* steps of four tile products: operands in tiles (loaded = 0), or loaded from `buffer` */
__attribute__((target("amx-tile,amx-int8")))
int64_t products(int64_t steps, int loaded) {
    syscall(SYS_arch_prctl, 0x1023, 18); /* ask Linux for the tile state */
    configure();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int t = 0; t < 4; t++) /* tiles 4-7: a constant operand of each product, as _tile_loadd needs */
        switch (t) {
        case 0: _tile_loadd(4, buffer, 64); break;
        case 1: _tile_loadd(5, buffer, 64); break;
        case 2: _tile_loadd(6, buffer, 64); break;
        default: _tile_loadd(7, buffer, 64);
        }
    for (int64_t i = 0; i < steps; i++) {
        const uint8_t *at = buffer + (i % 8) * 4096;
        if (loaded) {
            _tile_loadd(4, at, 64);
            _tile_loadd(6, at + 1024, 64);
        }
        _tile_dpbuud(0, 4, 6);
        if (loaded)
            _tile_loadd(7, at + 2048, 64);
        _tile_dpbuud(1, 4, 7);
        if (loaded)
            _tile_loadd(5, at + 3072, 64);
        _tile_dpbuud(2, 5, 6);
        _tile_dpbuud(3, 5, 7);
    }
    int32_t sums[256];
    _tile_stored(0, sums, 64);
    _tile_release();
    return sums[0];
}
"""


def probe_ns(library: ctypes.CDLL, loaded: bool) -> float:
    """Nanoseconds a tile product on one core, the fastest of five runs of 200,000 products."""
    steps = 50_000
    return fastest_us(lambda: library.products(steps, int(loaded)), 5) * 1e3 / (4 * steps)


def main() -> None:
    if kernels.best_isa() != "amx":
        raise SystemExit(f"no AMX here (best instruction set: {kernels.best_isa()})")
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp) / "probe.c", Path(tmp) / "probe.so"
        source.write_text(PROBE)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        lib = ctypes.CDLL(str(library))
        lib.products.argtypes, lib.products.restype = [ctypes.c_int64, ctypes.c_int], ctypes.c_int64
        bare, loaded = probe_ns(lib, False), probe_ns(lib, True)
    print(f"int8 tile product, one core: {bare:.2f} ns back to back, {loaded:.2f} ns loaded 2 x 2 from L1")
    threads, rng = kernels.max_threads(), np.random.default_rng(0)
    sign_w, float_w = rng.random((2048, 2048)) < 0.5, rng.random((2048, 784)) < 0.5
    sign_tiles, float_tiles = kernels.amx_layout(sign_w, 4), kernels.amx_layout(float_w, 4)
    sign_ones, float_ones = sign_w.sum(1, dtype=np.int32), float_w.sum(1, dtype=np.int32)
    a = kernels.pack_rows(rng.random((64, 2048)) < 0.5)
    x = rng.random((64, 784), dtype=np.float32)
    cases = {
        "amx_sign_gemm 64 x 2048 x 2048": (
            lambda: kernels.amx_sign_gemm(a, sign_tiles, sign_ones, 2048, 2048, threads),
            4 * 32 * 128,  # row tiles x input blocks of 64 x output blocks of 16
        ),
        "amx_fixed_gemm 64 x 784 x 2048": (
            lambda: kernels.amx_fixed_gemm(x, float_tiles, float_ones, None, None, 2048, threads),
            3 * 4 * 13 * 128,  # byte planes x row tiles x input blocks x output blocks
        ),
    }
    for name, (call, tile_products) in cases.items():
        us = fastest_us(call, 30)
        floor = tile_products / threads * loaded / 1e3
        print(f"{name}: {us:.0f} us, {threads} threads; {tile_products} tile products,", end=" ")
        print(f"{floor:.0f} us at the loaded rate ({floor / us:.0%})")


if __name__ == "__main__":
    main()
