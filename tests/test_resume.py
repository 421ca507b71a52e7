"""Exact resume: ``python -m fewmult.train`` killed with SIGKILL anywhere and relaunched with the very
same command (as SLURM requeues a job) ends exactly as the run that was never killed.

The kills come from :class:`tests.faults.KillAt`, an ordinary callback passed through the
``callbacks`` config key; checkpointing is fewmult's own. One setup is killed at every point in one
sequence of launches, the others once (SETUP_STOPS), then each completes; its ``metrics.csv``
(all columns but ``epoch_seconds``), ``layers.csv`` and ``results.json`` (all but timings) must
equal those of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from fewmult.checkpointing import progress
from tests import fakedata
from tests.conftest import REPO, cli
from tests.faults import POINTS

EPOCHS = 5  # launch()'s default trainer.max_epochs
# (point, epoch, signal[, batch]): one kill per launch, in this order; the launch after the last
# completes. Two kills share an epoch where the relaunch reruns it: the second lands in the rerun.
# Every point of tests.faults.POINTS, a SIGKILL and a SIGTERM inside an epoch: inside epoch 3 a SIGKILL
# lands after batch 4 of 6, so the relaunch continues from the checkpoint written after batch 4
# (checkpoint.every_steps=2), and the SIGTERM saves itself after its batch.
KILLS = [
    ("validation", 1, "KILL"),
    ("epoch_end", 1, "KILL"),
    ("checkpoint_write", 2, "KILL"),
    ("train_batch", 3, "KILL", 4),
    ("epoch_start", 4, "KILL"),
    ("train_batch", 4, "TERM"),
]
TINY_LSTM = [
    "dataset=text",
    "dataset.max_bytes=30000",
    "dataset.block_size=2000",
    "dataset.seq_len=20",
    "dataset.batch_size=32",
    "model.hidden_size=32",
    "optim.lr=0.01",
]
SMALL_MLP = ["dataset=synthetic", "model.arch=256FC-256FC"]  # still BN after every layer
SETUPS = {
    # the quantizer draws from torch.rand (the global generator), QBP from its hashed stream
    # ... with Lin et al.'s code around the step: BN re-estimated in their form from the epoch's
    # order, a new order every 2 epochs, whole-batch scoring
    "tc+qbp+torch_rng+lin_code": [
        *SMALL_MLP,
        "method=tc",
        "qbp=true",
        "method.weight_quantizer.rng=torch",
        "procedure=lin2016_code",
    ],
    "lstm+lab": [*TINY_LSTM, "method=lab"],
    # ReActNet's ResNet-20 (RSign thresholds, RPReLU, per-channel scales) on augmented batches, its
    # binary weights flipped by Bop (the gradients' moving averages), the rest trained by Adam
    "resnet20+reactnet+crop_flip+bop": [
        "dataset=synthetic",
        *("dataset.n_train=200", "dataset.n_val=100", "dataset.n_test=100", "dataset.batch_size=50"),
        "dataset.augment=crop_flip",
        "model=resnet20",
        "method=reactnet",
        "optim=bop",
        "optim.threshold=1e-6",  # flips in the first steps: the resumed averages decide which
    ],
    # IR-Net's EDE gradient follows the epoch: a relaunch inside epoch 1 must train with epoch 1's t
    # (10x epoch 0's here), not the one a fresh model starts with
    "resnet20+irnet": [
        "dataset=synthetic",
        *("dataset.n_train=200", "dataset.n_val=100", "dataset.n_test=100", "dataset.batch_size=50"),
        "model=resnet20",
        "method=irnet",
    ],
}
TIMINGS = {"train_seconds", "started_at", "finished_at"}
KILL_BATCH = 1  # tests.faults.KillAt's default: train_batch kills after this batch (0-based)
Kill = tuple  # (point, epoch, signal) or (point, epoch, signal, batch) for train_batch


def _batch(kill: Kill) -> int:
    return kill[3] if len(kill) > 3 else KILL_BATCH


def launch(
    run_dir: Path, *args: str, epochs: int = EPOCHS, timeout: float = 300
) -> subprocess.CompletedProcess:
    """One launch of the real entry point into ``run_dir``."""
    args = (f"hydra.run.dir={run_dir}", f"trainer.max_epochs={epochs}", *args)
    return cli(run_dir.parent, *args, timeout=timeout, PYTHONPATH=str(REPO))


def kill_callbacks(markers: Path, kills: list[Kill], in_folder: list[str] | None = None) -> str:
    """``KillAt`` callbacks, one per kill (each only in run folders of that name, when given)."""
    items = [
        f"{{_target_:tests.faults.KillAt,at:{at},epoch:{epoch},signal:{sig},batch:{_batch(kill)},"
        f"marker:{markers / str(n)}" + (f",in_folder:{in_folder[n]}}}" if in_folder else "}")
        for n, kill in enumerate(kills)
        for at, epoch, sig in [kill[:3]]
    ]
    return f"callbacks=[{','.join(items)}]"


TIMING_COLUMNS = {"epoch_seconds", "train/data_wait"}


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def results(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "results.json").read_text()).items() if k not in TIMINGS}


def partial_checkpoints(run_dir: Path) -> list[Path]:
    return list((run_dir / "checkpoints").glob(".last.ckpt.*.tmp"))


def kill_and_relaunch(
    tmp_path: Path, args: list[str], kills: list[Kill], every_steps: int | None, epochs: int
) -> Path:
    """Launch with the kills armed until a launch completes; check what each kill left behind
    (``every_steps``: the run's ``checkpoint.every_steps``)."""
    run_dir, markers = tmp_path / "killed", tmp_path / "markers"
    markers.mkdir()
    callbacks = kill_callbacks(markers, kills)
    for n, kill in enumerate(kills):
        at, epoch, sig = kill[:3]
        proc = launch(run_dir, *args, "logger=none", callbacks, epochs=epochs)
        assert (markers / str(n)).is_file(), f"the launch died before reaching {at}: {proc.stderr[-3000:]}"
        if sig == "KILL":
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        else:  # SIGTERM: Lightning stops after the batch; the job says so and does not exit 0
            assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
            assert "stopped by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr
            assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
        last = run_dir / "checkpoints" / "last.ckpt"
        done, batches = progress(torch.load(last, weights_only=True)) if last.is_file() else (0, 0)
        # killed before epoch `epoch` ended, so the newest checkpoint has `epoch` epochs done ...
        assert done == epoch, (at, done)
        if at == "train_batch":  # ... and SIGTERM saved the batches trained, a SIGKILL kept the last save
            trained = _batch(kill) + 1
            expected = (
                trained if sig == "TERM" else (trained - 1) // every_steps * every_steps if every_steps else 0
            )
            assert batches == expected, (kill, batches)
        if at == "checkpoint_write":  # the kill really landed inside the write
            (partial,) = partial_checkpoints(run_dir)
            assert partial.stat().st_size > 1 << 20
    proc = launch(run_dir, *args, "logger=none", callbacks, epochs=epochs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # from the last epoch's end, or from inside the epoch a SIGTERM or a mid-epoch checkpoint saved
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'} ({kills[-1][1]} epochs" in proc.stdout
    assert not partial_checkpoints(run_dir)  # the relaunch cleared the killed writer's leftovers
    return run_dir


def check_same_as_uninterrupted(
    tmp_path: Path,
    args: list[str],
    kills: list[Kill],
    every_steps: int | None = None,
    epochs: int = EPOCHS,
) -> None:
    """A run killed by ``kills`` and relaunched ends as the uninterrupted run of ``epochs`` epochs
    (the last kill's epoch must leave at least one epoch to train after it)."""
    reference = tmp_path / "reference"
    proc = launch(reference, *args, "logger=none", epochs=epochs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mid_epoch = [f"checkpoint.every_steps={every_steps}"] if every_steps else []
    killed = kill_and_relaunch(tmp_path, [*args, *mid_epoch], kills, every_steps, epochs)
    assert [int(r["epoch"]) for r in metric_rows(killed)] == list(range(epochs))
    assert metric_rows(killed) == metric_rows(reference)  # bit-identical to the printed digits
    # the diagnostics too: the relaunch drops a killed epoch's rows and takes its flip rates from last.ckpt
    assert (killed / "layers.csv").read_text() == (reference / "layers.csv").read_text()
    assert results(killed) == results(reference)
    assert results(killed)["status"] == "completed"


def test_a_run_killed_at_every_point_and_preempted_ends_as_if_never_killed(tmp_path):
    """The setup with the most state to resume: both kinds of random numbers (ternary connect drawing
    from torch's global generator, ``method.weight_quantizer.rng=torch``, which the relaunch takes from
    last.ckpt; QBP from its hashed stream), SGD with its schedule and the data order (Lin et al.'s: a
    new one every 2 epochs, with their BN re-estimation from it), through every kill point (KILLS),
    the SIGTERM in epoch 4, the first of an order."""
    assert {kill[0] for kill in KILLS} == set(POINTS)
    check_same_as_uninterrupted(tmp_path, SETUPS["tc+qbp+torch_rng+lin_code"], KILLS, every_steps=2)


# the setups with state tc+qbp lacks, one stop each inside an epoch (the edges are the matrix's):
# Adam's moments and LAB's scale with the LSTM's data order, ReActNet's parameters, the augmentation
# and Bop, IR-Net's epoch-dependent gradient (bc_det's state is a subset of tc+qbp's, LAB's MLP a
# subset of its LSTM: dropped for the suite's time budget) (in the second of two epochs: the relaunch
# takes everything from the first epoch's checkpoint, or from inside the epoch where EVERY_STEPS says)
SETUP_STOPS = {
    "lstm+lab": [("train_batch", 1, "KILL")],
    "resnet20+reactnet+crop_flip+bop": [("train_batch", 1, "KILL")],
    "resnet20+irnet": [("train_batch", 1, "KILL", 2)],  # resumed from inside epoch 1 (after batch 1)
}
EVERY_STEPS = {"resnet20+irnet": 2}  # checkpoints inside the epoch; the others resume from its start


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(SETUP_STOPS))
def test_every_setup_killed_ends_as_if_never_killed(tmp_path, setup):
    check_same_as_uninterrupted(
        tmp_path, SETUPS[setup], SETUP_STOPS[setup], every_steps=EVERY_STEPS.get(setup), epochs=2
    )


@pytest.mark.slow
def test_a_two_stage_run_killed_in_each_stage_ends_as_if_never_killed(tmp_path):
    """stages=two: SIGKILL inside stage 1, then inside stage 2 (which starts from stage 1's best
    weights); each relaunch is the very same command. Both stages end as the uninterrupted ones."""
    args = [*SMALL_MLP, "method=bnn", "stages=two", "trainer.max_epochs=2"]
    reference, killed, markers = tmp_path / "reference", tmp_path / "killed", tmp_path / "markers"
    markers.mkdir()
    assert launch(reference, *args, "logger=none").returncode == 0
    kills = [("train_batch", 1, "KILL"), ("validation", 1, "KILL")]
    callbacks = kill_callbacks(markers, kills, in_folder=["stage1", "killed"])
    for n, folder in enumerate((killed / "stage1", killed)):
        proc = launch(killed, *args, "logger=none", callbacks)
        assert proc.returncode == -signal.SIGKILL and (markers / str(n)).is_file(), proc.stderr[-3000:]
        assert not (folder / "results.json").is_file() or results(folder)["status"] != "completed"
    proc = launch(killed, *args, "logger=none", callbacks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"stage 1 of 2 is done in {killed / 'stage1'}" in proc.stdout
    for stage in ("stage1", "."):
        assert metric_rows(killed / stage) == metric_rows(reference / stage)
        assert (killed / stage / "layers.csv").read_text() == (reference / stage / "layers.csv").read_text()
    ours, theirs = results(killed), results(reference)
    assert (ours.pop("init_from"), theirs.pop("init_from")) == (
        str(killed / "stage1"),
        str(reference / "stage1"),
    )
    assert ours == theirs and ours["status"] == "completed"


@pytest.mark.slow
def test_a_streamed_imagenet_run_killed_inside_an_epoch_ends_as_if_never_killed(tmp_path):
    """dataset=imagenet (real JPEG files decoded by a DataLoader worker, random resized crops drawn
    per image and epoch): a SIGKILL after batch 2 of 3 in epoch 1, with a checkpoint after every
    batch, and a SIGTERM after batch 1 of epoch 2 (the last); the relaunches continue inside those epochs."""
    fakedata.write_image_folder(tmp_path / "data")
    args = [
        "dataset=imagenet",
        "paper=liu2018",
        "method=bireal",
        "model=resnet20",
        f"dataset.root={tmp_path / 'data'}",
        *("dataset.image_size=16", "dataset.resize=18", "dataset.val_size=6", "dataset.batch_size=8"),
        "dataset.workers=1",
    ]
    kills = [("train_batch", 1, "KILL", 1), ("train_batch", 2, "TERM", 0)]
    check_same_as_uninterrupted(tmp_path, args, kills, every_steps=1, epochs=3)


def test_a_checkpoint_every_few_minutes_is_written_inside_the_epoch_and_resumed_from(tmp_path):
    """checkpoint.every_minutes: the clock is read every 25 batches (here always past due), so a
    SIGKILL after batch 28 of 30 in epoch 1 leaves the checkpoint of batch 25, and the relaunch
    continues from there."""
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    args = [*SMALL_MLP, "dataset.batch_size=20", "trainer.max_epochs=2", "checkpoint.every_minutes=1e-6"]
    kill = f"callbacks=[{{_target_:tests.faults.KillAt,at:train_batch,epoch:1,batch:27,marker:{marker}}}]"
    first = launch(run_dir, *args, "logger=none", kill)
    assert first.returncode == -signal.SIGKILL and marker.is_file(), first.stderr[-3000:]
    assert progress(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)) == (1, 25)
    again = launch(run_dir, *args, "logger=none", kill)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(1 epochs and 25 training batches of epoch 1 done)" in again.stdout
