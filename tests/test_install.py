"""A wheel built from a clean copy of the repository installs (not editable) and trains from any
folder, with the Hydra configs that conf/ holds at the top of the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def build_wheel(tmp_path: Path, env: dict[str, str] | None = None) -> Path:
    """A wheel of what a clean checkout holds."""
    source, dist = tmp_path / "source", tmp_path / "dist"
    tracked = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, tracked):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    built = _run(
        *PIP,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        str(source),
        "-w",
        str(dist),
        cwd=tmp_path,
        env=env,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("fewmult-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_and_trains_from_any_folder(tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    assert sorted(n.removeprefix("fewmult/conf/") for n in names if n.startswith("fewmult/conf/")) == configs
    assert "fewmult/published.csv" in names and "hydra_plugins/fewmult_gpu_pool/launcher.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert any(n.startswith("fewmult/runtime/_kernels") for n in names)  # the compiled kernels, built

    installed = _run(*PIP, "install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    where = _run(
        sys.executable, "-c", "import fewmult.config as c; print(c.CONF_DIR)", cwd=elsewhere, env=env
    )
    assert where.stdout.strip() == str(site / "fewmult" / "conf"), where.stderr
    found = (
        "import sys; from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
        "print([sys.modules[p.__module__].__file__ for p in Plugins.instance().discover(Launcher)])"
    )
    plugins = _run(sys.executable, "-c", found, cwd=elsewhere, env=env)
    assert str(site / "hydra_plugins" / "fewmult_gpu_pool" / "launcher.py") in plugins.stdout, plugins.stderr
    kernels = _run(
        sys.executable,
        "-c",
        "import fewmult.runtime as r; print(r.unavailable_reason())",
        cwd=elsewhere,
        env=env,
    )
    assert kernels.stdout.strip() == "None", kernels.stdout + kernels.stderr
    args = ("dataset=synthetic", "model.arch=32FC", "trainer.max_epochs=1", "method=lab")
    trained = _run(sys.executable, "-m", "fewmult.train", *args, cwd=elsewhere, env=env)
    assert trained.returncode == 0, trained.stderr
    assert f"run saved to {elsewhere / 'outputs'}" in trained.stdout
    assert list((elsewhere / "outputs").rglob("results.json"))


@pytest.mark.slow
def test_without_a_c_compiler_it_installs_and_the_runtime_says_numpy(tmp_path):
    """The kernels are optional: a build whose C compiler fails gives a wheel without them, and the
    runtime runs the NumPy reference after one line saying why."""
    wheel = build_wheel(tmp_path, env={**os.environ, "CC": "false"})
    assert not any(n.startswith("fewmult/runtime/_kernels") for n in zipfile.ZipFile(wheel).namelist())
    site = tmp_path / "site"
    installed = _run(*PIP, "install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    code = "import fewmult.runtime as r; print(r.unavailable_reason()); print(r.best_isa(), r.max_threads())"
    probe = _run(sys.executable, "-c", code, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
    reason, isa = probe.stdout.strip().splitlines()
    assert "no compiled kernels" in reason and "NumPy reference" in reason, probe.stderr
    assert isa == "portable 1"
