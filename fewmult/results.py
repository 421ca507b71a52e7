"""The run contract: ``metrics.csv`` (one row per epoch) and ``results.json`` (one object)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from fewmult.atomic import atomic_write_text

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
# columns of some runs only, after the others: the distribution loss of a run with a teacher
OPTIONAL_COLUMNS = ["train/distill", "val/top5_error", "test/top5_error", "train/data_wait"]


def _columns(old_text: str, row: dict[str, float]) -> list[str]:
    """The file's own header when it has one (a folder written by an earlier version keeps its
    columns), else the contract's and the optional ones this run logs."""
    if old_text:
        return next(csv.reader(io.StringIO(old_text)))
    return METRIC_COLUMNS + [k for k in OPTIONAL_COLUMNS if k in row]


def _csv_text(rows: list[dict[str, str]], header: bool, columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def append_metrics_row(path: Path, row: dict[str, float]) -> None:
    """Add one epoch to ``metrics.csv`` (header on first write).

    The file is replaced whole (atomically), so a kill leaves it with or without the new row,
    never with half of it; at a few hundred bytes per epoch the rewrite costs nothing.
    """
    old = path.read_text() if path.exists() else ""
    columns = _columns(old, row)
    cells = {k: _short(row[k]) if k in row else "" for k in columns}
    cells["epoch"] = int(row["epoch"])
    atomic_write_text(path, old + _csv_text([cells], header=not old, columns=columns))


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


def truncate_epochs(path: Path, epochs_done: int) -> None:
    """Keep the rows of the first ``epochs_done`` epochs of a per-epoch CSV whose first column is
    ``epoch`` (``metrics.csv``, ``layers.csv``): a resumed run writes the others again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if float(line.split(",", 1)[0]) < epochs_done]
    if len(kept) < len(lines) - 1:
        atomic_write_text(path, "".join(lines[:1] + kept))


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
    """Write atomically, so a reader (or a kill) never sees half a file."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
