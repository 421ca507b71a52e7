"""tests/prewarmed.py: a launch forked from the prewarmed interpreter starts, ends and reports as a
fresh ``python -m`` would, so the suite's process tests test what a user's launch does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import prewarmed
from tests.conftest import REPO

PROBE = "tests.startup_probe"


@pytest.fixture
def forking(monkeypatch):
    """Forks from the prewarmed interpreter, also when pytest runs without workers."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(prewarmed.FRESH_SWITCH, raising=False)
    monkeypatch.setenv("PROBE", "seen")


def _fresh(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_forked_launch_starts_and_ends_as_a_fresh_one(forking, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fresh = _fresh(["exit=3"], tmp_path, env)
    forked = prewarmed.run(PROBE, ["exit=3"], tmp_path, env, timeout=120)
    assert (forked.returncode, forked.stderr) == (fresh.returncode, fresh.stderr) == (3, "to stderr\n")
    started, fresh_started = json.loads(forked.stdout), json.loads(fresh.stdout)
    assert started.pop("torch_before_main") and not fresh_started.pop("torch_before_main")  # prewarmed
    assert started == fresh_started
    assert started["argv"] == [str(REPO / "tests/startup_probe.py"), "exit=3"]
    assert (started["path0"], started["cwd"], started["probe_env"]) == (str(tmp_path),) * 2 + ("seen",)


def test_its_output_ends_when_every_process_holding_it_has_closed_it(forking, tmp_path):
    """As with subprocess's pipes: what a DataLoader worker that outlives its launch still writes
    (and the flock it still holds) is waited for."""
    forked = prewarmed.run(PROBE, ["late_grandchild"], tmp_path, dict(os.environ), timeout=120)
    assert forked.returncode == 0 and forked.stdout.splitlines()[-1] == "late"


def test_a_killed_launch_reports_its_signal(forking, tmp_path):
    launched = prewarmed.popen(PROBE, ["sleep"], tmp_path, dict(os.environ))
    assert isinstance(launched, prewarmed.Forked)
    launched.send_signal(signal.SIGKILL)
    launched.communicate(timeout=60)
    assert launched.returncode == -signal.SIGKILL


@pytest.mark.parametrize("variable", ["PYTHONHASHSEED", "OMP_NUM_THREADS", "PYTHONPROFILEIMPORTTIME"])
def test_an_environment_read_at_startup_gets_a_fresh_interpreter(forking, tmp_path, variable):
    env = {**os.environ, "PYTHONPATH": str(REPO), variable: "2"}
    launched = prewarmed.popen(PROBE, ["exit=0"], tmp_path, env)
    assert isinstance(launched, subprocess.Popen)
    out, _ = launched.communicate(timeout=120)
    assert launched.returncode == 0 and not json.loads(out.splitlines()[-1])["torch_before_main"]


def test_a_launch_whose_interpreter_never_forks_fails_in_time_naming_the_module(monkeypatch, tmp_path):
    monkeypatch.setattr(prewarmed, "FORK_TIMEOUT", 1)
    server = prewarmed._Server()
    server.proc.send_signal(signal.SIGSTOP)  # alive, reading nothing: before this, waits had no end
    try:
        with pytest.raises(RuntimeError, match=rf"did not fork {PROBE} within 1 s"):
            server.launch(PROBE, [], tmp_path, dict(os.environ), tmp_path / "out", tmp_path / "err")
    finally:
        server.proc.kill()
        server.proc.wait()
