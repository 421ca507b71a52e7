"""Images per second of exported networks on the compiled runtime, beside the NumPy reference and
PyTorch float32 evaluating the same file with the same threads (:mod:`fewmult.runtime.bench`).

The networks of the runtime's goals, exported from freshly built models whose batch-norm statistics
are drawn as after training (speed does not depend on the values): Hou et al.'s MNIST MLP
(784-2048x3-10) with sign activations (``bnn``, ``lab2``) and with float activations (``lab``,
``bwn``, ``tc``), Hou et al.'s CIFAR-10 VGG-like CNN and VGG-Small with sign activations, and the
CIFAR ResNet-18 of today's rows as Bi-Real and ReActNet binarize it. The same
table comes from ``python -m fewmult.export RUN_DIR --bench`` for a trained run.

Run: ``python -m benchmarks.bench_runtime`` (``--only mlp-bnn,cnn-bnn``, ``--threads``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.export import pack_network
from fewmult.nn.activations import RPReLU
from fewmult.packed_forward import FORMAT, VERSION
from fewmult.quant.activations import RSign
from fewmult.runtime import CompiledNetwork, max_threads
from fewmult.runtime.bench import format_rows, images_per_second

MLP = (("dataset=mnist", "paper=hou2017"), (1, 28, 28), [1, 64])
CNN = (("dataset=cifar10", "paper=hou2017"), (3, 32, 32), [1, 16])
VGG_SMALL = (("dataset=cifar10", "paper=hou2017", "model=vgg_small"), (3, 32, 32), [1, 16])
RESNET18 = (("dataset=cifar10", "model=resnet18"), (3, 32, 32), [1, 16])  # CIFAR stem, Bi-Real's block
# the ImageNet row's network: 7x7 stem and max-pool, 224-pixel images, Bi-Real's recipe picks it
RESNET18_IMAGENET = (("dataset=imagenet", "paper=liu2018"), (3, 224, 224), [1, 16])
SETUPS = {
    **{f"mlp-{m}": (m, *MLP) for m in ("bnn", "lab2", "lab", "bwn", "tc")},
    "cnn-bnn": ("bnn", *CNN),
    "vgg_small-bnn": ("bnn", *VGG_SMALL),
    **{f"resnet18-{m}": (m, *RESNET18) for m in ("bireal", "reactnet")},
    "resnet18_imagenet-bireal": ("bireal", *RESNET18_IMAGENET),
}


def as_trained(model: torch.nn.Module) -> torch.nn.Module:
    """BN statistics and affine parameters drawn as after training, negative scales included
    (thresholds inside the range of the sums; the export tests draw theirs here too), and so are
    ReActNet's per-channel parameters."""
    torch.manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.running_mean.normal_(0, 2)
        bn.running_var.uniform_(0.5, 4)
        with torch.no_grad():
            bn.weight.normal_(0, 1)
            bn.bias.normal_(0, 1)
    with torch.no_grad():  # ReActNet's thresholds and RPReLU's shifts and slopes, away from 0 and 0.25
        for m in model.modules():
            if isinstance(m, RSign):
                m.threshold.normal_(0, 0.5)
            if isinstance(m, RPReLU):
                m.shift_in.normal_(0, 0.5), m.shift_out.normal_(0, 0.5), m.prelu.weight.uniform_(-0.5, 0.5)
    return model.eval()


def _plan_lines(steps: list[str]) -> list[str]:
    """The runtime's steps one a line, a run of equal ones (a ResNet stage's blocks) once with its count."""
    return [
        f"  {step}" + (f"  (x{count})" if (count := len(list(group))) > 1 else "")
        for step, group in itertools.groupby(steps)
    ]


def export(name: str, folder: Path) -> tuple[Path, tuple[int, ...], list[int]]:
    method, overrides, shape, batches = SETUPS[name]
    cfg = compose_config(f"method={method}", *overrides)
    ops, arrays = pack_network(as_trained(build_model(cfg, shape, 10)))
    path = folder / f"{name}.npz"
    manifest = {"format": FORMAT, "version": VERSION, "input_shape": list(shape), "layers": ops}
    np.savez(path, manifest=np.array(json.dumps(manifest)), **arrays)
    return path, shape, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SETUPS), help="comma-separated setups")
    parser.add_argument("--threads", type=int, default=max_threads())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            path, shape, batches = export(name, Path(tmp))
            x = np.random.default_rng(0).random((max(batches), *shape), dtype=np.float32)
            rows = images_per_second(str(path), x, batches, args.threads, rounds=args.rounds)
            runtime = CompiledNetwork(str(path), threads=args.threads)
            print(f"\n{name}:", *_plan_lines(runtime.describe(shape)), sep="\n")
            print(format_rows(rows, args.threads, runtime.isa))


if __name__ == "__main__":
    main()
