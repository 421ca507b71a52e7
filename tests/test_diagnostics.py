"""Per-layer diagnostics (layers.csv, W&B): counts checked against QBP's own rounding, every column
recomputed from the weights a run saved, and no effect on training (no random numbers drawn)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.diagnostics import COLUMNS, layers_by_short_name, read_rows
from fewmult.qbp import QBPSettings
from fewmult.results import truncate_epochs
from tests.test_training import metric_rows, train_in_process

SMALL = ("model.arch=64FC-32FC", "trainer.max_epochs=3")


def test_clipped_counts_on_hand_values():
    x = torch.tensor([0.0, 2.0**-6, -(2.0**-5), 2.0**-4, 1.0, 15.9, 16.0, -20.0])
    assert QBPSettings(-4, 3).clipped_counts(x).tolist() == [2, 2]
    assert QBPSettings(-4, 3, zero_to_min=True).clipped_counts(x).tolist() == [3, 2]  # 0 -> -2^-4
    assert QBPSettings(None, None).clipped_counts(x).tolist() == [0, 0]


@pytest.mark.parametrize("zero_to_min", [False, True])
def test_clipped_counts_are_the_inputs_whose_rounding_the_range_changes(zero_to_min):
    """Against QBP's own rounding (to the nearer power of two): the counted inputs end at the range's
    ends, and every other input rounds exactly as without a range."""
    torch.manual_seed(0)
    x = torch.randn(20_000) * torch.rand(20_000).mul(12).sub(8).exp2()  # magnitudes 2^-8 .. 2^4
    x[:500] = 0
    s = QBPSettings(-4, 3, stochastic=False, zero_to_min=zero_to_min)
    free, clipped = QBPSettings(None, None, stochastic=False).round(x), s.round(x)
    _, exponent = torch.frexp(x)  # floor(log2|x|) = exponent - 1
    raised = ((exponent - 1 < -4) & (x != 0)) | ((x == 0) & zero_to_min)  # frexp(0) gives exponent 0
    lowered = exponent - 1 > 3
    assert raised.sum() > 1000 and lowered.sum() > 100
    assert s.clipped_counts(x).tolist() == [int(raised.sum()), int(lowered.sum())]
    assert (clipped[raised].abs() == 2.0**-4).all() and (clipped[lowered].abs() == 16).all()
    untouched = ~(raised | lowered)
    assert torch.equal(clipped[untouched], free[untouched])


def read_csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_column_is_recomputed_from_the_weights_the_run_saved(tmp_path):
    """Ternary connect with QBP through fewmult.train: flip rate, clipping, scale, mean |w| and the
    expected zero share agree with the weights a probe callback saved at every epoch's end."""
    probe = tmp_path / "weights"
    callbacks = f"callbacks=[{{_target_:tests.probes.SaveWeights,folder:{probe}}}]"
    overrides = ("method=tc", "qbp=true", *SMALL)
    _, run_dir = train_in_process(tmp_path, "run", *overrides, callbacks)
    w0 = {
        n: m.w0
        for n, m in layers_by_short_name(
            build_model(compose_config("dataset=synthetic", *overrides), (784,), 10)
        ).items()
    }
    rows = read_rows(run_dir / "layers.csv")
    assert list(read_csv(run_dir / "layers.csv")[0]) == list(COLUMNS)
    layers = ["fc1", "fc2", "out"]
    assert [(r["epoch"], r["layer"]) for r in rows] == [(e, n) for e in range(3) for n in layers]
    keys = {"fc1": "fc1.1.weight", "fc2": "fc2.0.weight", "out": "out.0.weight"}
    for row in rows:
        before = torch.load(probe / ("init.pt" if row["epoch"] == 0 else f"epoch{row['epoch'] - 1}.pt"))
        after = torch.load(probe / f"epoch{row['epoch']}.pt")
        w, w_before = after[keys[row["layer"]]], before[keys[row["layer"]]]
        s = w0[row["layer"]]
        assert row["quantizer"] == "TernaryConnect" and row["weights"] == w.numel()
        assert row["scale"] == pytest.approx(s, rel=1e-5) and w.abs().max() <= s  # the clip bound s = W0
        expected = {
            "flip_rate": ((w >= 0) != (w_before >= 0)).float().mean(),
            "clip_fraction": (w.abs() >= s).float().mean(),
            "mean_abs_w": w.abs().mean(),
            "zero_fraction": (1 - w.abs() / s).clamp(0, 1).mean(),
        }
        for key, value in expected.items():
            assert row[key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), (row, key)
        assert 0 <= row["qbp_low"] <= 1 and 0 <= row["qbp_high"] <= 1
    assert rows[0]["flip_rate"] > 0  # the weights moved
    assert any(r["qbp_low"] > 0 for r in rows)  # BN + ReLU outputs: many zeros and small inputs


def test_lab_logs_its_alpha_next_to_bwns_mean_abs_w(tmp_path):
    probe = tmp_path / "weights"
    callbacks = f"callbacks=[{{_target_:tests.probes.SaveWeights,folder:{probe}}}]"
    _, run_dir = train_in_process(tmp_path, "run", "method=lab", *SMALL, callbacks)
    last = [r for r in read_rows(run_dir / "layers.csv") if r["epoch"] == 2]
    state = torch.load(probe / "epoch2.pt")
    for row, key in zip(last, ["fc1.1", "fc2.0", "out.0"], strict=True):
        alpha = state[f"{key}.weight_quantizer.alpha_last"]
        assert row["scale"] == pytest.approx(float(alpha), rel=1e-5)
        assert row["mean_abs_w"] == pytest.approx(float(state[f"{key}.weight"].abs().mean()), rel=1e-5)
        assert math.isnan(row["zero_fraction"]) and math.isnan(row["qbp_low"])


@pytest.mark.parametrize("method", ["tc", "bc_stoch"])
def test_diagnostics_change_nothing_in_training(tmp_path, method):
    """Stochastic quantizers and QBP with and without diagnostics: the same numbers to the last digit
    (the diagnostics draw no random numbers and touch no weight)."""
    _, on = train_in_process(tmp_path, "on", f"method={method}", "qbp=true", *SMALL)
    _, off = train_in_process(tmp_path, "off", f"method={method}", "qbp=true", *SMALL, "diagnostics=false")
    assert metric_rows(on) == metric_rows(off)
    assert (on / "layers.csv").is_file() and not (off / "layers.csv").exists()


def test_layer_names_are_the_blocks_and_the_gates():
    cfg = compose_config("dataset=synthetic", "model=cnn", "method=bwn")
    assert list(layers_by_short_name(build_model(cfg, (3, 32, 32), 10)))[:2] == ["conv1", "conv2"]
    lstm = build_model(compose_config("dataset=text", "method=lab"), (100,), 65)
    names = list(layers_by_short_name(lstm))
    assert len(set(names)) == 9 and "lstm.hidden_weights.forget" in names  # 8 gate matrices
    assert names[-1] == "out" and layers_by_short_name(lstm)["out"].weight_quantizer is None  # full precision


def test_truncating_keeps_the_header_and_the_finished_epochs(tmp_path):
    path = tmp_path / "layers.csv"
    path.write_text("epoch,layer\n0,a\n0,b\n1,a\n1,b\n2,a\n")
    truncate_epochs(path, 2)
    assert path.read_text() == "epoch,layer\n0,a\n0,b\n1,a\n1,b\n"
