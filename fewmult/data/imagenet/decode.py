"""Decoding one JPEG into the network's input size, in a ``DataLoader`` worker.

Training: the random resized crop of Szegedy et al. (GoogLeNet; torchvision's
``RandomResizedCrop``: a box of 8-100 % of the image's area and aspect ratio 3/4-4/3, resized to
``size`` x ``size``) and a horizontal flip with probability 1/2. Evaluation: the shorter side resized
to ``resize``, the centre ``size`` x ``size`` cut out. ``dataset.lighting``: Bi-Real's PCA lighting
noise (:func:`lighting`; the authors' code, off by default). Both
return uint8 HWC arrays: the batch goes to the device four times smaller than as float, and is
normalized there (:mod:`.datamodule`).

The random draws are a function of (seed, epoch, image index) alone, not of the worker that decodes
the image nor of the DDP rank that trains on it, so a run resumed inside an epoch, or on another
number of processes, crops every image as the uninterrupted run did.

``draft``: let libjpeg decode at 1/2, 1/4 or 1/8 scale (its DCT scaling) when the box is still at
least ``size`` pixels wide and tall at that scale. A 500 x 375 ImageNet image whose crop will be
shrunk threefold then decodes at half size, in about a third of the time. The pixels differ from a
full decode followed by the resize (both are low-pass reductions); ``dataset.jpeg_draft=false`` gives
torchvision's pixels exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)  # fraction of the image's area
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
# ImageNet's RGB principal components (AlexNet's lighting noise), as Bi-Real's code has them
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def draw_key(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's draws in one epoch."""
    return ((seed * 1_000_003 + epoch) * 100_000_007 + index) * 2 + 1


def random_resized_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, box width, box height): up to 10 tries at a random area and aspect ratio, then
    the largest centred box of a ratio within the limits (torchvision's algorithm)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(*LOG_RATIO))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _decoded(image: Image.Image, need: tuple[int, int] | None) -> tuple[Image.Image, float, float]:
    """``image`` in RGB, decoded at the smallest DCT scale whose size is at least ``need`` (None: full
    size), and the horizontal and vertical scales it was decoded at."""
    width, height = image.size
    if need is not None and image.format == "JPEG":
        image.draft("RGB", need)
    image = image.convert("RGB")
    return image, image.size[0] / width, image.size[1] / height


def lighting_shift(alpha: np.ndarray) -> np.ndarray:
    """AlexNet's PCA lighting noise as Bi-Real's code computes it (its ``Lighting``): the RGB shift
    ``eigvec @ (alpha * eigval)``, to be added to 0-255 pixel values (:func:`shifted`)."""
    return PCA_EIGVEC @ (alpha.astype(np.float32) * PCA_EIGVAL)


def shifted(pixels: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``shift`` added to the uint8 pixels, clipped to [0, 255] and cast back to uint8 (truncation),
    as Bi-Real's code does. The eigenvalues are those of pixels in [0, 1] and the shift is added to
    0-255 values, so it stays below 1 in practice: a channel whose shift is negative loses 1 where
    it is above 0, the others are unchanged. Reproduced as the authors' code does it."""
    return np.clip(pixels + shift, 0, 255).astype(np.uint8)


def lighting(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``pixels`` with the lighting noise of ``alpha`` (:func:`lighting_shift`, :func:`shifted`)."""
    return shifted(pixels, lighting_shift(alpha))


@dataclass(frozen=True)
class TrainDraws:
    """One image's random draws in one epoch: the crop box (left, top, width, height, in the
    image's pixels), the RGB lighting shift (None: no lighting noise), the mirror."""

    box: tuple[int, int, int, int]
    shift: np.ndarray | None
    flip: bool


def train_draws(width: int, height: int, key: int, lighting_std: float = 0.0) -> TrainDraws:
    """The draws of :func:`train_image` for an image of this size, in its order (box, lighting,
    flip): decoding in a worker or on the device crops, shifts and mirrors every image alike."""
    rng = random.Random(key)
    box = random_resized_box(width, height, rng)
    alpha = np.array([rng.gauss(0, lighting_std) for _ in range(3)]) if lighting_std else None
    return TrainDraws(box, None if alpha is None else lighting_shift(alpha), rng.random() < 0.5)


def train_image(path: str, size: int, key: int, draft: bool, lighting_std: float = 0.0) -> np.ndarray:
    """A random resized crop of ``path`` at ``size`` x ``size``, with lighting noise of standard
    deviation ``lighting_std`` (0: none, and no draw for it), mirrored half the time."""
    with Image.open(path) as image:
        width, height = image.size
        draws = train_draws(width, height, key, lighting_std)
        left, top, w, h = draws.box
        need = (math.ceil(width * size / w), math.ceil(height * size / h)) if draft else None
        image, sx, sy = _decoded(image, need)
    if sx == sy == 1:
        out = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    else:
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        out = image.resize((size, size), Image.BILINEAR, box=box)
    if draws.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(out)
    return pixels if draws.shift is None else shifted(pixels, draws.shift)


def resized_shape(width: int, height: int, resize: int) -> tuple[int, int]:
    """The size with the shorter side ``resize`` and the ratio kept (torchvision's ``Resize(int)``)."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def eval_image(path: str, size: int, resize: int, draft: bool) -> np.ndarray:
    """``path`` with its shorter side resized to ``resize``, then its centre ``size`` x ``size``."""
    with Image.open(path) as image:
        new_w, new_h = resized_shape(*image.size, resize)
        image, _, _ = _decoded(image, (new_w, new_h) if draft else None)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return np.asarray(image.crop((left, top, left + size, top + size)))
