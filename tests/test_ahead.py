"""Fused functions compiled ahead of time (fewmult.quant.ahead): what a package is keyed on, that
export ties no sizes the function does not, the check of a new package, refusals remembered, and a
second launch that trains without inductor's compiler."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from fewmult.quant import ahead
from fewmult.quant.activations import _shifted_sign_backward
from fewmult.quant.quantizers import _lab_alpha, _scaled_sign
from tests.conftest import REPO, imported_modules
from tests.test_resume import kill_callbacks


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Packages on, in a folder of the test's own, with no package loaded yet in this process."""
    monkeypatch.setenv(ahead.ENV, "1")
    monkeypatch.setattr(ahead, "folder", lambda: tmp_path / "aot")
    monkeypatch.setattr(ahead, "_RUNNERS", {})
    return tmp_path / "aot"


def test_a_package_serves_every_size_of_one_dtype_size_one_pattern_and_constants():
    w = torch.randn(64, 9)
    sig = ahead.signature(_lab_alpha, (w, w, 1e-8))
    assert ahead.signature(_lab_alpha, (torch.randn(3, 5), torch.randn(3, 5), 1e-8)) == sig
    assert ahead.signature(_lab_alpha, (torch.randn(1, 5), torch.randn(1, 5), 1e-8)) != sig  # a dim of 1
    assert ahead.signature(_lab_alpha, (w.double(), w.double(), 1e-8)) != sig  # a dtype
    assert ahead.signature(_lab_alpha, (w, w, 1e-6)) != sig  # a constant compiled in
    assert ahead.signature(_scaled_sign, (w, w)) != sig  # another function


def test_the_package_file_follows_the_thread_count(packages):
    sig = ahead.signature(_scaled_sign, (torch.randn(8), torch.tensor(0.5)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ahead.package_path(sig)
        torch.set_num_threads(2)
        assert ahead.package_path(sig) != one  # inductor compiles the thread count into its loops
    finally:
        torch.set_num_threads(threads)
    assert one.parent == packages and one.name.startswith("_scaled_sign-")


def test_a_package_is_keyed_on_the_sources_its_function_can_call_and_no_others():
    files = {
        path.relative_to(REPO).as_posix() for path in ahead.source_files(_shifted_sign_backward.__module__)
    }
    assert {"fewmult/quant/activations.py", "fewmult/quant/base.py"} <= files  # sign_plus lives in base
    assert not {"fewmult/train.py", "fewmult/module.py"} & files  # editing the trainer keeps packages


def test_export_ties_only_the_sizes_the_function_ties():
    """The batch and the row length are both 16 in the call that builds the package; the signature
    holds no equalities, so the program must not assume this one (a later call has 8 and 50)."""
    x = torch.randn(16, 4, 16)
    program = ahead.exported(_shifted_sign_backward, (x, torch.randn(1, 4, 1), torch.randn_like(x)))
    x_dims, t_dims, g_dims = (
        tuple(node.meta["val"].shape) for node in program.graph.nodes if node.op == "placeholder"
    )
    assert len({str(d) for d in x_dims}) == 3, x_dims  # batch, channels, row: three sizes
    assert g_dims == x_dims  # the gradient is shaped like x: the function itself ties these
    assert t_dims[0] == 1 and t_dims[2] == 1 and str(t_dims[1]) == str(x_dims[1])


def test_the_check_of_a_new_package_passes_rounding_and_catches_wrong_code():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    assert ahead.mismatch(x.sum().reshape(1), x.flip(0).sum().reshape(1)) is None  # another order
    assert ahead.mismatch(x.bfloat16() * 3, (x * 3).bfloat16()) is None  # bfloat16 rounding
    wrong = x.clone()
    wrong[7] = -wrong[7]
    assert "differs by up to" in ahead.mismatch(wrong, x)
    assert "instead of" in ahead.mismatch(x[:-1], x)  # a shape
    assert "results instead of" in ahead.mismatch((x, x), x)
    counts = torch.tensor([3, 4])
    assert "differs in 1 of 2" in ahead.mismatch(torch.tensor([3, 5]), counts)  # integers: exact


def test_packages_apply_to_nonempty_cpu_tensors_when_on(monkeypatch):
    monkeypatch.setenv(ahead.ENV, "1")
    assert ahead.applies((torch.randn(3), 0.5))
    assert not ahead.applies((torch.randn(0), 0.5))  # nothing to compile for
    assert not ahead.applies((torch.randn(3, device="meta"),))  # not the CPU: torch.compile
    assert not ahead.applies((0.5,))
    monkeypatch.setenv(ahead.ENV, "0")
    assert not ahead.applies((torch.randn(3),))


def _data_dependent(x: torch.Tensor) -> torch.Tensor:
    return x * 2 if x.sum() > 0 else x


def test_a_function_that_cannot_be_exported_is_refused_once_and_the_reason_kept(packages, monkeypatch):
    """Also: the attempt first deletes the packages and refusals unused for STALE_DAYS days."""
    packages.mkdir()
    stale, recent, lock = packages / "old-1.pt2", packages / "recent-2.pt2", packages / "old-1.lock"
    for path, days in ((stale, ahead.STALE_DAYS + 1), (recent, ahead.STALE_DAYS - 1), (lock, 400)):
        path.write_bytes(b"")
        when = time.time() - days * 86_400
        os.utime(path, (when, when))
    (packages / "old-2.refused").write_text("why\n")
    os.utime(packages / "old-2.refused", (0, 0))
    x = torch.ones(8)
    with pytest.warns(UserWarning, match="_data_dependent is not compiled ahead of time"):
        assert ahead.run_ahead(_data_dependent, (x,)) is None  # the caller goes to torch.compile
    (refusal,) = packages.glob("_data_dependent-*.refused")
    assert refusal.read_text().strip()  # why, for the user who reads the warning
    assert not stale.exists() and not (packages / "old-2.refused").exists()
    assert recent.exists() and lock.exists()  # lock files are never deleted (that races)

    def build_again(*args) -> None:
        raise AssertionError("a refused function was compiled again")

    monkeypatch.setattr(ahead, "_build", build_again)
    monkeypatch.setattr(ahead, "_RUNNERS", {})  # as a later process
    with pytest.warns(UserWarning, match=str(refusal.name)):
        assert ahead.run_ahead(_data_dependent, (x,)) is None


def test_a_launch_compiles_its_package_and_the_next_launch_trains_without_inductors_compiler(
    run_cli, tmp_path
):
    """``python -m fewmult.train`` with packages on and an empty inductor cache: the first launch
    compiles BinaryConnect's fused sign, the second loads it, imports none of inductor's compiler,
    and trains to the same numbers; a third, killed inside its epoch and relaunched (as a cluster
    requeues it), continues on the package to those numbers too."""
    env = {ahead.ENV: "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    args = ("method=bc_det", "dataset=synthetic", "trainer.max_epochs=1", "logger=none")
    first = run_cli(*args, "hydra.run.dir=first", **env)
    assert first.returncode == 0, first.stderr
    assert "compiling _scaled_sign ahead of time" in first.stdout + first.stderr
    (package,) = (tmp_path / "inductor" / ahead.FOLDER).glob("_scaled_sign-*.pt2")
    built = package.stat()

    second = run_cli(*args, "hydra.run.dir=second", PYTHONPROFILEIMPORTTIME="1", **env)
    assert second.returncode == 0, second.stderr
    assert "ahead of time" not in second.stdout + second.stderr
    imported = imported_modules(second.stderr)
    assert "torch._inductor.package" in imported  # the profile is there, and the package loaded
    assert "torch._inductor.compile_fx" not in imported
    loaded = package.stat()
    assert (
        loaded.st_ino == built.st_ino and loaded.st_size == built.st_size
    )  # not rewritten (replace: new inode)
    assert loaded.st_mtime_ns > built.st_mtime_ns  # its date renewed by the load: not pruned while in use

    def result(run: str) -> tuple:
        results = json.loads((tmp_path / run / "results.json").read_text())
        return results["val_loss"], results["test_loss"], results["val_error"]

    markers = tmp_path / "markers"
    markers.mkdir()
    killed = (
        *args,
        "hydra.run.dir=third",
        "checkpoint.every_steps=1",
        kill_callbacks(markers, [("train_batch", 0, "KILL")]),
    )
    third = run_cli(*killed, PYTHONPATH=str(REPO), **env)
    assert third.returncode == -signal.SIGKILL and (markers / "0").is_file(), third.stderr[-3000:]
    relaunched = run_cli(*killed, PYTHONPATH=str(REPO), **env)
    assert relaunched.returncode == 0, relaunched.stderr[-3000:]
    assert "resuming from" in relaunched.stdout and "1 training batches of epoch 0 done" in relaunched.stdout

    for run in ("second", "third"):
        assert result(run) == result("first")
        weights = [
            torch.load(tmp_path / r / "checkpoints" / "last.ckpt")["state_dict"] for r in ("first", run)
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
