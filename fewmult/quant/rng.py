"""Cheap random numbers for the stochastic quantizers and QBP: a counter-based hash, one fused loop.

``torch.rand_like`` over the 2.9 M weights of the MNIST MLP costs about 7 ms on a 2-core CPU, a
third of a full-precision training step. Stochastic BinaryConnect, ternary connect and QBP need
one uniform number per element per step, so that alone breaks their overhead budget.

Here the uniform for element ``i`` at draw ``k`` of a stream with seed ``s`` is
``hash(i, hash(s, k)) >> 8`` scaled to [0, 1): 24 random bits, the same resolution as
``torch.rand`` in float32, so ``P(u < p)`` is ``p`` to within 2^-24. The hash is Chris Wellons'
"lowbias32" integer mixer. Compiled (:func:`fewmult.quant.fusion.run_fused`), hash, comparison
and scaling are one loop over the tensor (about 0.5 ms for 2.9 M weights). Without a working
compiler the quantizers fall back to ``torch.rand``, with a warning.

A :class:`RandomStream` keeps its seed and draw counter in buffers: checkpoints resume the stream,
and DDP ranks, seeded alike, draw the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn

MASK = 0xFFFFFFFF


def _int32(c: int) -> int:
    """The int32 whose bits are the 32-bit value ``c``."""
    return c - (1 << 32) if c >= 1 << 31 else c


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of the 32-bit values held in an int32 tensor (``>>`` copies the sign bit)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on the 32-bit values of an int32 tensor: int32 products wrap modulo 2^32 (in
    eager, in inductor's vectorized loops and in Triton; tested against a NumPy uint32 reference),
    so nothing is masked, and a vector register holds twice as many lanes as in int64."""
    x = x ^ _shr(x, 16)
    x = x * _int32(0x7FEB352D)
    x = x ^ _shr(x, 15)
    x = x * _int32(0x846CA68B)
    return x ^ _shr(x, 16)


def _key32(key: torch.Tensor | int) -> torch.Tensor:
    """The low 32 bits of an int64 key (a tensor or a Python int), as int32."""
    low = torch.as_tensor(key, dtype=torch.int64) & MASK
    return torch.where(low >= 1 << 31, low - (1 << 32), low).to(torch.int32)


def hashed_uniform(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers shaped like ``like``, a pure function of ``key`` (an int64 scalar)."""
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int32)
    x = _mix32((index * _int32(0x9E3779B1)) ^ _mix32(_key32(key)))
    return _shr(x, 8).to(torch.float32).mul(1.0 / 16777216).view(like.shape)


class RandomStream(nn.Module):
    """A seed and a counter; every :meth:`next_key` returns a fresh key for :func:`hashed_uniform`.

    The seed is drawn from torch's global generator at construction, so ``seed=`` in the config
    makes runs repeat.
    """

    def __init__(self) -> None:
        super().__init__()
        seed = int(torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("rng_seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("rng_counter", torch.tensor(0, dtype=torch.int64))

    def next_key(self) -> torch.Tensor:
        self.rng_counter.add_(1)
        return _mix32(_key32(self.rng_seed * 0x85EBCA6B + self.rng_counter)).to(torch.int64) & MASK
