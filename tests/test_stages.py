"""Runs built on other runs, through ``python -m fewmult.train``: ``teacher=RUN_DIR`` (ReActNet's
distribution loss) and ``stages=two`` (stage 1 binary activations on real weights, then this run from
its best weights), with the formula of the loss checked against its definition."""

from __future__ import annotations

import json

import pytest
import torch

from fewmult.nn.losses import distribution_loss
from fewmult.stages.teacher import Teacher
from tests.conftest import only_run_dir, trained_run

SMALL = ["dataset=synthetic", "model=mlp", "model.arch=64FC", "logger=none"]


def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_the_distribution_loss_is_the_kl_divergence_from_the_teachers_softmax():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    p_t, p_s = teacher.softmax(-1), student.softmax(-1)
    by_definition = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    loss = distribution_loss(student, teacher)
    assert torch.allclose(loss.double(), by_definition, rtol=1e-6)
    # d KL / d student logits = (p_student - p_teacher) / N: the student moves toward the teacher
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.allclose(grad.double(), (p_s - p_t).detach() / 6, atol=1e-7)
    assert distribution_loss(teacher, teacher).abs() < 1e-6 and loss > 0


def test_a_teacher_stays_frozen_and_out_of_the_students_checkpoint():
    from fewmult.build import build_model
    from fewmult.config import compose_config
    from fewmult.module import ClassifierModule

    cfg = compose_config("dataset=synthetic", "model.arch=64FC")
    network = build_model(cfg, (1, 28, 28), 10)
    module = ClassifierModule(
        build_model(cfg, (1, 28, 28), 10),
        torch.nn.CrossEntropyLoss(),
        None,
        None,
        10,
        teacher=Teacher(network, 1.0),
    )
    module.train()  # what Lightning does every epoch: the teacher's BN must keep its statistics
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    assert all(k.startswith(("model.", "error.")) for k in module.state_dict())


def test_a_student_taught_by_the_teacher_alone_learns_its_classes(run_cli, tmp_path):
    """teacher_weight=1 (ReActNet): the student never sees a label, only the teacher's softmax."""
    teacher, student, alone = tmp_path / "teacher", tmp_path / "student", tmp_path / "alone"
    adam = [*SMALL, "paper=hou2017", "trainer.max_epochs=3"]  # Adam: the KL's small gradients count as much
    trained_run(teacher, *adam)
    proc = run_cli(*adam, f"teacher={teacher}", f"hydra.run.dir={student}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taught by {teacher} (teacher, weight 1.0)" in proc.stdout.splitlines()[0]
    trained_run(alone, *adam, "optim.lr=1e-12")  # cannot learn
    got = results(student)
    assert (
        got["teacher"] == str(teacher) and got["teacher_weight"] == 1.0 and results(alone)["teacher"] is None
    )
    # measured (seed 0): test error 0.025 teacher, 0.03 student, 0.925 an untrained net
    assert got["test_error"] < 0.15 < 0.7 < results(alone)["test_error"]
    rows = (student / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith(",train/distill") and all(float(r.split(",")[-1]) >= 0 for r in rows[1:])


def test_a_teacher_of_another_dataset_is_refused_before_a_folder_is_made(run_cli, tmp_path):
    teacher = tmp_path / "teacher"
    trained_run(teacher, *SMALL, "trainer.max_epochs=1")
    proc = run_cli("dataset=mnist_mini", "logger=none", f"teacher={teacher}")
    assert proc.returncode == 2 and f"teacher={teacher} was trained on dataset=synthetic" in proc.stderr
    proc = run_cli(*SMALL, f"teacher={teacher}", "teacher_weight=0")
    assert proc.returncode == 2 and "teacher_weight must be a number in (0, 1], got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and only_run_dir(tmp_path) == teacher


def test_two_stages_run_as_one_command_and_a_relaunch_reuses_stage_one(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMALL, "method=bnn", "stages=two", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = results(run_dir / "stage1"), results(run_dir)
    # stage 1: binary activations on real weights; stage 2: both binary, from stage 1's best weights
    assert (first["bits_w"], first["bits_a"], second["bits_w"], second["bits_a"]) == (32, 1, 1, 1)
    assert second["init_from"] == str(run_dir / "stage1") and first["init_from"] is None
    assert "stage 1 of 2 (method.weight_quantizer=null" in proc.stdout
    assert f"weights from {run_dir / 'stage1'} (init_from)" in proc.stdout
    stage1_best = (run_dir / "stage1" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    proc = run_cli(*args[:-2], "trainer.max_epochs=3", args[-1])  # extended: stage 1 too
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and results(run_dir / "stage1")["epochs"] == 3
    proc = run_cli(*args[:-2], "trainer.max_epochs=3", args[-1])
    assert proc.returncode == 0 and f"stage 1 of 2 is done in {run_dir / 'stage1'}" in proc.stdout
    assert (run_dir / "stage1" / "checkpoints" / "best.ckpt").stat().st_mtime_ns >= stage1_best


def test_a_sweep_over_stage_two_settings_trains_stage_one_once(run_cli, tmp_path):
    pinned = 'two_stage=["method.weight_quantizer=null","optim.lr=0.005"]'
    proc = run_cli(
        "-m", *SMALL, "method=bnn", "stages=two", pinned, "trainer.max_epochs=1", "optim.lr=0.01,0.002"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (stage1,) = tmp_path.glob("multirun/*/*/stage1_*")
    jobs = sorted(tmp_path.glob("multirun/*/*/[0-9]*/results.json"))
    assert [json.loads(j.read_text())["lr"] for j in jobs] == [0.01, 0.002]
    assert {json.loads(j.read_text())["init_from"] for j in jobs} == {str(stage1)}
    assert results(stage1)["lr"] == 0.005 and proc.stdout.count("is done in") == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("two_stage=[method.weight_quantizr=null]", "two_stage: cannot apply 'method.weight_quantizr=null'"),
        ("init_from=/nowhere", "two_stage and init_from both say where this run's weights start"),
    ],
)
def test_a_two_stage_mistake_is_refused_in_one_line(run_cli, tmp_path, override, message):
    proc = run_cli(*SMALL, "method=bnn", "stages=two", override.replace("[", '["').replace("]", '"]'))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_in_launches_of_many_processes_each_job_of_a_sweep_trains_its_own_stage_one(
    monkeypatch, tmp_path, capsys
):
    """Jobs of a sweep share one stage 1 behind a lock that one process takes; in torchrun (or
    SLURM) launches the ranks of a job could not agree on who trains it, so each job keeps its own,
    in its folder, and rank zero says so. (Both stages in a real launch: tests/test_launch.py.)"""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fewmult.config import compose_config
    from fewmult.run.job import stage1_folder
    from fewmult.stages.two_stage import fingerprint, stage1_config

    cfg = compose_config(
        *SMALL, "method=bnn", "stages=two", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}"
    )
    assert HydraConfig.get().mode == RunMode.MULTIRUN
    first, job = stage1_config(cfg), tmp_path / "0"
    assert stage1_folder(first, job) == tmp_path / f"stage1_{fingerprint(first)}"  # shared by the sweep
    assert capsys.readouterr().out == ""
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    assert stage1_folder(first, job) == job / "stage1"
    assert f"each job of a sweep trains its own stage 1, here in {job / 'stage1'}" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")
    assert stage1_folder(first, job) == job / "stage1" and capsys.readouterr().out == ""  # rank zero says it
