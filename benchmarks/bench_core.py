"""Core pipeline speed, as ratios measured side by side in one process.

1. Training loop: one epoch of ``fewmult.train``'s Lightning loop (the composed default config:
   Lin et al.'s MNIST MLP, batch 200, SGD, on mnist_mini) against a minimal hand-written PyTorch
   loop over the same model and tensors. Epochs alternate between the two so machine noise hits
   both alike; the ratio of medians is reported.
2. Loader: batches per second of the device-resident ``TensorBatches`` against a torchvision
   ``DataLoader`` over ``torchvision.datasets.MNIST`` with ``ToTensor`` on 60,000 MNIST-sized images.

Run: ``python -m benchmarks.bench_core`` (``--epochs`` and ``--threads`` to change the defaults).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from hydra.utils import instantiate

from fewmult.build import build_model, build_module
from fewmult.config import compose_config
from fewmult.data.loader import TensorBatches
from fewmult.run.job import quiet_lightning
from tests.fakedata import write_mnist


def _hand_epoch(cfg, splits):
    """A minimal PyTorch loop over the same model, loss and tensors: the baseline."""
    torch.manual_seed(0)
    model = build_model(cfg, splits.input_shape, splits.num_classes)
    loss_fn = instantiate(cfg.loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    x, y, batch = splits.train_x, splits.train_y, cfg.dataset.batch_size

    def run_epoch() -> float:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y))
        for i in range(len(y) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return run_epoch


class Interleave(L.Callback):
    """Times each Lightning training epoch, then runs one baseline epoch before the next starts."""

    def __init__(self, baseline) -> None:
        self.baseline = baseline
        self.ours: list[float] = []
        self.hand: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ours.append(time.perf_counter() - self.start)
        self.hand.append(self.baseline())


def bench_training_loop(epochs: int) -> dict[str, float]:
    quiet_lightning()
    cfg = compose_config("logger=none")
    datamodule = instantiate(cfg.dataset)
    splits = datamodule.load()
    module = build_module(cfg, splits.input_shape, splits.num_classes)
    timer = Interleave(_hand_epoch(cfg, splits))
    trainer = instantiate(
        cfg.trainer,
        max_epochs=epochs + 1,
        logger=False,
        limit_val_batches=0,
        enable_checkpointing=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    ours, hand = statistics.median(timer.ours[1:]), statistics.median(timer.hand[1:])  # epoch 0 warms up
    return {"fewmult_s": ours, "hand_s": hand, "ratio": ours / hand}


def bench_loader(batch_size: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root:
        write_mnist(Path(root), n_train=60_000, n_test=10)
        dataset = torchvision.datasets.MNIST(root, train=True, transform=torchvision.transforms.ToTensor())
        x = dataset.data.unsqueeze(1).float().div_(255)
        y = dataset.targets

        def per_second(batches) -> float:
            start, n = time.perf_counter(), 0
            for bx, _ in batches:
                n += 1
                bx.sum()  # touch the batch
            return n / (time.perf_counter() - start)

        ours = per_second(TensorBatches(x, y, batch_size, shuffle=True, drop_last=True))
        baseline = per_second(torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True))
    return {"tensor_batches_per_s": ours, "dataloader_per_s": baseline, "speedup": ours / baseline}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loop = bench_training_loop(args.epochs)
    print(
        f"training epoch: fewmult {loop['fewmult_s'] * 1000:.0f} ms, "
        f"hand-written {loop['hand_s'] * 1000:.0f} ms, ratio {loop['ratio']:.3f} "
        f"(median of {args.epochs}, {args.threads} threads)"
    )
    loader = bench_loader()
    print(
        f"loader: TensorBatches {loader['tensor_batches_per_s']:.0f} batches/s, "
        f"torchvision DataLoader+ToTensor {loader['dataloader_per_s']:.0f} batches/s, "
        f"speedup {loader['speedup']:.1f}x"
    )


if __name__ == "__main__":
    main()
