"""Bits packed eight to a byte, in NumPy's ``packbits`` order (the first element is the top bit).

The layout of ``fewmult.export``'s files, which NumPy reads back with
``numpy.unpackbits(data, count=n)`` (fewmult/packed_forward.py).
"""

from __future__ import annotations

import torch

_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """A boolean tensor (any shape, read flat) as ``ceil(n / 8)`` uint8, zero-padded at the end."""
    flat = bits.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    weights = torch.tensor(_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.int32).to(torch.uint8)
