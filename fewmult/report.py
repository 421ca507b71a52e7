"""Paper-style tables from finished runs: ``python -m fewmult.report DIR [DIR ...]``.

Reads every ``results.json`` (and ``metrics.csv``) under the given sweep folders, groups runs by
paper x dataset x method x QBP, picks per group the learning rate with the lowest mean validation
metric, and reports the test metric at that learning rate as mean +- std over seeds, beside the
published number (from ``fewmult/published.csv``). The metric is the one each run was selected by:
the error rate (%) for the image classifiers, the cross-entropy per character (nats) for the
language models. Failed and unfinished jobs are counted in the table, never dropped. Writes
``report.md``, ``report.csv`` and, per metric, ``val_<metric>_curves.png`` and
``<metric>_vs_lr.png`` into the first folder, prints the table, and logs table and plots to W&B
(one ``report`` run in the sweep's group) when the jobs logged there (``--no-wandb``: not).
Runs differing in any override other than the learning rate and the seed (``model=mlp,cnn``,
``model.width=16,32``) get rows of their own, with a ``setting`` column.
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

from fewmult.published import Published, lookup, run_key
from fewmult.results import read_metrics

# paper, dataset, model, method, qbp, time steps (text), the settings that vary between the jobs
GroupKey = tuple[str, str, str, str, bool, int | None, str]


METRICS = ("error", "loss")


def run_metric(result: dict) -> str:
    """``error`` or ``loss``: what the run was selected by (runs written before ``selected_by``: error)."""
    return result.get("selected_by", "val_error").removeprefix("val_")


def published_for(run: dict) -> Published | None:
    """The published number of a run's setup, from fewmult/published.csv (docs/papers.md C)."""
    return lookup(run_key(run))


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
                overrides = hydra_dir / "overrides.yaml"
                given = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
                results.append({**result, "_dir": job, "_overrides": dict(_split(o) for o in given or [])})
    return results, unfinished


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


# what the groups already show, and what the table chooses over or averages over
NOT_A_SETTING = {"paper", "dataset", "method", "qbp", "dataset.seq_len", "optim.lr", "seed"}


def mark_settings(results: list[dict]) -> None:
    """Give each run ``setting``: its values of every override that varies between the jobs (other
    than the learning rate and seed, chosen over and averaged over), e.g. ``model=mlp``."""
    keys = {k for r in results for k in r["_overrides"]} - NOT_A_SETTING
    varying = sorted(k for k in keys if len({r["_overrides"].get(k) for r in results}) > 1)
    for r in results:
        r["setting"] = " ".join(f"{k}={r['_overrides'].get(k, '(default)')}" for k in varying)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[dict], unfinished: int = 0) -> list[dict]:
    """One row per paper x dataset x model x method x QBP (x time steps for language models)."""
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for r in results:
        key = (
            r.get("paper", "?"),
            r["dataset"],
            r.get("model", "?"),
            r["method"],
            bool(r.get("qbp")),
            r.get("seq_len"),
            r.get("setting", ""),
        )
        groups[key].append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        done = [r for r in runs if r.get("status") == "completed"]
        metric = run_metric(done[0] if done else runs[0])
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for r in done:
            by_lr[r["lr"]].append(r)
        first = runs[0]
        row = {
            "paper": key[0],
            "dataset": key[1],
            "model": key[2],
            "method": key[3],
            "qbp": key[4],
            "seq_len": key[5],
            "setting": key[6],
            # W/A as the papers' tables print it (results.json before it was recorded: blank)
            "bits": f"{first['bits_w']}/{first['bits_a']}" if "bits_w" in first else "",
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
                "model": "",
                "bits": "",
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
    with_setting = any(r.get("setting") for r in rows)
    columns = [
        *(["setting"] if with_setting else []),
        "paper",
        "dataset",
        "model",
        "method",
        "W/A",
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
        setting = f"| {r.get('setting', '')} " if with_setting else ""
        lines.append(
            f"{setting}| {r['paper']} | {dataset} | {r['model']} | {method} | {r['bits']} | "
            f"{r.get('lr', '')} | {UNITS[m]} | {test} | "
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


REPORT_COLUMNS = [
    "setting",
    "paper",
    "dataset",
    "model",
    "method",
    "bits",
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


def log_to_wandb(rows: list[dict], plots: list[Path], results: list[dict], out: Path) -> str | None:
    """Log the table (a W&B Table, published number and difference included) and the plots (images)
    as one ``report`` run in the sweep's W&B group, with the jobs' project and mode. None when the
    jobs logged no W&B run; else a line saying where it went."""
    record = results[0]["_dir"] / "run_config.yaml"
    logger = (yaml.safe_load(record.read_text()) or {}).get("logger", {}) if record.is_file() else {}
    if logger.get("name") != "wandb":
        return None
    import wandb

    from fewmult.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(logger.get("mode", "auto"))
    groups = sorted({r.get("wandb_group") or "" for r in results})
    run = wandb.init(
        project=logger.get("project", "fewmult"),
        entity=logger.get("entity"),
        group=groups[0] or None,
        job_type="report",
        name="report",
        dir=str(out),
        mode=mode,
        config={"folders": sorted({str(r["_dir"].parent) for r in results}), "groups": groups},
    )
    try:
        table = wandb.Table(columns=REPORT_COLUMNS, data=[[r.get(c) for c in REPORT_COLUMNS] for r in rows])
        run.log({"report/table": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in plots}})
    finally:
        run.finish()
    return f"W&B ({mode}): the table and {len(plots)} plots in group {groups[0] or '(none)'}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    to_wandb = "--no-wandb" not in args
    folders = [Path(a) for a in args if a != "--no-wandb"]
    if not folders:
        print("usage: python -m fewmult.report [--no-wandb] SWEEP_DIR [SWEEP_DIR ...]", file=sys.stderr)
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
    mark_settings(results)
    rows = summarize(results, len(unfinished))
    out = folders[0]
    table = markdown(rows)
    (out / "report.md").write_text(table + "\n")
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plots = plot(results, out)
    print(table)
    print(f"\nwritten: {out / 'report.md'}, {out / 'report.csv'}, " + ", ".join(str(p) for p in plots))
    logged = log_to_wandb(rows, plots, results, out) if to_wandb and results else None
    if logged:
        print(logged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
