"""From launch to the first training step, per method: what a sweep's every job pays before it trains.

Each method is launched as a user launches it (``python -m fewmult.train method=M``, on the small
generated dataset, one epoch, no logger), twice in a row: the first launch may compile fewmult's fused
kernels (``torch.compile``; inductor keeps them in its cache folder, ``TORCHINDUCTOR_CACHE_DIR`` or
``/tmp/torchinductor_<user>``, shared by the jobs of a machine), the second finds them there. A
callback passed through the ``callbacks`` key (:class:`Marks`) prints the seconds since launch at:

* ``fit``: Lightning's ``setup``, after the imports, the config checks, the data and the model;
* ``step``: the end of the first training step (its forward, backward and optimizer step).

``step - fit`` is what the goal "first step within 2 s of the end of imports" measures at most (it
also holds Lightning's own set-up of the loop).

Run: ``python -m benchmarks.bench_startup [--methods fp,lab,...]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

from fewmult.config import CONF_DIR

LAUNCHED = "FEWMULT_BENCH_LAUNCHED_AT"  # the launch time, from the benchmark to the launched process
METHODS = "fp,bc_det,bc_stoch,tc,bwn,lab,lab2,bnn,xnor,bireal,reactnet"


class Marks(L.Callback):
    """Prints ``mark NAME SECONDS`` (seconds since the launch) at set-up and after the first step."""

    def __init__(self) -> None:
        self.launched = float(os.environ.get(LAUNCHED, time.time()))
        self.stepped = False

    def _mark(self, name: str) -> None:
        print(f"mark {name} {time.time() - self.launched:.2f}", flush=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._mark("fit")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.stepped:
            self.stepped = True
            self._mark("step")


def launch(method: str, folder: Path) -> dict[str, float]:
    # Bi-Real and ReActNet: a ResNet, and a constant schedule (theirs needs two epochs; one is timed)
    network = ["model=resnet20", "schedule=constant"] if method in ("bireal", "reactnet") else []
    args = [
        f"method={method}",
        "dataset=synthetic",
        *network,
        "trainer.max_epochs=1",
        "logger=none",
        "diagnostics=false",
        "callbacks=[{_target_:benchmarks.bench_startup.Marks}]",
        f"hydra.run.dir={folder}",
    ]
    env = {**os.environ, LAUNCHED: repr(time.time()), "PYTHONPATH": str(CONF_DIR.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "fewmult.train", *args], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f"method={method} failed: {proc.stderr[-2000:]}")
    marks = dict(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("mark "))
    return {name: float(seconds) for name, seconds in marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--folder", default="outputs/bench_startup", help="where the runs go")
    args = parser.parse_args()
    start = time.time()
    subprocess.run([sys.executable, "-c", "import fewmult.run.job"], check=True, timeout=300)
    print(f"a job's imports alone (python -c 'import fewmult.run.job'): {time.time() - start:.1f} s\n")
    columns = "set-up | first step | step - set-up"
    print(f"| method | launch 1: {columns} | launch 2: {columns} |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        cells = []
        for attempt in (1, 2):
            marks = launch(method, Path(args.folder) / f"{method}_{attempt}_{time.time_ns()}")
            cells += [
                f"{marks['fit']:.1f} s",
                f"{marks['step']:.1f} s",
                f"{marks['step'] - marks['fit']:.1f} s",
            ]
        print(f"| {method} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
