"""One job on processes a launcher started: ``torchrun`` (as on a multi-node cluster; SLURM tasks take
the same path) runs ``python -m fewmult.train trainer=ddp`` once per rank, gloo on the CPU.

Checked: the ranks agree on one auto-named folder and only rank zero writes it; two ranks of batch
50 train and evaluate as one process of batch 100; a launch killed inside an epoch and launched again
with the same command continues on every rank from the same checkpoint and ends as the launch that
was never killed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewmult.checkpointing import progress
from tests import prewarmed
from tests.conftest import REPO

# no batch norm: each rank would normalize over its own half batch; 201 validation examples: 101 + 100
SETUP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "dataset=synthetic",
    "dataset.n_val=201",
    "model.batch_norm=false",
    "model.arch=64FC",
    "optim.lr=0.001",
    "trainer.max_epochs=3",
    "logger=none",
]


def torchrun(cwd: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(
        [*command, "-m", "fewmult.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_torchrun_ranks_train_as_one_process_and_resume_together_from_inside_an_epoch(tmp_path):
    """Two ranks of batch 50 (one auto-named folder, written by rank zero alone) train as one process
    of batch 100. Then the same launch into a named folder (torchrun --standalone draws a new id per
    launch), SIGKILLed on both ranks after batch 2 of 6 in epoch 1 with a checkpoint after every batch:
    the same command again continues from batch 2 of epoch 1 on both ranks and ends as the launch that
    was never killed."""
    args = [*SETUP, "dataset.batch_size=50", "checkpoint.every_steps=1"]
    launched = torchrun(tmp_path, *args)
    assert launched.returncode == 0, launched.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("*/torchrun-*")  # one folder, named after the launch
    assert sorted(p.name for p in (tmp_path / "outputs").rglob("results.json")) == ["results.json"]
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert launched.stdout.count("run saved to") == 1  # rank 1 prints nothing of its own
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one_process = (*SETUP[1:], "trainer=cpu", "dataset.batch_size=100", "hydra.run.dir=single")
    single = prewarmed.run("fewmult.train", one_process, tmp_path, env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    for ddp_row, one_row in zip(rows(run), rows(tmp_path / "single"), strict=True):
        for key in ("train/loss", "val/loss", "test/loss", "val/error", "test/error"):
            assert float(ddp_row[key]) == pytest.approx(float(one_row[key]), rel=1e-4, abs=1e-6), key

    marker = tmp_path / "killed.marker"
    kill = f"callbacks=[{{_target_:tests.faults.KillAt,at:train_batch,epoch:1,batch:1,marker:{marker}}}]"
    first = torchrun(tmp_path, *args, "hydra.run.dir=killed", kill)
    assert first.returncode != 0 and marker.is_file(), first.stderr[-3000:]
    import torch

    assert progress(torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)) == (
        1,
        1,
    )
    again = torchrun(tmp_path, *args, "hydra.run.dir=killed", kill)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "and 1 training batches of epoch 1 done" in again.stdout
    assert rows(tmp_path / "killed") == rows(run)


@pytest.mark.slow
def test_two_stages_run_in_one_launch_with_every_rank_training_each_stage(tmp_path):
    """stages=two in a torchrun launch of two ranks: stage 1 and then stage 2, each trained by both
    ranks (a rank that skipped a stage would leave the other waiting in its first all-reduce until
    the timeout); rank zero alone prints and writes, and stage 2 starts from stage 1."""
    launched = torchrun(tmp_path, *SETUP, "method=bnn", "stages=two", "hydra.run.dir=run")
    assert launched.returncode == 0, launched.stderr[-3000:]
    run = tmp_path / "run"
    for folder in (run / "stage1", run):
        assert json.loads((folder / "results.json").read_text())["status"] == "completed"
        assert [int(r["epoch"]) for r in rows(folder)] == [0, 1, 2]
    assert json.loads((run / "results.json").read_text())["init_from"] == str(run / "stage1")
    out = launched.stdout
    assert out.count("fewmult: stage 1 of 2 (") == out.count("fewmult: stage 2 of 2") == 1, out
    assert out.count("run saved to") == 1
