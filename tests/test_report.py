"""The paper-style report over sweep folders."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from fewmult.report import main, markdown, published_for, summarize
from tests.wandb_reader import run_info


def result(lr, seed, val, test, status="completed", **extra):
    return {
        "paper": "lin2016",
        "dataset": "mnist",
        "model": "lin2016_mlp",
        "method": "tc",
        "qbp": True,
        "lr": lr,
        "seed": seed,
        "val_error": val,
        "test_error": test,
        "status": status,
        **extra,
    }


def test_published_numbers_come_from_the_table_for_the_runs_setup():
    assert published_for(result(0.1, 0, 0.01, 0.01)).test_value == pytest.approx(0.0115)
    assert published_for(result(0.1, 0, 0.01, 0.01, model="mlp")) is None  # another architecture
    hou = {"paper": "hou2017", "dataset": "svhn", "model": "hou2017_cnn_svhn", "method": "lab", "qbp": False}
    assert published_for({**hou, "width": 64}).value == 2.354
    assert published_for({**hou, "width": 16}).value == 3.050  # Table 2
    text = {"paper": "hou2017", "dataset": "warpeace", "model": "lstm", "method": "bc_det", "seq_len": 50}
    assert published_for(text).test_value == pytest.approx(2.980)


def test_learning_rate_chosen_by_mean_validation_error_and_test_mean_std_over_seeds():
    rows = summarize(
        [
            result(0.3, 0, 0.020, 0.030),
            result(0.3, 1, 0.022, 0.010),
            result(0.1, 0, 0.010, 0.020),
            result(0.1, 1, 0.012, 0.024),
            result(0.03, 0, math_nan := float("nan"), math_nan, status="failed"),
        ]
    )
    (row,) = rows
    assert row["lr"] == 0.1 and row["seeds"] == 2
    assert row["test_mean"] == pytest.approx(0.022) and row["test_std"] == pytest.approx(0.0028284, rel=1e-4)
    assert row["published"] == pytest.approx(0.0115) and row["difference"] == pytest.approx(0.022 - 0.0115)
    assert row["failed"] == 1 and row["completed"] == 4


def test_language_models_are_chosen_and_compared_by_cross_entropy_per_time_step_count():
    def lm(lr, seq_len, val, test):
        return {
            **result(lr, 0, 0.5, 0.5, paper="hou2017", dataset="warpeace", method="lab", qbp=False),
            "model": "lstm",
            "bits_w": 1,
            "bits_a": 32,
            "selected_by": "val_loss",
            "seq_len": seq_len,
            "val_loss": val,
            "test_loss": test,
        }

    rows = summarize([lm(0.002, 100, 1.40, 1.38), lm(0.001, 100, 1.35, 1.39), lm(0.002, 50, 1.30, 1.31)])
    by_steps = {r["seq_len"]: r for r in rows}
    assert by_steps[100]["metric"] == "loss" and by_steps[100]["lr"] == 0.001  # lowest validation nats
    assert by_steps[100]["difference"] == pytest.approx(1.39 - 1.291)
    assert by_steps[50]["published"] == pytest.approx(1.324)
    assert by_steps[50]["test_mean"] == pytest.approx(1.31)
    row = "| warpeace (50 steps) | lstm | lab | 1/32 | 0.002 | test nats/char | 1.310 ± 0.000 |"
    assert row in markdown(rows)


def test_report_on_a_real_multirun(run_cli, tmp_path):
    proc = run_cli(
        "-m", "dataset=synthetic", "trainer.max_epochs=1", "logger=none", "optim.lr=0.3,0.1", "seed=0,1"
    )
    assert proc.returncode == 0, proc.stderr
    (sweep,) = tmp_path.glob("multirun/*/*")
    failed = sweep / "9"
    shutil.copytree(sweep / "0", failed)
    payload = json.loads((failed / "results.json").read_text())
    (failed / "results.json").write_text(json.dumps({**payload, "status": "failed", "error": "boom"}))
    unfinished = sweep / "10"
    (unfinished / ".hydra").mkdir(parents=True)

    proc = run_cli(str(sweep), module="fewmult.report")
    assert proc.returncode == 0, proc.stderr
    assert "(1 unfinished jobs)" in proc.stdout and "| synthetic | lin2016_mlp | fp | 32/32 |" in proc.stdout
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["seeds"] == "2" and rows[0]["failed"] == "1" and rows[0]["completed"] == "4"
    for name in ("report.md", "val_error_curves.png", "error_vs_lr.png"):
        assert (sweep / name).stat().st_size > 0


def test_a_sweep_over_a_setting_gets_rows_of_its_own_and_its_table_in_wandb(run_cli, tmp_path):
    proc = run_cli(
        "-m", "dataset=synthetic", "trainer.max_epochs=1", "model.arch=32FC,64FC", "optim.lr=0.3,0.1"
    )  # logged to W&B, offline (no credentials here)
    assert proc.returncode == 0, proc.stderr
    (sweep,) = tmp_path.glob("multirun/*/*")
    proc = run_cli(str(sweep), module="fewmult.report")
    assert proc.returncode == 0, proc.stderr
    assert "| model.arch=32FC | lin2016 | synthetic | lin2016_mlp | fp |" in proc.stdout
    assert (
        "| model.arch=64FC | lin2016 | synthetic | lin2016_mlp | fp |" in proc.stdout
    )  # not one row for both
    (report_run,) = sweep.glob("wandb/offline-run-*/run-*.wandb")
    info = run_info(report_run)
    group = json.loads(next(sweep.glob("*/results.json")).read_text())["wandb_group"]
    assert (info.run_group, info.job_type) == (group, "report")  # beside the sweep's jobs
    (table_file,) = report_run.parent.glob("files/media/table/report/table_*.table.json")
    table = json.loads(table_file.read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert sorted(r["setting"] for r in rows) == ["model.arch=32FC", "model.arch=64FC"]
    assert all(r["lr"] in (0.3, 0.1) and r["completed"] == 2 for r in rows)
    images = list(report_run.parent.glob("files/media/images/report/*.png"))
    assert len(images) == 2  # validation curves and error against the learning rate


def test_report_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no fewmult runs" in capsys.readouterr().err


def test_each_model_and_its_w_a_get_a_row_of_their_own():
    """A sweep over model=resnet20,resnet18 with one method: two rows, each with its W/A."""
    runs = [
        result(0.1, seed, 0.1, 0.1 + seed / 100, model=model, method="bireal", bits_w=1, bits_a=1)
        for model in ("resnet20", "resnet18")
        for seed in (0, 1)
    ]
    rows = summarize(runs)
    assert [(r["model"], r["bits"], r["seeds"]) for r in rows] == [
        ("resnet18", "1/1", 2),
        ("resnet20", "1/1", 2),
    ]
    assert "| lin2016 | mnist | resnet20 | bireal + QBP | 1/1 |" in markdown(rows)
