"""Images per second of the ImageNet training pipeline against a plain torchvision ``ImageFolder``.

A folder of real JPEG files of ImageNet's sizes (300-500 x 250-500 pixels, quality 90, smooth
content under noise: about ImageNet's bytes per pixel) is generated once. Both pipelines read it in
``DataLoader`` workers and yield normalized float batches of 224 x 224 random resized crops, flipped
half the time:

* baseline: ``torchvision.datasets.ImageFolder`` with ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` in the workers (persistent workers);
* fewmult: ``dataset=imagenet``'s stream (:mod:`fewmult.data.imagenet`): uint8 crops from the workers,
  normalized as whole batches in the training process (on a GPU, on the device), with and without
  JPEG draft decoding (``dataset.jpeg_draft``);
* fewmult with ``dataset.decode=device``: the workers read the files and draw the crops, the
  training process decodes, crops and mirrors on the device (here the CPU: the cost of that path
  where no GPU takes the work; :mod:`benchmarks.gpu_check` measures it on a GPU).

Each is timed over its second epoch (workers started and warm), at every worker count of
``--workers``; rounds alternate the pipelines so machine noise hits all alike; the best worker count
of each is compared by its median.

Run: ``python -m benchmarks.bench_imagenet_pipeline`` (``--images``, ``--rounds``, ``--workers``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from fewmult.data.imagenet import ImageFolderData
from fewmult.data.imagenet.datamodule import IMAGENET_MEAN, IMAGENET_STD

BATCH = 64


def write_jpegs(folder: Path, images: int, classes: int = 8, seed: int = 0) -> None:
    """``images`` JPEGs of ImageNet's sizes in ``folder/{train,val}/<class>/`` (val: one per class)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            where = folder / split / f"n{i % classes:08d}"
            where.mkdir(parents=True, exist_ok=True)
            w, h = int(rng.integers(300, 501)), int(rng.integers(250, 501))
            coarse = rng.uniform(0, 255, size=(h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
            pixels = np.clip(smooth + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(where / f"{i}.JPEG", quality=90)


def torchvision_loader(folder: Path, workers: int) -> DataLoader:
    pipeline = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder / "train"), transform=pipeline)
    return DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def torchvision_epochs(folder: Path, workers: int) -> Callable[[int], Iterable]:
    loader = torchvision_loader(folder, workers)
    return lambda epoch: loader


def fewmult_loader(
    folder: Path, workers: int | str, draft: bool, device: str = "cpu", decode: str = "workers"
) -> Callable[[int], Iterable]:
    """Epochs of ``dataset=imagenet``'s training stream, each batch moved to ``device`` (pinned and
    asynchronous on a GPU; decoded there with ``decode="device"``) and normalized there, as a run does."""
    gpu = device == "cuda"
    module = ImageFolderData(
        name="imagenet",
        root=str(folder.parent),
        folder=folder.name,
        batch_size=BATCH,
        val_size=1,
        workers=workers,
        jpeg_draft=draft,
        decode=decode,
        pin_memory=gpu,
    )
    stream = module.train_dataloader()

    def on_device(batch):
        x, y = module.on_after_batch_transfer(
            module.transfer_batch_to_device(batch, torch.device(device), 0), 0
        )
        if gpu:
            torch.cuda.synchronize()  # the rate of batches ready on the device
        return x, y

    def epoch(e: int) -> Iterable:
        stream.sampler.set_epoch(e)
        return (on_device(batch) for batch in stream)

    return epoch


def second_epoch_rate(make_epoch: Callable[[int], Iterable]) -> float:
    """Images per second over the second epoch (the first starts the workers)."""
    for _x, _y in make_epoch(0):
        pass
    start, seen = time.perf_counter(), 0
    for x, _y in make_epoch(1):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2,3", help="DataLoader worker counts to try")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imagenet"
        write_jpegs(folder, args.images)
        pipelines: dict[str, Callable[[int], Callable[[int], Iterable]]] = {
            "torchvision ImageFolder": lambda w: torchvision_epochs(folder, w),
            "fewmult, jpeg_draft=false": lambda w: fewmult_loader(folder, w, draft=False),
            "fewmult, jpeg_draft=true": lambda w: fewmult_loader(folder, w, draft=True),
            "fewmult, decode=device (the CPU)": lambda w: fewmult_loader(folder, w, False, decode="device"),
        }
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for workers in counts:
                for name, make in pipelines.items():
                    rates.setdefault((name, workers), []).append(second_epoch_rate(make(workers)))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    best = {name: max((medians[(name, w)], w) for w in counts) for name in pipelines}
    baseline = best["torchvision ImageFolder"][0]
    print(f"{args.images} JPEGs, batch {BATCH}, 224 x 224 crops, median of {args.rounds} rounds (images/s)")
    print("| pipeline | " + " | ".join(f"{w} workers" for w in counts) + " | best / baseline's best |")
    print("|---|" + "---|" * (len(counts) + 1))
    for name in pipelines:
        cells = " | ".join(f"{medians[(name, w)]:.0f}" for w in counts)
        print(f"| {name} | {cells} | {best[name][0] / baseline:.2f}x |")


if __name__ == "__main__":
    main()
