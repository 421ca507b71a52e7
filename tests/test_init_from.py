"""``init_from=RUN_DIR`` through ``python -m fewmult.train``: a run starts from another run's best
weights (not its optimizer state), says so, records it, and refuses a network that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewmult.stages.init_from import trained_weights
from tests.conftest import trained_run

SMALL = ["dataset=synthetic", "model=mlp", "model.arch=64FC", "logger=none", "method=bnn"]


def best_weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of SMALL trained for 3 epochs (both tests start from it)."""
    return trained_run(tmp_path_factory.mktemp("init_from") / "stage1", *SMALL, "trainer.max_epochs=3")


def test_a_run_starts_from_another_runs_best_weights(run_cli, trained, tmp_path):
    first = trained
    trained_results = json.loads((first / "results.json").read_text())
    # learning switched off: what the second run evaluates is the first run's network
    frozen = ["optim.lr=1e-12", "trainer.max_epochs=2"]
    second, fresh = tmp_path / "stage2", tmp_path / "fresh"
    proc = run_cli(*SMALL, *frozen, f"init_from={first}", f"hydra.run.dir={second}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"weights from {first} (init_from)" in proc.stdout.splitlines()[0]
    trained_run(fresh, *SMALL, *frozen)
    started, untrained = (json.loads((d / "results.json").read_text()) for d in (second, fresh))
    assert started["init_from"] == str(first) and untrained["init_from"] is None
    # measured (seed 0): test error 0.04 trained, 0.05 started from it (BN's running statistics move
    # in its epochs), 0.91 untrained
    assert trained_results["test_error"] < 0.15 and untrained["test_error"] > 0.6
    assert abs(started["test_error"] - trained_results["test_error"]) <= 0.05
    theirs, ours = best_weights(first), best_weights(second)
    params = [k for k in theirs if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-8) for k in params)  # moved by lr 1e-12 only
    assert not any(torch.allclose(best_weights(fresh)[k], theirs[k]) for k in params if k.endswith("weight"))


def test_a_network_that_does_not_fit_is_refused_before_a_folder_is_made(run_cli, trained, tmp_path):
    wider, missing = tmp_path / "wider", tmp_path / "nowhere"
    proc = run_cli(*SMALL, "model.arch=128FC", f"init_from={trained}", f"hydra.run.dir={wider}")
    assert proc.returncode == 2 and "its network does not fit this one" in proc.stderr
    assert "(64, 784) there, (128, 784) here" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(*SMALL, f"init_from={missing}")
    assert (
        proc.returncode == 2
        and f"init_from={missing}: {missing / 'run_config.yaml'} is missing" in proc.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no outputs/


def test_trained_weights_are_parameters_and_bn_statistics_not_a_quantizers_state():
    from fewmult.build import build_model
    from fewmult.config import compose_config

    model = build_model(compose_config("dataset=synthetic", "method=lab", "model.arch=64FC"), (1, 28, 28), 10)
    names = set(trained_weights(model))
    assert {n for n, _ in model.named_parameters()} < names
    assert any(n.endswith("running_var") for n in names) and not any("alpha_last" in n for n in names)
