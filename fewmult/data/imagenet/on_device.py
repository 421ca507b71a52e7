"""``dataset.decode=device``: JPEGs decoded on the training device (nvJPEG on a GPU), so that a
machine with few CPUs per GPU still feeds it.

The workers then only read each file and its header and make the image's random draws
(:func:`fewmult.data.imagenet.decode.train_draws`, the same as when they decode, so every image is
cropped, shifted and mirrored alike); the training process decodes the whole batch in one call and
crops, resizes and mirrors each image on the device with torchvision's tensor functions (bilinear,
antialiased). The pixels are those of torchvision's tensor transforms, not PIL's: on a CPU, within
one grey level of ``dataset.jpeg_draft=false`` (tested); nvJPEG's inverse DCT may round otherwise.
``dataset.jpeg_draft`` does not apply (the device decodes at full size).

Files that are not baseline RGB JPEGs (ImageNet's training folder holds a few CMYK JPEGs and a PNG
named ``.JPEG``) are decoded in the worker as with ``dataset.decode=workers`` and only copied to the
device. The decoder is TorchCodec's ``decode_jpeg`` where TorchCodec is installed, else
torchvision's (deprecated since torchvision 0.29 in TorchCodec's favour; same call).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from fewmult.data.imagenet.decode import resized_shape, train_draws
from fewmult.errors import UserError


@dataclass(frozen=True)
class Plan:
    """What the device does with one decoded image. ``crop``: training: the box (left, top, width,
    height) and the mirror (0/1); evaluation: the resized width and height and three zeros.
    ``shift``: the RGB lighting shift, zeros for none."""

    crop: tuple[int, int, int, int, int]
    shift: tuple[float, float, float]


def on_device(image: Image.Image) -> bool:
    """Whether the device decodes this file: a JPEG in RGB (YCbCr); others are decoded in the worker."""
    return image.format == "JPEG" and image.mode == "RGB"


def encoded(path: str, train: bool, key: int, resize: int, lighting_std: float) -> tuple[bytes, Plan] | None:
    """``path``'s bytes and plan, or None where the worker must decode it (:func:`on_device`)."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if not on_device(image):
            return None
        width, height = image.size
    if train:
        draws = train_draws(width, height, key, lighting_std)
        crop = (*draws.box, int(draws.flip))
        shift = (0.0, 0.0, 0.0) if draws.shift is None else tuple(float(s) for s in draws.shift)
    else:
        crop, shift = (*resized_shape(width, height, resize), 0, 0, 0), (0.0, 0.0, 0.0)
    return data, Plan(crop, shift)


@dataclass
class EncodedBatch:
    """A batch for the device to decode. ``files``: the encoded files of the planned images end to
    end, one tensor (one shared-memory block from the worker, not one per image), ``ends`` where each
    ends; ``images``: per image, its :class:`Plan` or the pixels (HWC uint8) a worker decoded;
    ``paths``: to name a damaged file."""

    files: torch.Tensor
    ends: list[int]
    images: list[Plan | torch.Tensor]
    labels: torch.Tensor
    paths: list[str]
    train: bool
    size: int

    def encoded(self) -> list[torch.Tensor]:
        """Each planned image's file, a 1-D uint8 view of ``files``."""
        starts = [0, *self.ends][: len(self.ends)]
        return [self.files[a:b] for a, b in zip(starts, self.ends, strict=True)]


def collate(items: Sequence[tuple], train: bool, size: int) -> EncodedBatch:
    """The worker's items (``((bytes, Plan) or pixels, label, path)``) as one :class:`EncodedBatch`."""
    images, labels, paths = zip(*items, strict=True)
    files = [image[0] for image in images if isinstance(image, tuple)]
    ends = list(itertools.accumulate(len(f) for f in files))
    joined = (
        torch.frombuffer(bytearray(b"".join(files)), dtype=torch.uint8)
        if files
        else torch.empty(0, dtype=torch.uint8)
    )
    planned = [image[1] if isinstance(image, tuple) else image for image in images]
    return EncodedBatch(joined, ends, planned, torch.tensor(labels), list(paths), train, size)


def jpeg_decoder() -> Callable:
    """TorchCodec's ``decode_jpeg`` where installed (torchvision's successor for images), else
    torchvision's; both take a list of encoded tensors on the CPU, ``mode`` and ``device``."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError:
        from torchvision.io import decode_jpeg
    return decode_jpeg


def check_decoder(device: torch.device) -> None:
    """Decode a tiny JPEG on ``device`` once, before training: a decoder that cannot (a torchvision
    built without nvJPEG, a driver too old) is named with the fix instead of blaming the first image."""
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="JPEG")
    data = torch.frombuffer(bytearray(image.getvalue()), dtype=torch.uint8)
    try:
        jpeg_decoder()([data], mode="RGB", device=device)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"dataset.decode=device: JPEGs cannot be decoded on {device} here ({reason}). Decode them in "
            "the DataLoader's workers with dataset.decode=workers, or install a torchvision (or TorchCodec) "
            "built with CUDA for this driver."
        ) from None


def _decode_all(files: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """The CHW uint8 images of the encoded ``files`` on ``device``, in one call; a damaged file is
    named (the batched call does not say which one failed)."""
    if not files:
        return []
    decode = jpeg_decoder()
    try:
        return decode(files, mode="RGB", device=device)
    except Exception:
        for file, path in zip(files, paths, strict=True):
            try:
                decode(file, mode="RGB", device=device)
            except Exception as exc:
                raise UserError(
                    f"cannot decode {path} on {device} ({type(exc).__name__}: {exc}). The file is damaged: "
                    "replace it with a good copy, or delete it, and run again."
                ) from None
        raise


def _transformed(image: torch.Tensor, crop: tuple[int, ...], train: bool, size: int) -> torch.Tensor:
    """One decoded CHW image cropped and resized (training, then mirrored) or resized and cut to
    its centre (evaluation), as its plan says."""
    if train:
        left, top, w, h, flip = crop
        out = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        return F.horizontal_flip(out) if flip else out
    new_w, new_h = crop[:2]
    return F.center_crop(F.resize(image, [new_h, new_w], antialias=True), [size, size])


def decode_batch(batch: EncodedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 NHWC images, labels) on ``device``: what a worker-decoded batch is after its transfer."""
    which = [i for i, item in enumerate(batch.images) if isinstance(item, Plan)]
    plans = [batch.images[i] for i in which]
    decoded = _decode_all(batch.encoded(), [batch.paths[i] for i in which], device)
    out = torch.empty((len(batch.images), batch.size, batch.size, 3), dtype=torch.uint8, device=device)
    for i, plan, image in zip(which, plans, decoded, strict=True):
        out[i] = _transformed(image, plan.crop, batch.train, batch.size).permute(1, 2, 0)
    for i, item in enumerate(batch.images):
        if not isinstance(item, Plan):  # decoded in the worker: its final pixels
            out[i] = item.to(device, non_blocking=True)
    shifts = torch.tensor([plan.shift for plan in plans], dtype=torch.float32)
    if batch.train and shifts.any():  # the lighting noise, added and truncated as the workers do
        index = torch.tensor(which, device=device)
        lit = out[index].float().add_(shifts.to(device, non_blocking=True).view(-1, 1, 1, 3))
        out[index] = lit.clamp_(0, 255).to(torch.uint8)
    return out, batch.labels.to(device, non_blocking=True)
