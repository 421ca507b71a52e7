"""Training-step time of every method relative to full precision, side by side in one process.

For each network (Lin et al.'s MNIST MLP at batch 200; Lin et al.'s CIFAR-10 CNN at batch 50;
Hou et al.'s 512-cell character LSTM at 100 windows of 100 characters over 100 symbols; the CIFAR
ResNet-18 of today's rows at batch 32, with Bi-Real, ReActNet and IR-Net too), every
method trains with the optimizer of its paper (Adam for every method on the LSTM), and its
baseline is full precision with the same optimizer and network. A step is forward, loss, backward,
optimizer step and the latent-weight clipping. Methods are timed in interleaved rounds so machine
noise hits all alike; each round gives a ratio to the baseline timed in the same round, and the
reported figure is the median of those paired ratios with their quartiles (the spread says how far
this machine's noise reaches), beside the median step time (and characters per second for the
LSTM). Also: bytes saved for backward with QBP.

Run: ``python -m benchmarks.bench_methods`` (``--rounds``, ``--steps`` to change the effort).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewmult.build import build_module
from fewmult.config import compose_config
from fewmult.module import per_position
from fewmult.nn import bind_optimizer

NETWORKS = {
    "mlp": {"overrides": ["dataset=mnist", "model=lin2016_mlp"], "shape": (1, 28, 28), "batch": 200},
    "cnn": {"overrides": ["dataset=cifar10", "model=lin2016_cnn"], "shape": (3, 32, 32), "batch": 50},
    "lstm": {"overrides": ["dataset=text", "model=lstm"], "shape": (100,), "batch": 100, "vocabulary": 100},
    # the CIFAR-stem ResNet-18 of today's rows, with the methods of those papers (no QBP: Lin et al.'s nets)
    "resnet18": {
        "overrides": ["dataset=cifar10", "model=resnet18"],
        "shape": (3, 32, 32),
        "batch": 32,
        "variants": [
            "fp@sgd",
            "bc_det",
            "bc_stoch",
            "tc",
            "irnet",
            "fp@adam",
            "bwn",
            "lab",
            "bnn",
            "xnor",
            "bireal",
            "reactnet",
        ],
    },
}
VARIANTS = [
    "fp@sgd",
    "bc_det",
    "bc_stoch",
    "tc",
    "bc_stoch+qbp",
    "tc+qbp",
    "fp@adam",
    "bwn",
    "lab",
    "lab2",
    "bnn",
    "xnor",
]


def make_step(network: str, variant: str, extra: tuple[str, ...] = ()):
    """(one training step, the optimizer's name, the optimizer) of ``variant`` on ``network``;
    ``extra``: more config overrides."""
    spec = NETWORKS[network]
    method, _, rest = variant.partition("+")
    method, _, optim = method.partition("@")
    overrides = [*spec["overrides"], f"method={method}", f"qbp={rest == 'qbp'}", *extra]
    if optim:
        overrides.append(f"optim={optim}")
    cfg = compose_config(*overrides)
    torch.manual_seed(0)
    classes = spec.get("vocabulary", 10)
    module = build_module(cfg, spec["shape"], classes)
    model, loss_fn = module.model.train(), module.loss
    optimizer = module.optimizer_factory(model)
    bind_optimizer(model, optimizer)  # LAB reads Adam's state; latent weights clipped after each step
    if "vocabulary" in spec:  # a language model: character codes in, the next character's scores out
        x = torch.randint(0, classes, (spec["batch"], *spec["shape"]))
        y = torch.randint(0, classes, (spec["batch"], *spec["shape"]))
    else:
        x = torch.randn(spec["batch"], *spec["shape"])
        y = torch.randint(0, classes, (spec["batch"],))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(*per_position(model(x), y)).backward()
        optimizer.step()

    return step, cfg.optim.name, optimizer


def bench_network(network: str, rounds: int, steps: int) -> dict[str, tuple[float, list[float]]]:
    """{variant: (median seconds per step, [lower quartile, median, upper quartile] of the per-round
    ratios to fp with the same optimizer)}."""
    variants = NETWORKS[network].get("variants", VARIANTS)
    made = {v: make_step(network, v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:  # warm-up, and an optimizer state for LAB
        for _ in range(2):
            made[v][0]()
    for _ in range(rounds):
        for v in variants:
            start = time.perf_counter()
            for _ in range(steps):
                made[v][0]()
            times[v].append((time.perf_counter() - start) / steps)
    results = {}
    for v in variants:
        base = times[f"fp@{made[v][1]}"]
        paired = [t / b for t, b in zip(times[v], base, strict=True)]
        quartiles = statistics.quantiles(paired, n=4) if rounds > 1 else paired * 3
        results[v] = (statistics.median(times[v]), [quartiles[0], statistics.median(paired), quartiles[2]])
    return results


def saved_bytes(variant_overrides: list[str]) -> int:
    """Bytes the autograd graph keeps for backward in one training forward of the MNIST MLP.

    Tensors are counted once per storage (a ReLU output that the next layer also saves counts once).
    """
    cfg = compose_config("dataset=mnist", "model=lin2016_mlp", *variant_overrides)
    model = build_module(cfg, (1, 28, 28), 10).model.train()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(200, 1, 28, 28)).sum()
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, rounds {args.rounds}, steps per round {args.steps}")
    for network in args.networks:
        results = bench_network(network, args.rounds, args.steps)
        spec = NETWORKS[network]
        print(f"\n{network} (batch {spec['batch']})")
        print(f"  {'variant':<14} {'step':>11}   ratio (quartiles over rounds)")
        for v, (seconds, (low, ratio, high)) in results.items():
            rate = (
                f"   {spec['batch'] * spec['shape'][0] / seconds:8.0f} characters/s"
                if "vocabulary" in spec
                else ""
            )
            print(f"  {v:<14} {seconds * 1000:8.1f} ms   {ratio:6.3f}x ({low:.3f}-{high:.3f}){rate}")
    base = saved_bytes(["method=tc"])
    qbp = saved_bytes(["method=tc", "qbp=true"])
    compact = saved_bytes(["method=tc", "qbp=true", "qbp_settings.compact=true"])
    print(
        f"\nsaved for backward, MNIST MLP batch 200: tc {base / 2**20:.2f} MiB, "
        f"tc+qbp {qbp / 2**20:.2f} MiB, tc+qbp compact {compact / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
