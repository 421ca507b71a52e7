"""Multiplications of one training minibatch, per layer: ``python -m fewmult.count [overrides]``.

The papers' headline (Lin et al. 2016, docs/papers.md C.2). For a layer with ``M`` multiply-accumulates
per example (weights x output positions), ``u`` output units per example and minibatch ``B``:

* forward ``B*M`` with full-precision weights; 0 with binary/ternary weights (sign changes and
  skipped zeros); ``B*u`` with a scaled sign (one product by the layer's scale per output);
* error back-propagation: the same rules (counted for every layer, the first included, as the paper);
* weight gradient ``B*M``, or 0 with QBP (products with powers of two are shifts);
* ``3*B*u`` per-unit products (nonlinearity derivative and update terms; the paper's figures imply
  three per unit and example, their exact breakdown is not stated, docs/papers.md C.2);
* batch norm ``9*(B+1)`` per normalized unit.

For the MNIST MLP at B = 200 this gives the paper's 1.7480e9 (full precision) and 1.8492e6
(ternary connect + QBP) without BN, 1.7535e9 and 7.4245e6 with BN.

Beside it, the inference cost of one example as Bi-Real Net and ReActNet count it (docs/papers.md
G.4): BOPs, FLOPs and OPs = BOPs/64 + FLOPs (:func:`count_operations`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from torch import nn

from fewmult.models.base import LayerUse, QuantModel, binary_input_layers, feedforward_uses

if TYPE_CHECKING:
    from fewmult.data import TensorDataModule

PER_UNIT = 3
PER_BN_UNIT = 9
BOPS_PER_OP = 64  # Bi-Real's and ReActNet's convention: one 64-bit XNOR + popcount per real operation


@dataclass
class LayerCount:
    name: str
    weights: int
    forward: int
    backward: int
    weight_gradient: int
    per_unit: int
    batch_norm: int
    bits: int = 32  # per effective weight
    weight_bytes: int = 0  # the weights stored packed, as fewmult.export writes them

    @property
    def without_bn(self) -> int:
        return self.forward + self.backward + self.weight_gradient + self.per_unit

    @property
    def total(self) -> int:
        return self.without_bn + self.batch_norm


def count_multiplications(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int
) -> list[LayerCount]:
    """Per-layer counts for one training minibatch of ``batch_size`` (see the module docstring)."""
    rows = []
    for use in layer_uses(model, input_shape):
        quantizer = use.layer.weight_quantizer
        kind = "full" if quantizer is None else quantizer.multiplies
        bits = 32 if quantizer is None else quantizer.bits
        propagate = {"full": use.macs, "scaled_sign": use.units if use.macs else 0}.get(kind, 0)
        rows.append(
            LayerCount(
                name=use.name,
                weights=use.layer.weight.numel(),
                forward=batch_size * propagate,
                backward=batch_size * propagate,
                weight_gradient=0 if use.layer.qbp is not None else batch_size * use.macs,
                per_unit=PER_UNIT * batch_size * use.units,
                batch_norm=PER_BN_UNIT * (batch_size + 1) * use.bn_units,
                bits=bits,
                weight_bytes=packed_bytes(use.layer.weight.numel(), bits),
            )
        )
    return rows


def layer_uses(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerUse]:
    """fewmult's models list their layer uses (:class:`~fewmult.models.base.QuantModel`); any other
    module is read as a feed-forward stack of blocks."""
    if isinstance(model, QuantModel):
        return model.layer_uses(input_shape)
    return feedforward_uses(model, input_shape)


@dataclass
class OpsCount:
    """One layer's share of the inference of one example."""

    name: str
    bops: int  # multiply-accumulates of binary weights with +-1 inputs: XNOR + popcount
    flops: int  # every other multiply-accumulate

    @property
    def ops(self) -> float:
        return self.bops / BOPS_PER_OP + self.flops


def count_operations(model: nn.Module, input_shape: tuple[int, ...]) -> list[OpsCount]:
    """Per layer, for one example: BOPs where 1-bit weights meet 1-bit inputs, FLOPs for every other
    multiply-accumulate (real-valued weights or inputs, ternary weights too), as Bi-Real Net (arXiv
    1808.00278) and ReActNet (arXiv 2003.03488) count them; OPs = BOPs/64 + FLOPs. BN, scales,
    pooling and additions are not counted, as there."""
    binary = binary_input_layers(model, input_shape)
    rows = []
    for use in layer_uses(model, input_shape):
        quantizer = use.layer.weight_quantizer
        xnor = quantizer is not None and quantizer.bits == 1 and use.layer in binary
        rows.append(OpsCount(use.name, use.macs if xnor else 0, 0 if xnor else use.macs))
    return rows


def format_operations(rows: list[OpsCount]) -> str:
    width = max(8, *(len(r.name) + 2 for r in rows))
    lines = ["inference of one example: OPs = BOPs/64 + FLOPs (Bi-Real Net, ReActNet)", ""]
    lines.append(f"{'layer':<{width}}{'BOPs':>16}{'FLOPs':>16}{'OPs':>16}")
    for r in rows:
        lines.append(f"{r.name:<{width}}{r.bops:>16,}{r.flops:>16,}{r.ops:>16,.0f}")
    for label, counted in (("total", rows), (f"without {rows[-1].name}", rows[:-1])):
        bops, flops = sum(r.bops for r in counted), sum(r.flops for r in counted)
        lines.append(f"{label:<{width}}{bops:>16.3e}{flops:>16.3e}{bops / BOPS_PER_OP + flops:>16.3e}")
    lines.append(
        "(the second total leaves out the last layer, the classifier: the printed OPs of Bi-Real Net "
        "and ReActNet's ResNet-18, 1.63e8, come out that way; docs/papers.md G.4)"
    )
    return "\n".join(lines)


def packed_bytes(weights: int, bits: int) -> int:
    """Bytes of a layer's weights packed ``bits`` to a weight, plus its one float32 scale if quantized."""
    return 4 * weights if bits == 32 else -(-weights * bits // 8) + 4


def summary(rows: list[LayerCount], baseline: list[LayerCount]) -> dict[str, float]:
    """Totals with and without BN, and the same for the full-precision net without QBP."""
    total = sum(r.total for r in rows)
    no_bn = sum(r.without_bn for r in rows)
    fp_total = sum(r.total for r in baseline)
    fp_no_bn = sum(r.without_bn for r in baseline)
    return {
        "total": total,
        "total_without_bn": no_bn,
        "forward": sum(r.forward for r in rows),
        "backward": sum(r.backward for r in rows),
        "weight_gradient": sum(r.weight_gradient for r in rows),
        "per_unit": sum(r.per_unit for r in rows),
        "batch_norm": sum(r.batch_norm for r in rows),
        "full_precision_total": fp_total,
        "full_precision_total_without_bn": fp_no_bn,
        "ratio": total / fp_total,
        "ratio_without_bn": no_bn / fp_no_bn,
    }


def format_table(rows: list[LayerCount], totals: dict[str, float], batch_size: int) -> str:
    cols = ["weights", "forward", "backward", "weight_gradient", "per_unit", "batch_norm"]
    lines = [f"multiplications per training minibatch of {batch_size}; weight memory packed as exported", ""]
    header = "".join(f"{c:>16}" for c in [*cols, "total"])
    lines.append(f"{'layer':<8}{header}{'bits':>6}{'memory':>12}")
    for r in rows:
        d = asdict(r)
        cells = "".join(f"{d[c]:>16,}" for c in cols) + f"{r.total:>16,}"
        lines.append(f"{r.name:<8}{cells}{r.bits:>6}{format_bytes(r.weight_bytes):>12}")
    packed, full = sum(r.weight_bytes for r in rows), sum(4 * r.weights for r in rows)
    sizes = f"{format_bytes(packed)} packed, {format_bytes(full)} as float32"
    lines.append(f"weights: {sizes} ({full / packed:.1f}x smaller)")
    lines.append("")
    lines.append(f"{'':<8}{'this method':>16}{'full precision':>16}{'ratio':>12}")
    for label, suffix in (("with BN", ""), ("no BN", "_without_bn")):
        ours, fp, ratio = (totals[k + suffix] for k in ("total", "full_precision_total", "ratio"))
        lines.append(f"{label:<8}{ours:>16.4e}{fp:>16.4e}{ratio:>12.6f}")
    return "\n".join(lines)


def format_bytes(n: int) -> str:
    """``512 B``, ``196.0 KiB``, ``1.3 MiB``: sizes as fewmult.count and fewmult.export print them."""
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def count_for_config(
    cfg, model: nn.Module | None = None, datamodule: TensorDataModule | None = None
) -> tuple[list[LayerCount], dict[str, float]]:
    """Counts for the model, method and QBP setting of a composed config, at its batch size.

    ``model`` and ``datamodule``: the network and the data already built from ``cfg`` (training
    passes its own); else they are built here (a text's vocabulary needs its file).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fewmult.build import build_model, check_model_fits_data

    if datamodule is None:
        datamodule = instantiate(cfg.dataset)
        check_model_fits_data(cfg, datamodule)
    input_shape, num_classes = datamodule.image_shape, datamodule.num_classes
    batch = cfg.dataset.batch_size
    rows = count_multiplications(model or build_model(cfg, input_shape, num_classes), input_shape, batch)
    fp_cfg = OmegaConf.merge(cfg, {"method": {"weight_quantizer": None, "activation": None}, "qbp": False})
    baseline = count_multiplications(build_model(fp_cfg, input_shape, num_classes), input_shape, batch)
    return rows, summary(rows, baseline)


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from fewmult.build import build_model, check_model_fits_data
    from fewmult.config import CONF_DIR, register_resolvers
    from fewmult.errors import report_user_error

    register_resolvers()
    overrides = sys.argv[1:] if argv is None else argv
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        datamodule = instantiate(cfg.dataset)
        check_model_fits_data(cfg, datamodule)
        model = build_model(cfg, datamodule.image_shape, datamodule.num_classes)
        rows, totals = count_for_config(cfg, model, datamodule)
        operations = count_operations(model, datamodule.image_shape)
    except HydraException as exc:
        print(f"fewmult.count: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return report_user_error("fewmult.count", exc)
    qbp = "on" if cfg.qbp else "off"
    print(f"{cfg.model.name}, method {cfg.method.name}, qbp {qbp}, dataset {cfg.dataset.name}")
    print(format_table(rows, totals, cfg.dataset.batch_size))
    print()
    print(format_operations(operations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
