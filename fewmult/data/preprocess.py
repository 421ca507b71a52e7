"""The papers' input preprocessing, fit on the training files and applied to every split.

* ``center``: subtract the per-pixel training mean (MNIST, pylearn2 ``center=True``).
* ``gcn_zca``: global contrast normalization, then ZCA whitening (CIFAR-10, pylearn2
  ``make_cifar10_gcn_whitened.py``: GCN scale 55, ZCA filter_bias 0.1).
* ``pylearn2_gcn_lcn``: what both papers' SVHN inputs went through, pylearn2's
  ``svhn_preprocessing.py`` as it runs: global contrast normalization at pylearn2's default scale 1,
  then ``LeCunLCN((32, 32))``, which normalizes channel 0 (red) only (its ``transform`` returns
  inside the loop over channels) and divides by ``sqrt(G * x^2)`` of the uncentred image, floored
  by that map's per-image mean and 1e-4 (:func:`pylearn2_lcn`).
* ``gcn_lcn``: GCN at scale 55, then local contrast normalization of every channel with the
  divisor computed from the centred image (what the LCN is usually taken to be; not the papers').
* ``none``: pixels scaled to [0, 1].

Every statistic is fit on the whole training file set, before the validation split is carved,
as pylearn2 does for ZCA. (pylearn2's MNIST centering subtracts each split's own mean; fewmult
uses the training mean for every split, so the test set is never used to transform itself.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewmult.errors import UserError


def center(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    return [train - mean] + [x - mean for x in others]


def standardize(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-channel mean and standard deviation of the training images (the modern CIFAR recipes'
    ``Normalize``, with the dataset's own statistics): every pixel of a channel mapped alike."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return [(x - mean) / std for x in [train, *others]]


def global_contrast_normalize(
    x: torch.Tensor, scale: float = 55.0, min_divisor: float = 1e-8
) -> torch.Tensor:
    """Per image: subtract its mean, divide by its L2 norm, multiply by ``scale`` (pylearn2 defaults)."""
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True)
    norm = torch.where(norm < min_divisor, torch.ones_like(norm), norm)
    return (scale * flat / norm).reshape(x.shape)


def zca(train: torch.Tensor, others: list[torch.Tensor], filter_bias: float = 0.1) -> list[torch.Tensor]:
    """ZCA whitening as pylearn2's ``ZCA``: P = V diag((eig + bias)^-1/2) V^T of cov(train)."""
    flat = train.reshape(len(train), -1).double()
    mean = flat.mean(dim=0, keepdim=True)
    centered = flat - mean
    cov = centered.T @ centered / len(flat) + filter_bias * torch.eye(flat.shape[1], dtype=torch.float64)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    whiten = (eigvecs * eigvals.rsqrt()) @ eigvecs.T

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = (x.reshape(len(x), -1).double() - mean) @ whiten
        return out.float().reshape(x.shape)

    return [apply(train)] + [apply(x) for x in others]


def gaussian_kernel(size: int = 7, sigma: float = 2.0) -> torch.Tensor:
    """pylearn2's ``gaussian_filter``: a normalized 2-D Gaussian centred on the middle pixel."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (g / g.sum()).float()


def lecun_lcn(x: torch.Tensor, size: int = 7, threshold: float = 1e-4, chunk: int = 4096) -> torch.Tensor:
    """Local contrast normalization per channel (pylearn2 ``LeCunLCN``), in chunks to bound memory."""
    channels = x.shape[1]
    kernel = gaussian_kernel(size).expand(channels, 1, size, size).contiguous()
    out = torch.empty_like(x)
    for start in range(0, len(x), chunk):
        batch = x[start : start + chunk]
        centered = batch - F.conv2d(batch, kernel, padding=size // 2, groups=channels)
        local_std = F.conv2d(centered.square(), kernel, padding=size // 2, groups=channels).sqrt()
        image_mean = local_std.mean(dim=(1, 2, 3), keepdim=True)
        divisor = torch.maximum(local_std, image_mean).clamp_min(threshold)
        out[start : start + chunk] = centered / divisor
    return out


def pylearn2_lcn(x: torch.Tensor, channel: int = 0, size: int = 7, threshold: float = 1e-4) -> torch.Tensor:
    """pylearn2's ``lecun_lcn`` on one channel (the others are returned unchanged).

    ``y = (x - G * x) / max(sqrt(G * x^2), mean over the image of sqrt(G * x^2), threshold)``, ``G``
    the 7x7 Gaussian of :func:`gaussian_kernel`, zero padding (Theano's full convolution, cropped).
    """
    out = x.clone()
    plane = x[:, channel : channel + 1]
    kernel = gaussian_kernel(size)[None, None].to(x.dtype)
    centered = plane - F.conv2d(plane, kernel, padding=size // 2)
    denom = F.conv2d(plane.square(), kernel, padding=size // 2).sqrt()
    divisor = torch.maximum(denom, denom.mean(dim=(2, 3), keepdim=True)).clamp_min(threshold)
    out[:, channel : channel + 1] = centered / divisor
    return out


def pylearn2_gcn_lcn(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    return [pylearn2_lcn(global_contrast_normalize(x, scale=1.0)) for x in [train, *others]]


def gcn_zca(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    return zca(global_contrast_normalize(train), [global_contrast_normalize(x) for x in others])


def gcn_lcn(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    return [lecun_lcn(global_contrast_normalize(x)) for x in [train, *others]]


def identity(train: torch.Tensor, others: list[torch.Tensor]) -> list[torch.Tensor]:
    return [train, *others]


PREPROCESSORS = {
    "none": identity,
    "center": center,
    "standardize": standardize,
    "gcn_zca": gcn_zca,
    "gcn_lcn": gcn_lcn,
    "pylearn2_gcn_lcn": pylearn2_gcn_lcn,
}
EXPENSIVE = {"gcn_zca", "gcn_lcn", "pylearn2_gcn_lcn"}
AUGMENTABLE = ("none", "standardize")  # a black pixel is one value per channel


def require_augmentable(preprocess: str, allowed: tuple[str, ...] = AUGMENTABLE) -> None:
    """Refuse augmentation where its black padding has no single preprocessed value per channel."""
    if preprocess not in allowed:
        raise UserError(
            f"dataset.augment pads images with black pixels, which dataset.preprocess={preprocess} "
            f"maps differently at every position; use dataset.preprocess={' or '.join(allowed)}."
        )


def get_preprocessor(name: str):
    if name not in PREPROCESSORS:
        raise UserError(
            f"unknown dataset.preprocess={name!r}; choose one of: {', '.join(sorted(PREPROCESSORS))}."
        )
    return PREPROCESSORS[name]


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float32 in [0, 1]."""
    return images_uint8.float().div_(255.0)
