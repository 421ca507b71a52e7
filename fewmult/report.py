"""Paper-style tables from finished runs: ``python -m fewmult.report DIR [DIR ...]``.

Reads every ``results.json`` (and ``metrics.csv``) under the given sweep folders, groups runs by
paper x dataset x method x QBP, picks per group the learning rate with the lowest mean validation
metric, and reports the test metric at that learning rate as mean +- std over seeds, beside the
published number (from ``fewmult/published.csv``). The metric is the one each run was selected by:
the error rate (%) for the image classifiers, the cross-entropy per character (nats) for the
language models. Failed and unfinished jobs are counted in the table, never dropped. Writes
``report.md``, ``report.csv`` and, per metric, ``val_<metric>_curves.png`` and
``<metric>_vs_lr.png`` into the first folder and prints the table.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from fewmult.published import Published, lookup
from fewmult.results import read_metrics

GroupKey = tuple[str, str, str, bool, int | None]  # paper, dataset, method, qbp, time steps (text)


METRICS = ("error", "loss")


def run_metric(result: dict) -> str:
    """``error`` or ``loss``: what the run was selected by (runs written before ``selected_by``: error)."""
    return result.get("selected_by", "val_error").removeprefix("val_")


def published_for(run: dict) -> Published | None:
    """The published number of a run's setup, from fewmult/published.csv (docs/papers.md C)."""
    key = (
        run.get("paper", "?"),
        run["dataset"],
        run.get("model", "?"),
        run["method"],
        bool(run.get("qbp")),
        run.get("seq_len"),
        run.get("width"),
    )
    return lookup(key)


def find_jobs(folders: list[Path]) -> tuple[list[dict], list[Path]]:
    """Results of every job, and the job folders (with a .hydra folder) that have none yet, or whose
    run was interrupted (SIGTERM, Ctrl-C) and waits for its relaunch."""
    results, unfinished = [], []
    for folder in folders:
        for hydra_dir in sorted(folder.rglob(".hydra")):
            job = hydra_dir.parent
            path = job / "results.json"
            result = json.loads(path.read_text()) if path.is_file() else {"status": "interrupted"}
            if result.get("status") == "interrupted":
                unfinished.append(job)
            else:
                results.append({**result, "_dir": job})
    return results, unfinished


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[dict], unfinished: int = 0) -> list[dict]:
    """One row per paper x dataset x method x QBP (x time steps for language models)."""
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for r in results:
        key = (r.get("paper", "?"), r["dataset"], r["method"], bool(r.get("qbp")), r.get("seq_len"))
        groups[key].append(r)
    rows = []
    for key, runs in sorted(groups.items()):
        done = [r for r in runs if r.get("status") == "completed"]
        metric = run_metric(done[0] if done else runs[0])
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for r in done:
            by_lr[r["lr"]].append(r)
        row = {
            "paper": key[0],
            "dataset": key[1],
            "method": key[2],
            "qbp": key[3],
            "seq_len": key[4],
            "metric": metric,
            "completed": len(done),
            "failed": sum(r.get("status") == "failed" for r in runs),
        }
        if by_lr:
            lr = min(by_lr, key=lambda v: statistics.fmean(r[f"val_{metric}"] for r in by_lr[v]))
            test = _mean_std([r[f"test_{metric}"] for r in by_lr[lr]])
            row.update(
                lr=lr,
                seeds=len(by_lr[lr]),
                test_mean=test[0],
                test_std=test[1],
                val_mean=statistics.fmean(r[f"val_{metric}"] for r in by_lr[lr]),
            )
        paper_row = published_for(runs[0])
        if paper_row and paper_row.metric == metric:
            row["published"] = paper_row.test_value
            if "test_mean" in row:
                row["difference"] = row["test_mean"] - row["published"]
        rows.append(row)
    if unfinished:
        rows.append(
            {
                "paper": "",
                "dataset": "",
                "method": f"({unfinished} unfinished jobs)",
                "qbp": False,
                "metric": "",
                "completed": 0,
                "failed": 0,
            }
        )
    return rows


def _shown(value: float | None, metric: str, signed: bool = False) -> str:
    """An error rate in percent (2 decimals), a loss in nats (3 decimals)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.2f}" if metric == "error" else f"{value:{sign}.3f}"


UNITS = {"error": "test error %", "loss": "test nats/char", "": ""}


def markdown(rows: list[dict]) -> str:
    columns = [
        "paper",
        "dataset",
        "method",
        "lr",
        "metric",
        "test (mean ± std)",
        "seeds",
        "published",
        "difference",
        "failed",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        method = r["method"] + (" + QBP" if r["qbp"] else "")
        dataset = r["dataset"] + (f" ({r['seq_len']} steps)" if r.get("seq_len") else "")
        m = r["metric"]
        test = (
            f"{_shown(r['test_mean'], m)} ± {_shown(r['test_std'], m)}"
            if "test_mean" in r
            else "no completed run"
        )
        lines.append(
            f"| {r['paper']} | {dataset} | {method} | {r.get('lr', '')} | {UNITS[m]} | {test} | "
            f"{r.get('seeds', 0)} | {_shown(r.get('published'), m)} | "
            f"{_shown(r.get('difference'), m, signed=True)} | {r['failed']} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> list[Path]:
    """Per metric present: validation curves (one line per run) and the final metric against the LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.get("status") == "completed"]
    paths = []
    for metric in METRICS:
        runs = [r for r in done if run_metric(r) == metric]
        if not runs:
            continue
        scale, label = (
            (100, "validation error (%)") if metric == "error" else (1, "validation nats per character")
        )
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in runs:
            rows = [
                m
                for m in read_metrics(r["_dir"] / "metrics.csv")
                if not math.isnan(m.get(f"val/{metric}", math.nan))
            ]
            ax.plot(
                [m["epoch"] for m in rows],
                [scale * m[f"val/{metric}"] for m in rows],
                alpha=0.7,
                label=f"{r['dataset']} {r['method']} lr={r['lr']} seed={r['seed']}",
            )
        ax.set(xlabel="epoch", ylabel=label, title=label)
        paths.append(_save(fig, ax, out / f"val_{metric}_curves.png"))

        fig, ax = plt.subplots(figsize=(7, 4))
        by_method: dict[str, list[dict]] = defaultdict(list)
        for r in runs:
            by_method[f"{r['dataset']} {r['method']}{' +QBP' if r.get('qbp') else ''}"].append(r)
        for name, group in sorted(by_method.items()):
            group.sort(key=lambda r: r["lr"])
            ax.plot(
                [r["lr"] for r in group],
                [scale * r[f"val_{metric}"] for r in group],
                "o",
                label=f"{name} (val)",
            )
        ax.set(xscale="log", xlabel="learning rate", ylabel=label, title=f"{metric} against learning rate")
        paths.append(_save(fig, ax, out / f"{metric}_vs_lr.png"))
    return paths


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
            "seq_len",
            "metric",
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
