"""From launch to the first training step, per method: what a sweep's every job pays before it trains.

Two measurements, each method launched as a user launches it (``python -m fewmult.train
method=M``, on the small generated dataset, one epoch, no logger):

* **Alone**, with warm caches (one unmeasured launch of each kind first fills inductor's cache,
  ``TORCHINDUCTOR_CACHE_DIR`` or ``/tmp/torchinductor_<user>``, and the packages compiled ahead of
  time in it): launches whose fused functions go to ``torch.compile`` (``FEWMULT_AOT=0``)
  interleaved with launches that load packages compiled ahead of time (:mod:`fewmult.quant.ahead`,
  the default on the CPU), ``ROUNDS`` of each, medians. Seconds since launch at the end of the job's
  imports, at Lightning's ``setup`` (after the config checks, the data and the model) and at the end
  of the first training step (its forward, backward and optimizer step), and the first step's
  distance from the end of the imports (issue 23's measure; the launch runs its imports before its
  config checks, see ``IMPORTS_FIRST``).
* **In a sweep**: four jobs (``seed=1,2,3,4``) through ``hydra/launcher=gpu_pool`` on one CPU slot,
  with a fresh process for every job (``jobs_per_process=1``) and with the slot's one process
  (the default). Seconds from each job's launch (the header of its ``output.log``) to the end of its
  first training step, and the sweep's wall-clock time.

A callback passed through the ``callbacks`` key (:class:`Marks`) prints the clock at both points.

Run: ``python -m benchmarks.bench_startup [--methods fp,lab,...] [--sweep-methods fp,bnn,...]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L

from fewmult.config import CONF_DIR

METHODS = "fp,bc_det,bc_stoch,tc,bwn,lab,lab2,bnn,xnor,bireal,reactnet"
SWEEP_METHODS = "fp,bc_stoch,bnn,reactnet"
SEEDS = "1,2,3,4"
ROUNDS = 2


class Marks(L.Callback):
    """Prints ``mark NAME UNIX_TIME`` at set-up and after the first training step."""

    def __init__(self) -> None:
        self.stepped = False

    @staticmethod
    def _mark(name: str) -> None:
        print(f"mark {name} {time.time():.3f}", flush=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._mark("fit")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.stepped:
            self.stepped = True
            self._mark("step")


def _marks(text: str) -> dict[str, float]:
    return {name: float(t) for name, t in re.findall(r"^mark (\w+) ([\d.]+)$", text, re.MULTILINE)}


def _args(method: str) -> list[str]:
    # Bi-Real and ReActNet: a ResNet, and a constant schedule (theirs needs two epochs; one is timed)
    network = ["model=resnet20", "schedule=constant"] if method in ("bireal", "reactnet") else []
    return [
        f"method={method}",
        "dataset=synthetic",
        *network,
        "trainer.max_epochs=1",
        "logger=none",
        "diagnostics=false",
        "callbacks=[{_target_:benchmarks.bench_startup.Marks}]",
    ]


# ``python -m fewmult.train`` with the job's imports done first and their end marked: the launch
# then checks its config after them instead of before (the same work in another order), so the
# first step's distance from this mark is at least the distance from the end of a plain launch's
# imports
IMPORTS_FIRST = (
    "import runpy, time; import fewmult.run.job; print(f'mark imports {time.time():.3f}', flush=True); "
    "runpy.run_module('fewmult.train', run_name='__main__')"
)


def _train(args: list[str], launch: tuple[str, ...] = ("-m", "fewmult.train"), **env: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(CONF_DIR.parent), **env}
    proc = subprocess.run(
        [sys.executable, *launch, *args], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def alone(method: str, folder: Path, ahead: bool) -> dict[str, float]:
    """Seconds from launch to the end of the imports (``imports``), to set-up (``fit``) and to the
    end of the first step (``step``), with packages compiled ahead of time or torch.compile."""
    launched = time.time()
    args = [*_args(method), f"hydra.run.dir={folder}"]
    marks = _marks(_train(args, ("-c", IMPORTS_FIRST), FEWMULT_AOT="1" if ahead else "0"))
    return {name: t - launched for name, t in marks.items()}


def in_sweep(method: str, folder: Path, jobs_per_process: str) -> tuple[list[float], float]:
    """Seconds from each job's launch to its first step, in job order, and the sweep's wall time."""
    started = time.time()
    _train(
        [
            "-m",
            "hydra/launcher=gpu_pool",
            "hydra.launcher.devices=[cpu]",
            f"hydra.launcher.jobs_per_process={jobs_per_process}",
            f"hydra.sweep.dir={folder}",
            *_args(method),
            f"seed={SEEDS}",
        ]
    )
    wall = time.time() - started
    seconds = []
    for job in range(len(SEEDS.split(","))):
        log = (folder / str(job) / "output.log").read_text()
        launched = re.search(r"^=== gpu_pool: launched on \S+ at ([\d-]+ [\d:.]+),", log, re.MULTILINE)
        seconds.append(_marks(log)["step"] - datetime.fromisoformat(launched.group(1)).timestamp())
    return seconds, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=METHODS, help="launched alone ('' for none)")
    parser.add_argument("--sweep-methods", default=SWEEP_METHODS, help="swept ('' for none)")
    parser.add_argument("--folder", default="outputs/bench_startup", help="where the runs go")
    args = parser.parse_args()
    root = Path(args.folder)
    if methods := [m for m in args.methods.split(",") if m]:
        columns = "imports | set-up | first step | first step - imports"
        print(f"| method | torch.compile: {columns} | ahead of time: {columns} |")
        print("|---|" + "---|" * 8)
        for method in methods:
            cells: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for ahead in (False, True):  # warm-up: fills the caches, unmeasured
                alone(method, root / f"{method}_{time.time_ns()}", ahead)
            for _ in range(ROUNDS):  # interleaved: this machine's noise falls on both alike
                for ahead in (False, True):
                    cells[ahead].append(alone(method, root / f"{method}_{time.time_ns()}", ahead))
            for launch in (*cells[False], *cells[True]):
                launch["after imports"] = launch["step"] - launch["imports"]
            medians = [
                f"{statistics.median(m[mark] for m in cells[ahead]):.1f} s"
                for ahead in (False, True)
                for mark in ("imports", "fit", "step", "after imports")
            ]
            print(f"| {method} | " + " | ".join(medians) + " |", flush=True)
    if methods := [m for m in args.sweep_methods.split(",") if m]:
        print(f"\nfour jobs (seed={SEEDS}) on one CPU slot of gpu_pool: launch to first step, per job")
        print("| method | a process per job: jobs 1-4 | sweep | one process: job 1 | jobs 2-4 | sweep |")
        print("|---|---|---|---|---|---|")
        for method in methods:
            fresh, fresh_wall = in_sweep(method, root / f"{method}_fresh_{time.time_ns()}", "1")
            kept, kept_wall = in_sweep(method, root / f"{method}_kept_{time.time_ns()}", "null")
            print(
                f"| {method} | {statistics.median(fresh):.1f} s (median) | {fresh_wall:.1f} s "
                f"| {kept[0]:.1f} s | {', '.join(f'{s:.2f}' for s in kept[1:])} s | {kept_wall:.1f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
