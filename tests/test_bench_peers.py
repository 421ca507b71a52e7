"""benchmarks/bench_peers.py runs the same network in every contestant it has, and says which peers
it skipped (CI does not install the ``peers`` extra)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from benchmarks import bench_peers
from fewmult.build import build_module
from fewmult.config import compose_config
from fewmult.nn.layers import QuantConv2d, QuantLinear


def test_every_quantized_layer_becomes_the_peers_with_the_same_weights():
    cfg = compose_config("dataset=cifar10", "model=lin2016_cnn", "method=bc_det")
    model = build_module(cfg, (3, 32, 32), 10).model
    quantized = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    copy, layers = bench_peers.with_peer_layers(model, lambda layer: bench_peers.hand_layer(layer, "binary"))
    assert len(layers) == len(quantized) > 0
    assert not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in copy.modules())
    for ours, theirs in zip(quantized, layers, strict=True):
        assert torch.equal(ours.weight, theirs.weight) and type(theirs).__name__.startswith("Hand")
    assert copy(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow  # a round of the benchmark itself (7 s)
def test_the_table_has_every_kind_and_names_the_skipped_peers(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_peers", "--networks", "mlp", "--rounds", "1", "--steps", "1"])
    bench_peers.main()
    out = capsys.readouterr().out
    for package in ("brevitas", "bitorch"):
        installed = importlib.util.find_spec(package) is not None
        assert (f"{package}: not installed, skipped" in out) != installed
        assert (f"{package} " in out.split("binary:")[1].splitlines()[0]) == installed
    rows = [line for line in out.splitlines() if line.startswith("mlp batch 200")]
    assert [r.split(",")[1].split(":")[0].strip() for r in rows] == list(bench_peers.KINDS)
    assert all("fewmult" in r and "by hand" in r for r in rows)
