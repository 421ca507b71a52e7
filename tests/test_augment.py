"""On-device crop-and-flip augmentation: each output is a padded crop (mirrored or not) of its image,
offsets and flips are uniform and independent, the draws are a function of (seed, epoch, rank,
step), and the padding is a black pixel as the dataset's preprocessing maps it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewmult.data.augment import CropFlip, batch_key
from fewmult.data.cifar10 import CIFAR10Data
from fewmult.data.loader import TensorBatches
from fewmult.errors import UserError
from tests import fakedata

PAD, SIZE = 4, 8


def candidates(image: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Every crop of the padded image, unmirrored then mirrored: (2 * 81, C, H, W), by slicing."""
    _, h, w = image.shape
    padded = F.pad(image - fill, (PAD, PAD, PAD, PAD)) + fill
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)]
    return torch.stack(crops + [crop.flip(-1) for crop in crops])


def which_candidate(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """For every output, the index of the one candidate it equals (fails if none or several)."""
    matches = (out[:, None] == candidates(image)[None]).flatten(2).all(-1)
    assert (matches.sum(1) == 1).all(), "an output is not exactly one crop of its padded image"
    return matches.float().argmax(1)


def test_every_output_is_one_padded_crop_of_its_own_image_mirrored_or_not():
    torch.manual_seed(0)
    x = torch.randn(64, 3, SIZE, SIZE)
    fill = torch.tensor([-1.0, 0.5, 2.0])  # a black pixel after a per-channel preprocessing
    out = CropFlip(PAD)(x, fill, key=batch_key(0, 0, 0, 0))
    for image, result in zip(x, out, strict=True):
        cands = torch.stack([candidates(image[i : i + 1], float(fill[i])) for i in range(3)], 1)[:, :, 0]
        assert sum(bool(torch.equal(result, cand)) for cand in cands) == 1


def test_offsets_and_flips_are_uniform_and_independent():
    """20,000 draws of one image: the 162 (dy, dx, flip) cells each expected 123.5 times; the chi-square
    bound 250 (161 degrees of freedom) is beyond the 99.99th percentile, the flip rate within 6 sigma."""
    image = torch.arange(1.0, 1 + SIZE * SIZE).view(1, SIZE, SIZE)  # distinct pixels
    x = image.expand(20_000, 1, SIZE, SIZE).contiguous()
    cell = which_candidate(CropFlip(PAD)(x, torch.zeros(1), key=batch_key(0, 3, 0, 7)), image)
    counts = torch.bincount(cell, minlength=162).float()
    expected = 20_000 / 162
    assert ((counts - expected) ** 2 / expected).sum() < 250
    flip_rate = (cell >= 81).float().mean()
    assert abs(flip_rate - 0.5) < 6 * (0.25 / 20_000) ** 0.5


def test_draws_are_a_function_of_seed_epoch_rank_and_step():
    torch.manual_seed(0)
    x, y = torch.randn(40, 1, SIZE, SIZE), torch.arange(40)

    def epoch_batches(seed: int, epoch: int, rank: int = 0) -> list[torch.Tensor]:
        loader = TensorBatches(
            x, y, 10, shuffle=True, drop_last=True, seed=seed, rank=rank, world_size=2, augment=CropFlip(PAD)
        )
        loader.set_epoch(epoch)
        return [b for b, _ in loader]

    first = epoch_batches(0, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(0, 3), strict=True))  # relaunched
    for other in (epoch_batches(0, 4), epoch_batches(1, 3), epoch_batches(0, 3, rank=1)):
        assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0], x[:10])  # it did augment


def test_the_padding_is_a_black_pixel_after_the_preprocessing(tmp_path, monkeypatch):
    fakedata.register_cifar10_md5(monkeypatch, fakedata.write_cifar10(tmp_path, per_batch=12, n_test=4))
    common = {"name": "cifar10", "root": str(tmp_path), "download": False, "val_size": 6, "batch_size": 6}
    dm = CIFAR10Data(**common, preprocess="standardize", augment="crop_flip")
    raw = dm.raw()["train_x"].float() / 255  # all 60 training images: the statistics' sample
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3), unbiased=False)
    assert torch.allclose(dm.pad_fill(), -mean / std, atol=1e-5)
    standardized = (raw[:54] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # less the 6 validation ones
    assert torch.allclose(dm.load().train_x, standardized, atol=1e-5)
    with pytest.raises(UserError, match=r"dataset\.preprocess=none or standardize"):
        CIFAR10Data(**common, preprocess="gcn_zca", augment="crop_flip")
    with pytest.raises(UserError, match=r"dataset\.augment must be one of none, crop_flip"):
        CIFAR10Data(**common, augment="flip")
