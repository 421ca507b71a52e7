"""Images per second of an exported network: compiled runtime, NumPy reference, PyTorch float32.

The three run the same file on the same inputs with the same number of threads, interleaved round
by round (so a noisy machine slows all of them alike); each number is the median over rounds. Each
timing starts after a pause in which the threads of the one before go idle: NumPy's BLAS threads
keep spinning for about 0.1 s after a call, and the runtime measured 158 images/s right after the
NumPy reference against 594 after a 0.2 s pause (Hou et al.'s CIFAR-10 CNN, batch 1).
PyTorch evaluates the file's network as a float32 model would (weights decoded to float32,
``torch.nn.functional``), the baseline a user has without the runtime.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fewmult.packed_forward import PackedNetwork, all_ops
from fewmult.runtime.network import CompiledNetwork


def torch_float32(network: PackedNetwork) -> Callable[[np.ndarray], Any]:
    """The file's network in PyTorch float32: a function of a batch (imports torch when called)."""
    import torch
    import torch.nn.functional as F

    def per_unit(name: str, h: torch.Tensor) -> torch.Tensor:
        a = torch.from_numpy(network.arrays[name].astype(np.float32))
        return a.reshape(1, -1, *([1] * (h.dim() - 2)))

    def apply(op: dict[str, Any], h: torch.Tensor) -> torch.Tensor:
        kind = op["op"]
        if kind in ("linear", "conv2d"):
            w = weights[id(op)]
            b = (
                None
                if op["bias"] is None
                else torch.from_numpy(network.arrays[op["bias"]].astype(np.float32))
            )
            if kind == "linear":
                return F.linear(h, w, b)
            return F.conv2d(h, w, b, op["stride"], op["padding"], op["dilation"], op["groups"])
        if kind == "flatten":
            return h.flatten(1)
        if kind == "maxpool2d":
            return F.max_pool2d(h, op["size"], op.get("stride"), op.get("padding", 0))
        if kind == "affine":
            return h * per_unit(op["scale"], h) + per_unit(op["shift"], h)
        if kind == "sign_threshold":
            t, negative = per_unit(op["threshold"], h), per_unit(op["negative"], h).bool()
            return torch.where(torch.where(negative, h <= t, h >= t), 1.0, -1.0)
        if kind == "relu":
            return F.relu(h)
        if kind == "hardtanh":
            return F.hardtanh(h)
        if kind == "residual":
            return run(op["body"], h) + run(op["shortcut"], h)
        if kind == "avgpool2d":
            return F.avg_pool2d(h, op["size"], ceil_mode=True, count_include_pad=False)
        if kind == "channel_pad":
            s = op["stride"]
            return F.pad(h[:, :, ::s, ::s], (0, 0, 0, 0, op["before"], op["after"]))
        if kind == "rprelu":
            shifted = h - per_unit(op["shift_in"], h)
            return torch.where(shifted > 0, shifted, per_unit(op["slope"], h) * shifted) + per_unit(
                op["shift_out"], h
            )
        if kind == "global_avgpool":
            return h.mean(dim=(2, 3))
        raise ValueError(f"the PyTorch baseline runs image and vector nets, not {kind!r}")

    def run(ops: list[dict[str, Any]], h: torch.Tensor) -> torch.Tensor:
        for op in ops:
            h = apply(op, h)
        return h

    weights = {
        id(op): torch.from_numpy(network.weight(op["weight"]).astype(np.float32))
        for op in all_ops(network.layers)
        if op["op"] in ("linear", "conv2d")
    }

    def forward(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return run(network.layers, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    return forward


def _seconds_per_call(fn: Callable[[], object], budget: float) -> float:
    """Mean time of ``fn`` over as many calls as fit in about ``budget`` seconds (at least one)."""
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls


def images_per_second(
    path: str,
    x: np.ndarray,
    batches: list[int],
    threads: int,
    rounds: int = 5,
    budget: float = 0.2,
    settle: float = 0.2,
) -> list[dict[str, float]]:
    """One row per batch size: images/s of ``runtime``, ``numpy`` and ``torch`` and the runtime's
    ratio to each, on the first examples of ``x``; where the runtime runs AMX tiles, also of its
    AVX-512 kernels (``avx512``), so that the two compare in one run."""
    import torch

    torch.set_num_threads(threads)
    runtime, reference = CompiledNetwork(path, threads=threads), PackedNetwork(path)
    vectors = CompiledNetwork(path, threads=threads, isa="avx512") if runtime.isa == "amx" else None
    baseline = torch_float32(reference)
    rows = []
    for batch in batches:
        xb = np.ascontiguousarray(x[:batch], dtype=np.float32)
        contestants = {
            "runtime": lambda xb=xb: runtime.forward(xb),
            **({"avx512": lambda xb=xb: vectors.forward(xb)} if vectors else {}),
            "numpy": lambda xb=xb: reference.forward(xb),
            "torch": lambda xb=xb: baseline(xb),
        }
        for fn in contestants.values():
            fn()  # warm-up: decoded weights, first-call allocations
        times: dict[str, list[float]] = {name: [] for name in contestants}
        for _ in range(rounds):
            for name, fn in contestants.items():
                time.sleep(settle)
                times[name].append(_seconds_per_call(fn, budget))
        rate = {name: len(xb) / statistics.median(t) for name, t in times.items()}
        rows.append(
            {
                "batch": len(xb),
                **{f"{name}_images_per_s": r for name, r in rate.items()},
                "vs_torch": rate["runtime"] / rate["torch"],
                "vs_numpy": rate["runtime"] / rate["numpy"],
            }
        )
    return rows


def format_rows(rows: list[dict[str, float]], threads: int, isa: str) -> str:
    avx512 = bool(rows) and "avx512_images_per_s" in rows[0]
    lines = [
        f"images/s, {threads} thread(s), kernels: {isa}",
        f"{'batch':>5}  {'runtime':>10}  " + (f"{'AVX-512':>10}  " if avx512 else "") + f"{'NumPy ref':>10}  "
        f"{'PyTorch fp32':>12}  {'vs PyTorch':>10}  {'vs NumPy':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['batch']:>5}  {r['runtime_images_per_s']:>10.0f}  "
            + (f"{r['avx512_images_per_s']:>10.0f}  " if avx512 else "")
            + f"{r['numpy_images_per_s']:>10.0f}  {r['torch_images_per_s']:>12.0f}  "
            f"{r['vs_torch']:>9.1f}x  {r['vs_numpy']:>7.1f}x"
        )
    return "\n".join(lines)
