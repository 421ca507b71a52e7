"""``python -m benchmarks.gpu_check`` passes on this machine, as a user would run it before a sweep."""

from __future__ import annotations

import os

import pytest
import torch

from tests import prewarmed
from tests.conftest import REPO


@pytest.mark.slow  # about a minute (smaller networks on a CPU, where bf16 may be emulated)
def test_the_machine_check_passes_here(tmp_path):
    env = {**os.environ, "FEWMULT_DATA": str(tmp_path / "data"), "WANDB_MODE": "offline"}
    args = ["--methods", "fp,tc,reactnet", "--no-scale", "--steps", "2"]
    proc = prewarmed.run("benchmarks.gpu_check", args, REPO, env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("all checks passed")
    precisions = 3 if torch.cuda.is_available() else 2
    # fp once per paper of the MLP methods (tc: Lin et al.'s), the others once
    for label, networks in (("fp", 1), ("tc", 1), ("tc+qbp", 1), ("lstm fp", 1), ("resnet20 reactnet", 1)):
        rows = [line for line in proc.stdout.splitlines() if line.startswith(f"| {label} |")]
        assert len(rows) == networks * precisions, proc.stdout
    compiled = next(line for line in proc.stdout.splitlines() if line.startswith("torch.compile: compiled"))
    assert "_stochastic_ternary" in compiled and "_pow2_from_bits" in compiled and "_cell_forward" in compiled
    assert "_shifted_sign" in compiled and "_rprelu_backward" in compiled  # ReActNet's fused activations
