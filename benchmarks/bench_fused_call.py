"""One call of a fused function: its package compiled ahead of time, torch.compile, and eager.

A package must not cost a training step what it saves a launch: a call through
:func:`fewmult.quant.fusion.run_fused` is timed with ``FEWMULT_AOT=1`` and ``=0`` (each warmed up
first, so compiling is not timed) and against the function called eagerly, for BinaryConnect's sign
(elementwise) and LAB's scale (a reduction), on 10 and on 2^20 elements; best of 5 rounds of 200
calls, in one process.

Run: ``python -m benchmarks.bench_fused_call``.
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable

import torch

from fewmult.quant.fusion import run_fused
from fewmult.quant.quantizers import _lab_alpha, _scaled_sign


def seconds(call: Callable[[], object]) -> float:
    call()
    return min(timeit.repeat(call, number=200, repeat=5)) / 200


def main() -> None:
    print(f"threads: {torch.get_num_threads()}")
    print("| function | elements | package | torch.compile | eager |")
    print("|---|---|---|---|---|")
    for n in (10, 1 << 20):
        w, v = torch.randn(n), torch.rand(n)
        for fn, args in ((_scaled_sign, (w, torch.tensor(0.5))), (_lab_alpha, (w, v, 1e-8))):
            times = []
            for setting in ("1", "0"):
                os.environ["FEWMULT_AOT"] = setting
                times.append(seconds(lambda fn=fn, args=args: run_fused(fn, *args)))
            times.append(seconds(lambda fn=fn, args=args: fn(*args)))
            print(
                f"| {fn.__name__} | {n} | " + " | ".join(f"{t * 1e6:.0f} us" for t in times) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
