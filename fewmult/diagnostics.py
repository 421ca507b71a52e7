"""Per-layer binarization diagnostics, every epoch: ``layers.csv`` in the run folder and W&B charts.

What is asked first when binary training misbehaves ("the weights hardly move", "BWN does not
reproduce"), per quantized layer, at the end of every training epoch:

* ``flip_rate``: share of weights whose sign (sign(0) = +1) changed since the previous epoch's end
  (epoch 0: since initialization). For deterministic binary quantizers it is exactly the share of
  effective weights that flipped; for the stochastic ones, of their mean effective weight.
* ``clip_fraction``: share of latent weights at the clip bound (``|w| >= bound``).
* ``scale``: the magnitude of the effective weights (Lin et al.: ``s``; BWN: ``mean|w|``; LAB: its
  last ``alpha``), beside ``mean_abs_w``, BWN's scale of the same weights: where the two agree, LAB
  is BWN (docs/papers.md D.27).
* ``zero_fraction``: expected share of zero effective weights (ternary connect).
* ``qbp_low`` / ``qbp_high``: with QBP, share of the layer's inputs over the epoch whose exponent
  was raised to ``exp_min`` / lowered to ``exp_max``.

Blank cells: the quantity does not apply. Nothing here draws random numbers (stochastic quantizers
keep their streams) and the statistics are read from the device once per epoch. A relaunched run
logs the same rows as one that was never killed (its killed epoch's rows are dropped; the sign
snapshot is taken again from ``last.ckpt``, which holds the previous epoch's end).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from fewmult.atomic import atomic_write_text
from fewmult.nn.layers import QuantConv2d, QuantLinear, named_quant_layers, quant_layers

QUANTITIES = (
    "flip_rate", "clip_fraction", "scale", "mean_abs_w", "zero_fraction", "qbp_low", "qbp_high"
)  # fmt: skip
COLUMNS = ("epoch", "layer", "quantizer", "weights", *QUANTITIES)


def layers_by_short_name(model: nn.Module) -> dict[str, QuantLinear | QuantConv2d]:
    """The quantized layers by short name: ``conv1.0`` becomes ``conv1`` where that stays unique."""
    named = dict(named_quant_layers(model))
    short = [name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else name for name in named]
    if len(set(short)) < len(short):
        short = list(named)
    return dict(zip(short, named.values(), strict=True))


def stop_counting(model: nn.Module) -> None:
    """Stop the QBP layers' per-step count of clipped exponents (``diagnostics=false``)."""
    for layer in quant_layers(model):
        layer.qbp_clipped = None


def _share(x: torch.Tensor) -> torch.Tensor:
    """The share of true entries (count_nonzero: a third of the time of a float mean)."""
    return torch.count_nonzero(x) / x.numel()


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full((), math.nan, device=like.device)


def weight_statistics(
    layer: QuantLinear | QuantConv2d, signs: torch.Tensor, before: torch.Tensor
) -> torch.Tensor:
    """flip_rate, clip_fraction, scale, mean_abs_w, zero_fraction of one layer (a float tensor of 5)."""
    w = layer.weight.detach()
    quantizer = layer.weight_quantizer
    bound = quantizer.clip_bound if quantizer is not None else None
    scale = quantizer.effective_scale(w) if quantizer is not None else None
    zeros = quantizer.expected_zero_fraction(w) if quantizer is not None else None
    values = [
        _share(signs != before),
        _share(w.abs() >= bound) if bound is not None else _nan(w),
        scale.mean() if scale is not None else _nan(w),  # per-channel scales: their mean
        w.abs().mean(),
        zeros if zeros is not None else _nan(w),
    ]
    return torch.stack([v.float().reshape(()) for v in values])


def _qbp_counts(trainer: L.Trainer, layer: QuantLinear | QuantConv2d) -> torch.Tensor:
    """The layer's clipped low and high exponents and its inputs so far, summed over DDP ranks."""
    device = layer.qbp_clipped.device
    counts = torch.cat([layer.qbp_clipped, torch.tensor([layer.qbp_inputs], device=device)])
    return trainer.strategy.reduce(counts, reduce_op="sum")


class LayerDiagnostics(L.Callback):
    """Writes one row per quantized layer and epoch to ``path`` (layers.csv) and to the loggers.

    W&B gets ``<quantity>/<layer>`` every epoch (a section per quantity, comparable across a sweep)
    and, at the end of training, one chart per quantity with a line per layer (``layers/<quantity>``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # sign(w) >= 0 at the previous epoch's end, one byte per weight on the weights' device (packing
        # it eight to a byte took a third of the epoch-end time)
        self._signs: dict[str, torch.Tensor] = {}
        self._restored: dict[str, Any] | None = None  # from a checkpoint, until training starts
        self._layer_modules: dict[str, QuantLinear | QuantConv2d] = {}
        self._trainer: L.Trainer | None = None

    def _layers(self, pl_module: L.LightningModule) -> dict[str, QuantLinear | QuantConv2d]:
        return layers_by_short_name(pl_module.model)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._layer_modules = self._layers(pl_module)
        self._trainer = trainer
        restored, self._restored = self._restored, None
        if restored is None:  # a new run, or one resumed at an epoch's end: the signs are that epoch's
            self._signs = {name: layer.weight.detach() >= 0 for name, layer in self._layer_modules.items()}
            return
        # resumed inside an epoch: the signs of the epoch's start and its QBP counts so far, summed
        # over the ranks: on rank zero (the epoch's end adds up the ranks' counts)
        device = next(iter(self._layer_modules.values())).weight.device
        self._signs = {name: signs.to(device) for name, signs in restored["signs"].items()}
        for name, (clipped, inputs) in restored["qbp"].items():
            layer = self._layer_modules[name]
            lead = trainer.global_rank == 0
            layer.qbp_clipped.copy_(clipped if lead else torch.zeros_like(clipped))
            layer.qbp_inputs = inputs if lead else 0

    def state_dict(self) -> dict[str, Any]:
        """The signs of the epoch's start (one byte per weight) and the epoch's QBP counts summed
        over the DDP ranks (every rank builds the checkpoint), which the flip rate and the clipped
        fractions of an epoch resumed from its middle need."""
        qbp = {}
        for name, layer in self._layer_modules.items():
            if layer.qbp_clipped is not None:
                counts = _qbp_counts(self._trainer, layer).cpu()
                qbp[name] = (counts[:2].clone(), int(counts[2]))
        return {"signs": {name: signs.cpu() for name, signs in self._signs.items()}, "qbp": qbp}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict if state_dict.get("signs") else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for layer in self._layers(pl_module).values():
            if layer.qbp_clipped is not None:
                layer.qbp_clipped.zero_()
                layer.qbp_inputs = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = self._layers(pl_module)
        stats = []
        for name, layer in layers.items():
            signs = layer.weight.detach() >= 0  # sign(0) = +1, as the quantizers
            before = self._signs[name]
            stats.append(
                torch.cat([weight_statistics(layer, signs, before), self._qbp_fractions(trainer, layer)])
            )
            self._signs[name] = signs
        values = torch.stack(stats).tolist()  # the one read from the device per epoch
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        rows = [
            {
                "epoch": epoch,
                "layer": name,
                "quantizer": type(layer.weight_quantizer).__name__ if layer.weight_quantizer else "none",
                "weights": layer.weight.numel(),
                **dict(zip(QUANTITIES, row, strict=True)),
            }
            for (name, layer), row in zip(layers.items(), values, strict=True)
        ]
        append_rows(self.path, rows)
        logged = {f"{q}/{r['layer']}": r[q] for r in rows for q in QUANTITIES if not math.isnan(r[q])}
        for logger in trainer.loggers:
            logger.log_metrics({**logged, "epoch": epoch}, step=trainer.global_step)

    @staticmethod
    def _qbp_fractions(trainer: L.Trainer, layer: QuantLinear | QuantConv2d) -> torch.Tensor:
        """qbp_low, qbp_high of the epoch, summed over DDP ranks (NaN without QBP)."""
        if layer.qbp_clipped is None:
            return torch.full((2,), math.nan, device=layer.weight.device)
        counts = _qbp_counts(trainer, layer)
        return counts[:2].double().div(counts[2]).float()  # 0/0 = NaN: no input seen (e.g. LSTM gates)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not trainer.is_global_zero or not wandb_loggers or not self.path.is_file():
            return
        charts = line_charts(read_rows(self.path))
        for logger in wandb_loggers:
            logger.experiment.log(charts)


def line_charts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One W&B line chart per quantity: epoch on x, one line per layer."""
    import wandb

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    charts = {}
    for quantity in QUANTITIES:
        series = {name: [(r["epoch"], r[quantity]) for r in rows if r["layer"] == name] for name in layers}
        series = {name: points for name, points in series.items() if points and not math.isnan(points[0][1])}
        if series:
            charts[f"layers/{quantity}"] = wandb.plot.line_series(
                xs=[[e for e, _ in points] for points in series.values()],
                ys=[[v for _, v in points] for points in series.values()],
                keys=list(series),
                title=quantity,
                xname="epoch",
            )
    return charts


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else float(f"{value:.6g}")
    return value


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Add rows to ``layers.csv`` (header on first write), replacing the file whole and atomically."""
    buffer = io.StringIO()
    old = path.read_text() if path.exists() else ""
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    if not old:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, old + buffer.getvalue())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of ``layers.csv``: numbers as floats (blank cells NaN), epoch and weights as ints."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("epoch", "weights"):
            row[key] = int(row[key])
        for key in QUANTITIES:
            row[key] = float(row[key]) if row[key] else math.nan
    return rows
