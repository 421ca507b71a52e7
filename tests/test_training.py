"""Training in process: exact repeatability, the selection rule, and DDP on CPU."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra.utils import instantiate

from fewmult.results import best_epoch
from fewmult.train import train
from tests.conftest import compose_config, only_run_dir


def train_in_process(tmp_path, name, *overrides):
    cfg = compose_config("dataset=synthetic", "logger=none", *overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    return train(cfg, run_dir), run_dir


def metric_rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def test_same_seed_repeats_exactly_on_cpu(tmp_path):
    a, dir_a = train_in_process(tmp_path, "a", "trainer.max_epochs=3", "seed=7")
    b, dir_b = train_in_process(tmp_path, "b", "trainer.max_epochs=3", "seed=7")
    _, dir_c = train_in_process(tmp_path, "c", "trainer.max_epochs=3", "seed=8")
    assert metric_rows(dir_a) == metric_rows(dir_b)
    assert metric_rows(dir_a) != metric_rows(dir_c)
    assert a["status"] == b["status"] == "completed"


def test_paper_selection_rule_takes_the_later_epoch_on_ties():
    rows = [
        {"epoch": 0, "val/error": 0.2},
        {"epoch": 1, "val/error": 0.1},
        {"epoch": 2, "val/error": 0.1},
        {"epoch": 3, "val/error": 0.3},
    ]
    assert best_epoch(rows)["epoch"] == 2


def test_fp_learns_the_synthetic_task(tmp_path):
    results, _ = train_in_process(tmp_path, "fp", "trainer.max_epochs=5")
    assert results["test_error"] < 0.2  # chance is 0.9


def test_validation_every_two_epochs_leaves_gaps_not_stale_values(tmp_path):
    results, run_dir = train_in_process(
        tmp_path, "v2", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2"
    )
    rows = metric_rows(run_dir)
    assert [r["val/error"] != "" for r in rows] == [False, True, False, True]
    assert results["best_epoch"] in (1, 3)


def test_ddp_spawn_two_processes_one_run_correct_metrics(run_cli, tmp_path):
    proc = run_cli(
        "dataset=synthetic",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(tmp_path / "outputs")
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert len(list(run.glob("wandb/offline-run-*"))) == 1  # one W&B run, not one per rank
    rows = metric_rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]

    # the logged validation error of the last epoch is the error over the whole validation set,
    # although each rank saw only half of it
    cfg = compose_config("dataset=synthetic")
    datamodule = instantiate(cfg.dataset)
    splits = datamodule.load()
    model = instantiate(cfg.model, input_shape=splits.input_shape, num_classes=splits.num_classes)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    with torch.no_grad():
        error = (model(splits.val_x).argmax(1) != splits.val_y).float().mean().item()
    assert float(rows[-1]["val/error"]) == pytest.approx(error, abs=1e-6)
