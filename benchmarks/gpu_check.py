"""One command to check a machine before a sweep: every method trains on its device at each precision.

On whatever device this process sees (the GPU if CUDA is visible, else the CPU), for every method
with and without QBP and the character LSTM, at each precision the device supports (32-true and
bf16-mixed; 16-mixed too on a GPU), it trains a few steps through ``fewmult.train``'s own entry
function and checks:

* **host syncs**: :class:`fewmult.syncs.HostSyncCount` counts the scalar reads of three steps
  against a plain PyTorch step with the same optimizer; on CUDA the same steps run under
  ``torch.cuda.set_sync_debug_mode("error")``, so any synchronising call fails the run;
* **torch.compile**: every function fewmult compiles (the hashed random numbers of the stochastic
  quantizers and QBP, the fused LSTM step, ...) compiled, rather than falling back to eager code,
  and none was recompiled so often (for new shapes, dtypes, settings) that Dynamo gave up on it;

and prints each step's time relative to full precision (``fp`` at 32-true, same paper, so same
network and optimizer) and to a plain PyTorch loop over the same network (the framework's cost),
then the per-epoch times of the paper setups (``benchmarks.bench_scale``, ImageNet's included) and
the images per second of ``dataset=imagenet``'s pipeline with its default workers on this machine's
CPUs (and, on a GPU, with ``dataset.decode=device``: nvJPEG), against the ImageNet ResNet-18's
training images per second (the pipeline must keep up).
Exits non-zero when a check fails.

Run: ``python -m benchmarks.gpu_check`` (``--steps``, ``--methods fp,lab``, ``--no-scale``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.bench_imagenet_pipeline import fewmult_loader, second_epoch_rate, write_jpegs
from benchmarks.bench_scale import print_scale_tables, seconds_per_step
from fewmult.build import build_model, optimizer_factory
from fewmult.config import compose_config
from fewmult.device import visible_accelerator
from fewmult.nn import bind_optimizer
from fewmult.quant import ahead, list_quantizers
from fewmult.quant.fusion import _COMPILED
from fewmult.run.job import quiet_lightning, train

SYNC_FIRST, SYNC_STEPS = 2, 3  # the HostSyncCount window
TIMED_FIRST = SYNC_FIRST + SYNC_STEPS + 1  # timing starts after it (syncs allowed again)
# Lin et al.'s MNIST MLP for both papers (Hou et al.'s, twice as wide, is slow in emulated bf16 on a CPU)
MLP = ["dataset=synthetic", "dataset.n_train=4000", "model.arch=1024FC-1024FC-1024FC", "logger=none"]
# today's rows: a ResNet-20 (Bi-Real's block) on 28-pixel inputs, with Bi-Real's and ReActNet's methods
# (schedule=constant: a linear schedule stepped before each epoch needs two epochs; this times one)
RESNET = ["dataset=synthetic", "dataset.batch_size=32", "model=resnet20", "schedule=constant", "logger=none"]
RESNET_METHODS = {"bireal": "liu2018", "reactnet": "liu2020"}  # and the paper whose optimizer each takes
LSTM = [
    "dataset=text",
    "dataset.max_bytes=200000",
    "dataset.seq_len=50",
    "dataset.batch_size=50",
    "logger=none",
]
NETWORKS = {"mlp": MLP, "lstm": LSTM, "resnet": RESNET}
# On a CPU the same checks on smaller steps: bf16 is emulated on CPUs without bf16 instructions (the
# LSTM's step then took 4.6 s, the MLP's 0.65 s, the ResNet's 0.8 s on an AVX2 EPYC; at batch 50 the
# 1024-wide MLP still 0.33 s), and a CPU's times are not the point
CPU_SMALLER = {
    "mlp": ["dataset.batch_size=50", "model.arch=256FC-256FC-256FC"],
    "lstm": ["model.hidden_size=128"],
    "resnet": ["dataset.batch_size=8"],
}


class StepTimer(L.Callback):
    """Seconds per training step over batches ``first`` to ``first + steps - 1`` (the device is
    synchronised at both ends only), written to ``out``."""

    def __init__(self, out: str, first: int, steps: int) -> None:
        self.out, self.first, self.steps = Path(out), first, steps

    def _now(self, module: L.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch != 0:
            return
        if batch_idx == self.first:
            self._start = self._now(pl_module)
        elif batch_idx == self.first + self.steps:
            self.out.write_text(json.dumps({"seconds": (self._now(pl_module) - self._start) / self.steps}))


def run_variant(overrides: list[str], steps: int, folder: Path) -> dict:
    """Train a few steps through ``fewmult.train``; return step seconds, scalar reads and the status."""
    syncs, timing = folder / "syncs.json", folder / "timing.json"
    callbacks = (
        f"{{_target_: fewmult.syncs.HostSyncCount, out: '{syncs}', first: {SYNC_FIRST}, "
        f"steps: {SYNC_STEPS}}}, {{_target_: benchmarks.gpu_check.StepTimer, out: '{timing}', "
        f"first: {TIMED_FIRST}, steps: {steps}}}"
    )
    cfg = compose_config(
        *overrides,
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={TIMED_FIRST + steps + 1}",
        "+trainer.limit_val_batches=1",
        f"callbacks=[{callbacks}]",
    )
    folder.mkdir(parents=True)
    try:
        with (folder / "output.log").open("w") as log, contextlib.redirect_stdout(log):
            results = train(cfg, folder / "run")
    except Exception as exc:  # a failed check: report it and go on with the other variants
        return {"status": f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    if not (syncs.is_file() and timing.is_file()):
        return {"status": f"FAILED: fewer than {TIMED_FIRST + steps + 1} training batches"}
    return {"status": results["status"], **json.loads(syncs.read_text()), **json.loads(timing.read_text())}


def plain_step_seconds(overrides: list[str], steps: int) -> float:
    """A hand-written PyTorch loop over the same network, loss, optimizer and batch size (float32)."""
    cfg = compose_config(*overrides)
    splits = instantiate(cfg.dataset).load()
    device = torch.device(visible_accelerator())
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device).train()
    loss_fn = instantiate(cfg.loss)
    optimizer = optimizer_factory(cfg)(model)
    bind_optimizer(model, optimizer)  # what a plain loop over fewmult's layers does: LAB, clipping
    x, y = (
        splits.train_x[: cfg.dataset.batch_size].to(device),
        splits.train_y[: cfg.dataset.batch_size].to(device),
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def variants(methods: list[str], device: str) -> list[tuple[str, list[str]]]:
    """(label, overrides); fp once per paper of the MLP methods checked (both papers when there are
    none), the full-precision reference of that paper's methods; on a CPU, smaller (``CPU_SMALLER``)."""
    smaller = CPU_SMALLER if device == "cpu" else {}
    mlp, lstm, resnet = ([*net, *smaller.get(name, [])] for name, net in NETWORKS.items())
    found = [(m, [*mlp, f"method={m}"]) for m in methods if m != "fp" and m not in RESNET_METHODS]
    if "fp" in methods:
        papers = {compose_config(*overrides).paper for _, overrides in found} or {"lin2016", "hou2017"}
        found = [("fp", [*mlp, "method=fp", f"paper={p}"]) for p in sorted(papers, reverse=True)] + found
    found += [(f"{m}+qbp", [*mlp, f"method={m}", "qbp=true"]) for m in ("bc_stoch", "tc") if m in methods]
    found += [(f"lstm {m}", [*lstm, f"method={m}"]) for m in ("fp", "lab") if m in methods]  # fp first
    for method, paper in RESNET_METHODS.items():
        if method in methods:
            if "fp" in methods:
                found.append((f"resnet20 fp ({paper})", [*resnet, "method=fp", f"paper={paper}"]))
            found.append((f"resnet20 {method}", [*resnet, f"method={method}"]))
    return found


def recompile_limit_hit() -> bool:
    """Whether Dynamo stopped compiling a function in this process (after 8 versions of it, each
    guarded on what it was traced with, it runs the function eagerly and only logs a warning)."""
    from torch._dynamo.utils import counters

    return any(reason.startswith("Dynamo recompile limit exceeded") for reason in counters["unimplemented"])


def check_imagenet_pipeline(device: str, images: int = 512) -> list[str]:
    """Images per second of the ImageNet stream (``dataset.workers=auto``) on generated JPEG files,
    decoded in the workers and (on a GPU) on the device, against those Bi-Real's ResNet-18 trains per
    second here; a failure when neither keeps up."""
    decodes = ("workers", "device") if device == "cuda" else ("workers",)
    with tempfile.TemporaryDirectory(prefix="gpu_check_jpegs_") as tmp:
        folder = Path(tmp) / "imagenet"
        write_jpegs(folder, images)
        fed = {
            d: second_epoch_rate(fewmult_loader(folder, "auto", d == "workers", device, decode=d))
            for d in decodes
        }
    step, batch, _ = seconds_per_step(
        ("liu2018", "imagenet", None), device, 2, None if device == "cuda" else 16
    )
    trained = batch / step
    rates = ", ".join(f"{rate:,.0f} images/s with dataset.decode={d}" for d, rate in fed.items())
    print(f"ImageNet pipeline (dataset.workers=auto): {rates}; ResNet-18 trains {trained:,.0f}/s")
    if max(fed.values()) < trained:
        return [
            f"the ImageNet pipeline ({rates}) cannot feed the ResNet-18 ({trained:,.0f}/s) on this "
            "machine: give the job more CPUs per device"
        ]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (GPU 20, CPU 5)")
    parser.add_argument("--methods", default=",".join([*list_quantizers(), *RESNET_METHODS]))
    parser.add_argument("--no-scale", action="store_true", help="skip the paper setups' epoch times")
    args = parser.parse_args()
    quiet_lightning()
    device = visible_accelerator()
    steps = args.steps or (20 if device == "cuda" else 5)
    precisions = ["32-true", "bf16-mixed"] + (["16-mixed"] if device == "cuda" else [])
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"gpu_check on {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    if device == "cpu":
        print(f"(on a CPU the networks are smaller: {CPU_SMALLER})")
    print()
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        base: dict[str, float] = {}  # fp at 32-true per network: "lin2016 mlp", "lstm", ...
        plain: dict[str, float] = {}
        found = variants(args.methods.split(","), device)
        run_variant(found[0][1], steps, Path(tmp) / "warm-up")  # the first run in a process is slower
        for label, overrides in found:
            network = compose_config(*overrides)
            key = f"{network.paper} {network.model.name}"
            if key not in plain:
                fp = [o for o in overrides if not o.startswith(("method=", "qbp="))]
                plain[key] = plain_step_seconds([*fp, "method=fp", f"paper={network.paper}"], steps)
            for precision in precisions:
                folder = Path(tmp) / str(len(rows))
                r = run_variant([*overrides, f"trainer.precision={precision}"], steps, folder)
                if r["status"] != "completed" or r["scalar_reads"] != r["plain_scalar_reads"]:
                    failed.append(f"{label} {precision}: {r['status']}")
                if "method=fp" in overrides and precision == "32-true":
                    base[key] = r.get("seconds") or float("nan")
                rows.append((label, key, precision, r))
        print(
            "| method | network | precision | step | vs fp 32-true | vs plain loop | scalar reads (plain) |"
        )
        print("|---|---|---|---|---|---|---|")
        for label, key, precision, r in rows:
            if r["status"] != "completed":
                print(f"| {label} | {key} | {precision} | {r['status']} | | | |")
                continue
            s, to_fp = r["seconds"], r["seconds"] / base.get(key, float("nan"))
            reads = f"{r['scalar_reads']} ({r['plain_scalar_reads']})"
            print(
                f"| {label} | {key} | {precision} | {s * 1e3:.2f} ms | {to_fp:.2f}x | {s / plain[key]:.2f}x "
                f"| {reads} |"
            )
    fallbacks = sorted(fn.__name__ for fn, compiled in _COMPILED.items() if compiled is None)
    compiled = sorted(fn.__name__ for fn, c in _COMPILED.items() if c is not None)
    packages = sorted({sig[1] for sig, runner in ahead._RUNNERS.items() if runner is not None})
    print(f"\ncompiled ahead of time (CPU packages): {', '.join(packages) or 'nothing'}")
    print(f"torch.compile: compiled {', '.join(compiled) or 'nothing'}")
    if fallbacks:
        failed.append(f"torch.compile fell back to eager code for {', '.join(fallbacks)}")
    if recompile_limit_hit():
        failed.append(
            "Dynamo hit its recompile limit: a fused function ran unfused from then on "
            "(TORCH_LOGS=recompiles names it and why it recompiled)"
        )
    if not args.no_scale:
        print()
        print_scale_tables(device, steps=2)
        print()
        failed += check_imagenet_pipeline(device)
    print("\n" + ("all checks passed" if not failed else "FAILED:\n  " + "\n  ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
