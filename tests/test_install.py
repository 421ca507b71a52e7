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


@pytest.mark.slow
def test_the_wheel_installs_and_trains_from_any_folder(tmp_path):
    source, dist, site, elsewhere = (tmp_path / d for d in ("source", "dist", "site", "elsewhere"))
    tracked = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, tracked):  # what a clean checkout holds
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = _run(
        *pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(dist), cwd=tmp_path
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("fewmult-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    assert sorted(n.removeprefix("fewmult/conf/") for n in names if n.startswith("fewmult/conf/")) == configs
    assert "fewmult/published.csv" in names and "hydra_plugins/fewmult_gpu_pool/launcher.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    assert any(n.startswith("fewmult/runtime/_kernels") for n in names)  # the compiled kernels, built

    installed = _run(*pip, "install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
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
