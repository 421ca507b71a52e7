"""Cost of an augmented CIFAR epoch: fewmult's on-device ``crop_flip`` against torchvision transforms.

Both produce batches of 128 CIFAR-sized images randomly cropped from the 4-pixel zero-padded image,
flipped with p = 1/2 and normalized per channel: fewmult slices device-resident tensors and
augments each whole batch (``fewmult.data.augment.CropFlip``); the baseline is a ``DataLoader``
over ``torchvision.datasets.CIFAR10`` with ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``,
``ToTensor`` and ``Normalize``, at each worker count of ``--workers`` (the best is the baseline).
Epochs alternate between the two so machine noise hits both alike; medians are reported.

Run: ``python -m benchmarks.bench_augment`` (``--images``, ``--epochs``, ``--workers``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from torchvision import transforms

from fewmult.data.augment import CropFlip
from fewmult.data.loader import TensorBatches
from tests.fakedata import register_cifar10_md5, write_cifar10

BATCH = 128


def epoch_seconds(batches) -> float:
    start = time.perf_counter()
    for x, _ in batches:
        x.sum()  # touch the batch
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="training images (5 files of images/5)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to try")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        sums = write_cifar10(Path(root), per_batch=args.images // 5, n_test=10)

        # torchvision checks the files' MD5s: make it expect those of the generated files
        register_cifar10_md5(SimpleNamespace(setattr=setattr), sums)
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        pipeline = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )
        dataset = torchvision.datasets.CIFAR10(root, train=True, transform=pipeline)
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        x = (torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float().div_(255) - m) / s
        y = torch.tensor(dataset.targets)
        ours_loader = TensorBatches(
            x, y, BATCH, shuffle=True, drop_last=True, augment=CropFlip(4), fill=(-m / s).flatten()
        )
        plain = TensorBatches(x, y, BATCH, shuffle=True, drop_last=True)
        workers = [int(w) for w in args.workers.split(",")]
        loaders = {
            w: torch.utils.data.DataLoader(
                dataset, BATCH, shuffle=True, drop_last=True, num_workers=w, persistent_workers=w > 0
            )
            for w in workers
        }
        times: dict[str, list[float]] = {"ours": [], "plain": [], **{f"dl{w}": [] for w in workers}}
        for epoch in range(args.epochs + 1):  # epoch 0 warms up (workers start, caches fill)
            ours_loader.set_epoch(epoch)
            plain.set_epoch(epoch)
            sample = {"ours": epoch_seconds(ours_loader), "plain": epoch_seconds(plain)}
            sample.update({f"dl{w}": epoch_seconds(loader) for w, loader in loaders.items()})
            if epoch:
                for k, v in sample.items():
                    times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = min(workers, key=lambda w: med[f"dl{w}"])
    threads = torch.get_num_threads()
    print(f"{args.images} images, batch {BATCH}, {threads} threads, median of {args.epochs} epochs")
    for w in workers:
        print(f"  torchvision DataLoader, {w} workers: {med[f'dl{w}'] * 1000:.0f} ms/epoch")
    ours, plain = med["ours"] * 1000, med["plain"] * 1000
    print(f"  fewmult crop_flip on the device: {ours:.0f} ms/epoch (no augmentation: {plain:.0f} ms)")
    print(f"  ratio to the best DataLoader ({best} workers): {med['ours'] / med[f'dl{best}']:.3f}")


if __name__ == "__main__":
    main()
