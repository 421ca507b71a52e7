"""Paper-style tables from finished runs: ``python -m fewmult.report DIR [DIR ...]``.

Reads every ``results.json`` (and ``metrics.csv``) under the given sweep folders, groups runs by
paper x dataset x method x QBP, picks per group the learning rate with the lowest mean validation
error, and reports the test error at that learning rate as mean +- std over seeds, beside the
published number (from the ``experiment`` presets). Failed and unfinished jobs are counted in the
table, never dropped. Writes ``report.md``, ``report.csv``, ``val_error_curves.png`` and
``error_vs_lr.png`` into the first folder and prints the table.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from fewmult.config import CONF_DIR
from fewmult.results import read_metrics

GroupKey = tuple[str, str, str, bool]  # paper, dataset, method, qbp


def published_errors() -> dict[GroupKey, float]:
    """The published test errors, read from the experiment presets (their single source)."""
    table = {}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        if "published_test_error" not in preset:  # a sweep, not a published row
            continue
        choices = {}
        for entry in preset.get("defaults", []):
            ((key, value),) = entry.items()
            choices[key.split()[-1].lstrip("/")] = value
        key = (choices["paper"], choices["dataset"], choices["method"], bool(preset.get("qbp", False)))
        table[key] = preset["published_test_error"]
    return table


def find_jobs(folders: list[Path]) -> tuple[list[dict], list[Path]]:
    """Results of every job, and the job folders (with a .hydra folder) that have none yet."""
    results, unfinished = [], []
    for folder in folders:
        for hydra_dir in sorted(folder.rglob(".hydra")):
            job = hydra_dir.parent
            path = job / "results.json"
            if path.is_file():
                results.append({**json.loads(path.read_text()), "_dir": job})
            else:
                unfinished.append(job)
    return results, unfinished


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[dict], unfinished: int = 0) -> list[dict]:
    """One row per paper x dataset x method x QBP."""
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for r in results:
        groups[(r.get("paper", "?"), r["dataset"], r["method"], bool(r.get("qbp")))].append(r)
    published = published_errors()
    rows = []
    for key, runs in sorted(groups.items()):
        done = [r for r in runs if r.get("status") == "completed"]
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for r in done:
            by_lr[r["lr"]].append(r)
        row = {
            "paper": key[0],
            "dataset": key[1],
            "method": key[2],
            "qbp": key[3],
            "completed": len(done),
            "failed": sum(r.get("status") == "failed" for r in runs),
        }
        if by_lr:
            lr = min(by_lr, key=lambda v: statistics.fmean(r["val_error"] for r in by_lr[v]))
            test = _mean_std([r["test_error"] for r in by_lr[lr]])
            row.update(
                lr=lr,
                seeds=len(by_lr[lr]),
                test_mean=test[0],
                test_std=test[1],
                val_mean=statistics.fmean(r["val_error"] for r in by_lr[lr]),
            )
        target = published.get(key)
        if target is not None:
            row["published"] = target
            if "test_mean" in row:
                row["difference"] = row["test_mean"] - target
        rows.append(row)
    if unfinished:
        rows.append(
            {
                "paper": "",
                "dataset": "",
                "method": f"({unfinished} unfinished jobs)",
                "qbp": False,
                "completed": 0,
                "failed": 0,
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def markdown(rows: list[dict]) -> str:
    columns = [
        "paper",
        "dataset",
        "method",
        "lr",
        "test error % (mean ± std)",
        "seeds",
        "published %",
        "difference",
        "failed",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        method = r["method"] + (" + QBP" if r["qbp"] else "")
        test = f"{_pct(r['test_mean'])} ± {_pct(r['test_std'])}" if "test_mean" in r else "no completed run"
        diff = f"{100 * r['difference']:+.2f}" if "difference" in r else ""
        lines.append(
            f"| {r['paper']} | {r['dataset']} | {method} | {r.get('lr', '')} | {test} | "
            f"{r.get('seeds', 0)} | {_pct(r.get('published'))} | {diff} | {r['failed']} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> list[Path]:
    """Validation error per epoch (one line per run) and final errors against the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.get("status") == "completed"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in done:
        rows = [
            m for m in read_metrics(r["_dir"] / "metrics.csv") if not math.isnan(m.get("val/error", math.nan))
        ]
        ax.plot(
            [m["epoch"] for m in rows],
            [100 * m["val/error"] for m in rows],
            alpha=0.7,
            label=f"{r['dataset']} {r['method']} lr={r['lr']} seed={r['seed']}",
        )
    ax.set(xlabel="epoch", ylabel="validation error (%)", title="validation error")
    curves = _save(fig, ax, out / "val_error_curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in done:
        by_method[f"{r['dataset']} {r['method']}{' +QBP' if r.get('qbp') else ''}"].append(r)
    for label, runs in sorted(by_method.items()):
        runs.sort(key=lambda r: r["lr"])
        ax.plot([r["lr"] for r in runs], [100 * r["val_error"] for r in runs], "o", label=f"{label} (val)")
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="validation error (%)",
        title="error against learning rate",
    )
    return [curves, _save(fig, ax, out / "error_vs_lr.png")]


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not folders:
        print("usage: python -m fewmult.report SWEEP_DIR [SWEEP_DIR ...]", file=sys.stderr)
        return 2
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"fewmult.report: error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    results, unfinished = find_jobs(folders)
    if not results and not unfinished:
        print(
            f"fewmult.report: error: no fewmult runs (results.json) under {', '.join(map(str, folders))}",
            file=sys.stderr,
        )
        return 2
    rows = summarize(results, len(unfinished))
    out = folders[0]
    table = markdown(rows)
    (out / "report.md").write_text(table + "\n")
    with (out / "report.csv").open("w", newline="") as f:
        fields = [
            "paper",
            "dataset",
            "method",
            "qbp",
            "lr",
            "seeds",
            "test_mean",
            "test_std",
            "val_mean",
            "published",
            "difference",
            "completed",
            "failed",
        ]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plots = plot(results, out)
    print(table)
    print(f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}, " + ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
