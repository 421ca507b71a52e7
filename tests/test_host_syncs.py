"""No host-device synchronisation on the training path: a training step of every method (with and
without QBP, MLP, CNN and LSTM, float32 and bf16-mixed), run by the real trainer, reads no more
tensors back to the host than a plain PyTorch step with the same optimizer. On CUDA the same steps
run under ``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import json

import pytest
import torch

from fewmult.config import compose_config
from fewmult.run.job import train
from fewmult.syncs import HostSyncCount, count_scalar_reads
from tests.test_lstm import TINY_TEXT
from tests.test_methods_train import IDS, METHOD_CASES, VARIANTS, method_args

MLP = ["dataset=synthetic", "model=mlp", "model.arch=64FC", "logger=none"]
CNN = ["dataset=synthetic", "model=cnn", "model.arch=4C3-MP2-16FC", "logger=none"]


def scalar_reads(tmp_path, *overrides: str) -> dict:
    out = tmp_path / "syncs.json"
    cfg = compose_config(
        *overrides,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=6",  # the window is batches 2-4, whole steps before the last
        f"callbacks=[{{_target_: fewmult.syncs.HostSyncCount, out: '{out}', first: 2, steps: 3}}]",
    )
    assert train(cfg, tmp_path / "run")["status"] == "completed"
    return json.loads(out.read_text())


def test_the_counter_sees_a_scalar_read():
    # the positive control: one .item() on a tensor is one count (else the tests below prove nothing)
    with torch.profiler.profile() as prof:
        torch.ones(3).sum().item()
    assert count_scalar_reads(prof) == 1


@pytest.mark.parametrize("method, qbp", METHOD_CASES)
def test_a_training_step_reads_back_what_a_plain_pytorch_step_reads(tmp_path, method, qbp):
    counts = scalar_reads(tmp_path, *MLP, *method_args(method, qbp))
    assert counts["scalar_reads"] == counts["plain_scalar_reads"]


@pytest.mark.parametrize(
    "overrides",
    [
        [*CNN, "method=tc", "qbp=true"],
        [*CNN, "method=tc", "qbp=true", "qbp_settings=authors_code"],
        [*CNN, "method=lab2"],
        [*TINY_TEXT, "method=lab", "optim.lr=0.01"],
        [*TINY_TEXT, "method=bc_stoch", "qbp=true", "optim.lr=0.01"],
        [*MLP, "method=lab", "trainer.precision=bf16-mixed"],
        [*MLP, "method=tc", "qbp=true", "trainer.precision=bf16-mixed"],
    ],
    ids=[
        "cnn-tc+qbp",
        "cnn-tc+authors-qbp",
        "cnn-lab2",
        "lstm-lab",
        "lstm-bc_stoch+qbp",
        "bf16-lab",
        "bf16-tc+qbp",
    ],
)
def test_convolutions_the_lstm_and_mixed_precision_make_no_extra_reads(tmp_path, overrides):
    counts = scalar_reads(tmp_path, *overrides)
    assert counts["scalar_reads"] == counts["plain_scalar_reads"]


def test_adam_reads_its_step_counter_and_sgd_nothing(tmp_path):
    # what the baseline is made of (measured in the issue: Adam 2 per step for 2 tensors, SGD 0)
    adam = scalar_reads(tmp_path / "adam", *MLP, "method=lab")
    sgd = scalar_reads(tmp_path / "sgd", *MLP, "method=fp")
    assert adam["plain_scalar_reads"] > 0
    assert sgd["plain_scalar_reads"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: set_sync_debug_mode checks CUDA syncs")
@pytest.mark.parametrize("method, qbp", VARIANTS, ids=IDS)
def test_no_cuda_sync_in_a_training_step(tmp_path, method, qbp):
    # HostSyncCount turns set_sync_debug_mode("error") on over its window: a sync raises there
    counts = scalar_reads(tmp_path, *MLP, "trainer=auto", *method_args(method, qbp))
    assert counts["scalar_reads"] == counts["plain_scalar_reads"]


def test_the_sync_window_is_whole_steps():
    with pytest.raises(ValueError, match="first"):
        HostSyncCount("x.json", first=0)
