"""The device by default (trainer=auto), the first line of a run, and where its setup came from."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fewmult.config import compose_config
from fewmult.provenance import setup_line
from fewmult.rundir import config_changes, task_config


def resolved_trainer(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(*overrides).trainer, resolve=True)


def test_without_a_trainer_choice_a_visible_gpu_is_used(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = resolved_trainer()
    assert (on_cpu["accelerator"], on_cpu["deterministic"]) == ("cpu", True)  # CPU runs repeat exactly
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = resolved_trainer()
    assert (on_gpu["accelerator"], on_gpu["deterministic"]) == ("cuda", False)  # the fastest kernels
    assert resolved_trainer("trainer=cpu")["accelerator"] == "cpu"  # an explicit choice stays
    ddp = resolved_trainer("trainer=ddp")
    assert (ddp["accelerator"], ddp["strategy"], ddp["devices"]) == ("cuda", "ddp_spawn", 2)


def test_a_cpu_run_is_not_continued_on_a_gpu_unasked(monkeypatch):
    # run_config.yaml records the device actually used, so the relaunch check names the change
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recorded = task_config(compose_config("dataset=synthetic"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    changes = config_changes(recorded, task_config(compose_config("dataset=synthetic")))
    assert changes == [("trainer.accelerator", "cpu", "cuda"), ("trainer.deterministic", True, False)]


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (
            ["method=lab2", "dataset=svhn"],
            [
                "fewmult: lab2 on svhn | cpu, precision 32-true",
                "paper hou2017 (method/lab2)",
                "recipe hou2017_svhn",
                "model hou2017_cnn_svhn = model/auto/hou2017_svhn (train.yaml)",
                "optimizer adam (paper/hou2017)",
                "schedule step (paper/hou2017)",
                # the method lowers the lr for binary activations, to the recipe's value
                "lr 0.0005 (method/lab2 = recipe.lr_binary_activations of recipe/hou2017_svhn)",
                "batch 50 (recipe/hou2017_svhn)",
                "epochs 50 (recipe/hou2017_svhn)",
            ],
        ),
        (
            ["method=lab", "dataset=svhn", "optim.lr=0.01", "model=mlp", "trainer.precision=bf16-mixed"],
            ["precision bf16-mixed", "model mlp (command line)", "lr 0.01 (command line)"],
        ),
        (
            ["+experiment=lin2016_cifar10_tc_qbp", "trainer=ddp"],
            ["fewmult: tc+qbp on cifar10 | 2 x cpu", "paper lin2016 (experiment/lin2016_cifar10_tc_qbp)"],
        ),
        (
            # a text dataset brings Hou et al.'s optimizer and schedule; its recipe builds on another
            ["dataset=text", "method=lab"],
            [
                "paper hou2017 (method/lab)",
                "optimizer adam (dataset/text)",
                "schedule delayed_exponential (dataset/text)",
                "lr 0.002 (recipe/hou2017_warpeace)",
                "epochs 10 (recipe/hou2017_text)",
            ],
        ),
    ],
    ids=["recipe", "command-line", "preset", "included-recipe"],
)
def test_the_first_line_says_where_the_setup_came_from(monkeypatch, overrides, parts):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = setup_line(compose_config(*overrides))
    missing = [p for p in parts if p not in line]
    assert not missing, line


SLURM_2x4 = {
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_JOB_ID": "777",
}
TORCHRUN_1x2 = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc"}


@pytest.mark.parametrize(
    "env, strategy, devices, nodes, folder",
    [
        ({}, "ddp_spawn", 2, 1, None),
        (SLURM_2x4, "ddp", 4, 2, "slurm-777"),  # srun or submitit with nodes=2, tasks_per_node=4
        (TORCHRUN_1x2, "ddp", 2, 1, "torchrun-abc"),
    ],
)
def test_trainer_ddp_joins_the_processes_a_launcher_started(
    monkeypatch, env, strategy, devices, nodes, folder
):
    """Inside a launch every process is a rank: Lightning's ddp joins them, devices and nodes follow
    the launch, and the auto-named run folder is the launch's (the same on every rank)."""
    for key in (
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "TORCHELASTIC_RUN_ID",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ddp = resolved_trainer("trainer=ddp", "trainer.accelerator=cpu")
    assert (ddp["strategy"], ddp["devices"], ddp["num_nodes"]) == (strategy, devices, nodes)
    from fewmult.run.ranks import shared_run_dir

    shared = shared_run_dir("outputs/2026-12-05/10-00-00")
    assert shared == (f"outputs/2026-12-05/{folder}" if folder else None)


def test_a_launch_without_an_id_must_name_its_folder(monkeypatch):
    for key, value in {**TORCHRUN_1x2, "TORCHELASTIC_RUN_ID": "none"}.items():
        monkeypatch.setenv(key, value)
    from fewmult.errors import UserError
    from fewmult.run.ranks import shared_run_dir

    with pytest.raises(UserError, match=r"hydra\.run\.dir=runs/NAME"):
        shared_run_dir("outputs/2026-12-05/10-00-00")
