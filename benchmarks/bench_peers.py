"""Training-step time of binary and ternary weights in fewmult and in what a user would pick instead:
brevitas (``QuantLinear``/``QuantConv2d`` with a binary or ternary weight quantizer), bitorch
(``QLinear``/``QConv2d`` with ``sign`` weights, inputs unquantized) and the dozen lines of a
straight-through layer written by hand (``w + (q(w) - w).detach()``).

Every contestant trains the same network: fewmult's, with each of its quantized layers replaced by
the peer's layer of the same shape and weights (batch norms, activations, first and last layers as
fewmult has them), the same optimizer (the recipe's SGD) and the same clipping of the latent weights
after each step. Steps are timed in interleaved rounds, medians reported with the ratio to the
fastest contestant of the row. A peer that is not installed (``pip install -e ".[peers]"``) is
skipped with a line saying so; a peer without that kind of weight is left out of the row.

Kinds: deterministic binary weights (fewmult ``bc_det``: sign times the layer's fixed scale;
brevitas ``SignedBinaryWeightPerTensorConst``; bitorch ``sign``; by hand ``sign``), scaled binary
(fewmult ``bwn``: sign times mean |w|; by hand the same), ternary (fewmult ``tc``, Lin et al.'s
stochastic ternary connect; brevitas ``SignedTernaryWeightPerTensorConst`` and by hand, deterministic
rounding, which does less work than sampling).

Run: ``python -m benchmarks.bench_peers`` (``--networks mlp cnn resnet18``, ``--rounds``, ``--steps``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from fewmult.build import build_module
from fewmult.config import compose_config
from fewmult.nn import bind_optimizer
from fewmult.nn.layers import QuantConv2d, QuantLinear

NETWORKS = {
    "mlp": (("dataset=mnist", "model=lin2016_mlp"), (1, 28, 28), 200),
    "cnn": (("dataset=cifar10", "model=lin2016_cnn"), (3, 32, 32), 50),
    "resnet18": (("dataset=cifar10", "model=resnet18", "paper=lin2016"), (3, 32, 32), 32),
}
KINDS = {"binary": "bc_det", "scaled binary": "bwn", "ternary": "tc"}


def by_hand(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The straight-through quantization a user writes: forward q(w), backward the identity."""

    def quantize(w: torch.Tensor) -> torch.Tensor:
        if kind == "binary":
            q = torch.sign(w)
        elif kind == "scaled binary":
            q = torch.sign(w) * w.abs().mean()
        else:
            q = torch.sign(w) * (w.abs() > 0.5)
        return w + (q - w).detach()

    return quantize


class HandLinear(nn.Linear):
    quantize: Callable[[torch.Tensor], torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantize(self.weight), self.bias)


class HandConv2d(nn.Conv2d):
    quantize: Callable[[torch.Tensor], torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantize(self.weight), self.bias)


def _conv_args(layer: nn.Conv2d) -> dict:
    return {"stride": layer.stride, "padding": layer.padding, "bias": layer.bias is not None}


def hand_layer(layer: nn.Module, kind: str) -> nn.Module:
    if isinstance(layer, nn.Linear):
        new = HandLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        new = HandConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, **_conv_args(layer))
    new.quantize = by_hand(kind)
    return new


def brevitas_layer(layer: nn.Module, kind: str) -> nn.Module | None:
    import brevitas.nn as qnn
    from brevitas.quant import SignedBinaryWeightPerTensorConst, SignedTernaryWeightPerTensorConst

    quant = {"binary": SignedBinaryWeightPerTensorConst, "ternary": SignedTernaryWeightPerTensorConst}.get(
        kind
    )
    if quant is None:
        return None
    if isinstance(layer, nn.Linear):
        return qnn.QuantLinear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, weight_quant=quant
        )
    return qnn.QuantConv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, **_conv_args(layer), weight_quant=quant
    )


def bitorch_layer(layer: nn.Module, kind: str) -> nn.Module | None:
    from bitorch.layers import QConv2d, QLinear

    if kind != "binary":
        return None
    quantized = {"weight_quantization": "sign", "input_quantization": "identity"}
    if isinstance(layer, nn.Linear):
        return QLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, **quantized)
    return QConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, **_conv_args(layer), **quantized)


PEERS = {"brevitas": brevitas_layer, "bitorch": bitorch_layer, "by hand": hand_layer}
PACKAGES = {"brevitas": "brevitas", "bitorch": "bitorch"}


def with_peer_layers(
    model: nn.Module, make: Callable[[nn.Module], nn.Module | None]
) -> tuple[nn.Module, list[nn.Module]] | None:
    """A copy of fewmult's ``model`` whose quantized layers are the peer's, with the same weights,
    and those layers; None where the peer has no such layer."""
    model, swapped = copy.deepcopy(model), []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, (QuantLinear, QuantConv2d)) or layer.weight_quantizer is None:
            continue
        new = make(layer)
        if new is None:
            return None
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        swapped.append(new)
    return model, swapped


def make_steps(network: str, kind: str, peers: list[str]) -> dict[str, Callable[[], None]]:
    overrides, shape, batch = NETWORKS[network]
    cfg = compose_config(*overrides, f"method={KINDS[kind]}", "optim=sgd")
    torch.manual_seed(0)
    module = build_module(cfg, shape, 10)
    fewmult_model, loss_fn = module.model.train(), module.loss
    bound = max(
        (
            m.weight_quantizer.clip_bound
            for m in fewmult_model.modules()
            if getattr(m, "weight_quantizer", None)
        ),
        key=lambda b: b or 0,
    )
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    steps = {}
    for name in ["fewmult", *peers]:
        clipped: list[torch.Tensor] = []  # fewmult's own clipping runs in its optimizer hook
        if name == "fewmult":
            model = fewmult_model
        else:
            peer = with_peer_layers(fewmult_model, lambda layer, name=name: PEERS[name](layer, kind))
            if peer is None:
                continue
            model, layers = peer
            model.train()
            clipped = [layer.weight for layer in layers]  # the same clipping as fewmult's quantizers
        optimizer = instantiate(cfg.optim.optimizer)(model.parameters())
        if name == "fewmult":
            bind_optimizer(model, optimizer)

        def step(model=model, optimizer=optimizer, clipped=clipped) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
            with torch.no_grad():
                for w in clipped:
                    w.clamp_(-bound, bound)

        steps[name] = step
    return steps


def bench_row(steps: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per step of each contestant, interleaved round by round."""
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    peers = []
    for name in PEERS:
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            print(f'{name}: not installed, skipped (pip install -e ".[peers]")')
        else:
            peers.append(name)
    print(f"threads {torch.get_num_threads()}, rounds {args.rounds}, steps per round {args.steps}")
    for network in args.networks:
        for kind in KINDS:
            seconds = bench_row(make_steps(network, kind, peers), args.rounds, args.steps)
            fastest = min(seconds.values())
            cells = ", ".join(f"{n} {s * 1e3:.1f} ms ({s / fastest:.2f}x)" for n, s in seconds.items())
            print(f"{network} batch {NETWORKS[network][2]}, {kind}: {cells}")


if __name__ == "__main__":
    main()
