"""Cost of the per-layer diagnostics (``diagnostics=true``, the default) as a share of an epoch.

One Lightning run per setup; epochs alternate between diagnostics on (the callback of
``fewmult.train`` and QBP's per-step count of clipped exponents) and off, so machine noise hits
both alike. A training epoch (no validation: the diagnostics add nothing there, so leaving it out
makes the share larger) is timed from its start to the end of the diagnostics' epoch-end work.
Reported: median epoch with diagnostics / median epoch without.

Run: ``python -m benchmarks.bench_diagnostics`` (``--epochs`` per side, ``--threads``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from fewmult.build import build_module
from fewmult.config import compose_config
from fewmult.diagnostics import LayerDiagnostics
from fewmult.nn.layers import quant_layers
from fewmult.run.job import quiet_lightning
from tests.fakedata import write_mnist

MNIST = ("dataset=mnist", "dataset.download=false")  # 60,000 random digits in MNIST's files, written here
SETUPS = {
    "Lin et al. MNIST MLP, tc + QBP, MNIST-sized epoch (250 steps)": ("method=tc", "qbp=true", *MNIST),
    "Lin et al. MNIST MLP, tc + QBP, mnist_mini epoch (17 steps)": ("method=tc", "qbp=true"),
    "Hou et al. MNIST MLP, bc_det, mnist_mini epoch (35 steps)": ("method=bc_det",),
    "Hou et al. MNIST MLP, lab, mnist_mini epoch (35 steps)": ("method=lab",),
}


class EveryOtherEpoch(LayerDiagnostics):
    """The diagnostics on even epochs only; on odd epochs the QBP layers do not count either."""

    def _on(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch % 2 == 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        for layer in quant_layers(pl_module.model):
            if layer.qbp is not None:
                layer.qbp_clipped = torch.zeros(2, dtype=torch.int64) if self._on(trainer) else None
        if self._on(trainer):
            super().on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._on(trainer):
            super().on_train_epoch_end(trainer, pl_module)


class StartClock(L.Callback):
    """First in the callback list: its epoch start comes before the others'."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()


class StopClock(L.Callback):
    """Last in the list: its epoch end comes after the diagnostics'."""

    def __init__(self, start: StartClock) -> None:
        self.start, self.times = start, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self.start.started)


def bench(overrides: tuple[str, ...], epochs: int) -> dict[str, float]:
    cfg = compose_config("logger=none", *overrides)
    datamodule = instantiate(cfg.dataset)
    splits = datamodule.load()
    module = build_module(cfg, splits.input_shape, splits.num_classes)
    start = StartClock()
    stop = StopClock(start)
    with tempfile.TemporaryDirectory() as folder:
        trainer = instantiate(
            cfg.trainer,
            max_epochs=2 * epochs + 2,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,  # training epochs only: the diagnostics add nothing to validation
            callbacks=[start, EveryOtherEpoch(Path(folder) / "layers.csv"), stop],
        )
        trainer.fit(module, datamodule=datamodule)
    on, off = statistics.median(stop.times[2::2]), statistics.median(stop.times[3::2])  # epochs 0, 1 warm up
    return {"on_s": on, "off_s": off, "ratio": on / off}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs on each side")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    data = tempfile.mkdtemp()
    write_mnist(Path(data), n_train=60_000, n_test=10_000)
    os.environ["FEWMULT_DATA"] = data
    for name, overrides in SETUPS.items():
        r = bench(overrides, args.epochs)
        print(
            f"{name}: epoch with diagnostics {r['on_s'] * 1000:.0f} ms, without {r['off_s'] * 1000:.0f} ms, "
            f"ratio {r['ratio']:.3f} (median of {args.epochs} each, {args.threads} threads)",
            flush=True,
        )


if __name__ == "__main__":
    main()
