"""The run contract: ``metrics.csv`` (one row per epoch) and ``results.json`` (one object)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

METRIC_COLUMNS = [
    "epoch",
    "train/loss",
    "train/error",
    "val/loss",
    "val/error",
    "test/loss",
    "test/error",
    "lr",
    "epoch_seconds",
]


def append_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Append one epoch to ``metrics.csv`` (header on first write), flushed so a crash keeps it."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        cells = {k: _short(row[k]) if k in row else "" for k in METRIC_COLUMNS}
        writer.writerow({**cells, "epoch": int(row["epoch"])})


def _short(value: float) -> float:
    """Six significant digits: error rates computed in float32 print as 0.042, not 0.0419999957."""
    return float(f"{value:.6g}")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (missing cells become NaN)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the rows of the first ``epochs_done`` epochs (a resumed run trains the others again)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) < epochs_done]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def is_better(value: float, best: float | None) -> bool:
    """Both papers' selection rule: ``<=`` on the validation error, so ties go to the later epoch."""
    return not math.isnan(value) and (best is None or value <= best)


def best_epoch(rows: list[dict[str, float]], key: str = "val/error") -> dict[str, float] | None:
    """The row with the lowest validation error (the later one on ties), or None."""
    best = None
    for row in rows:
        if is_better(row.get(key, math.nan), best[key] if best else None):
            best = row
    return best


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
