"""Training-time augmentation on whole batches on the training device, without per-image Python.

``crop_flip`` is the CIFAR augmentation of the modern binary-network recipes (He et al.'s, in
IR-Net's code ``RandomHorizontalFlip`` + ``RandomCrop(32, padding=4)``): pad every image with 4
black pixels on each side, take a random 32 x 32 window, mirror it with probability 1/2. The draws
are a pure function of (seed, epoch, rank, step) through fewmult's counter-based hash
(:func:`fewmult.quant.rng.hashed_uniform`): the same numbers on CPU and GPU, and a run resumed from
a checkpoint augments every later batch exactly as the uninterrupted run did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewmult.errors import UserError
from fewmult.quant.rng import hashed_uniform

AUGMENTATIONS = ("none", "crop_flip")


def batch_key(seed: int, epoch: int, rank: int, step: int) -> int:
    """The hash key of one training batch (distinct for every seed, epoch, DDP rank and step)."""
    return ((seed * 1_000_003 + epoch) * 1_009 + rank) * 100_003 + step


class CropFlip:
    """Random crop of the ``pad``-padded image at its own size, then a horizontal flip with p = 1/2.

    ``fill``: the value of a black pixel after the dataset's preprocessing, per channel (what the
    padding holds, as torchvision pads the raw image before normalizing). Offsets are uniform over
    ``0..2 pad`` in each direction, independent of each other and of the flip.
    """

    def __init__(self, pad: int = 4) -> None:
        if not isinstance(pad, int) or pad < 1:
            raise UserError(f"dataset.augment_pad must be a positive integer, got {pad!r}.")
        self.pad = pad

    def __call__(self, x: torch.Tensor, fill: torch.Tensor, key: int) -> torch.Tensor:
        n, c, h, w = x.shape
        p, span = self.pad, 2 * self.pad + 1
        u = hashed_uniform(torch.empty(3, n, device=x.device), key)
        dy, dx = (u[:2] * span).long().clamp_(max=span - 1)
        flip = u[2] < 0.5
        fill = fill.to(device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        padded = F.pad(x - fill, (p, p, p, p)) + fill
        rows = dy[:, None] + torch.arange(h, device=x.device)
        across = torch.arange(w, device=x.device)
        cols = dx[:, None] + torch.where(flip[:, None], w - 1 - across, across)
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def make_augmentation(name: str, pad: int = 4) -> CropFlip | None:
    if name not in AUGMENTATIONS:
        raise UserError(f"dataset.augment must be one of {', '.join(AUGMENTATIONS)}; got {name!r}.")
    return CropFlip(pad) if name == "crop_flip" else None
