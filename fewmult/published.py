"""The papers' published numbers: one table, ``fewmult/published.csv``, read by training and the report.

Each row is one number of docs/papers.md section C or G (``section``): the paper, the dataset, the
architecture (``model``, as ``model.name``), the method, QBP, the unrolled time steps of a
language model (``time_steps``) and Hou et al.'s width K (``width``) say which run it belongs to;
``metric`` is ``error`` (``value`` in percent, as printed) or ``loss`` (nats per character);
``settings`` lists, as ``key=value`` config overrides, the settings the number came from where
fewmult offers another form (the authors' code vs the paper, docs/papers.md D): the row's preset
must compose to them (tested), and a run of the setup without them is told so. The presets carry
settings only; a run of any command whose setup matches a row gets its number in ``results.json``,
with ``published_settings_differ``, the keys where the run departs from the row's settings.

A setup printed twice (Hou et al.'s Table 2 at K=64 repeats Table 1; Table 4 at 100 time steps
repeats Table 3) takes the number of the earlier table; the one disagreement is BWN on War and
Peace, 1.312 in Table 3 and 1.320 in Table 4 (docs/papers.md D.20).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from fewmult.rundir import as_override

TABLE = Path(__file__).with_name("published.csv")

SetupKey = tuple[str, str, str, str, bool, int | None, int | None]


@dataclass(frozen=True)
class Published:
    paper: str
    section: str
    dataset: str
    model: str
    method: str
    qbp: bool
    time_steps: int | None
    width: int | None
    metric: str
    value: float
    settings: tuple[tuple[str, Any], ...] = ()  # (config key, value) the number was obtained with

    @property
    def key(self) -> SetupKey:
        return (self.paper, self.dataset, self.model, self.method, self.qbp, self.time_steps, self.width)

    @property
    def test_value(self) -> float:
        """As ``results.json`` writes the metric: an error as a fraction, a loss in nats."""
        return self.value / 100 if self.metric == "error" else self.value


def _optional_int(text: str) -> int | None:
    return int(text) if text else None


def _setting(override: str) -> tuple[str, Any]:
    """``key=value`` as Hydra reads a value (``true``, ``null``, ``-4``, ``w0``)."""
    key, _, value = override.partition("=")
    return key, yaml.safe_load(value)


@cache
def published_rows() -> tuple[Published, ...]:
    with TABLE.open(newline="") as f:
        return tuple(
            Published(
                paper=r["paper"],
                section=r["section"],
                dataset=r["dataset"],
                model=r["model"],
                method=r["method"],
                qbp={"true": True, "false": False}[r["qbp"]],
                time_steps=_optional_int(r["time_steps"]),
                width=_optional_int(r["width"]),
                metric=r["metric"],
                value=float(r["value"]),
                settings=tuple(_setting(item) for item in r["settings"].split()),
            )
            for r in csv.DictReader(f)
        )


@cache
def _by_key() -> dict[SetupKey, Published]:
    table: dict[SetupKey, Published] = {}
    for row in sorted(published_rows(), key=lambda r: r.section):  # the earlier table first
        table.setdefault(row.key, row)
    return table


def lookup(key: SetupKey) -> Published | None:
    """The published number of a setup (paper, dataset, model, method, qbp, time steps, width)."""
    return _by_key().get(key)


def setup_fields(cfg: DictConfig) -> dict[str, Any]:
    """What a run's published number depends on, as ``results.json`` records it."""
    return {
        "paper": cfg.paper,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "qbp": bool(cfg.qbp),
        "seq_len": cfg.dataset.get("seq_len"),  # time steps of a language model (None for images)
        "width": cfg.model.get("width"),  # Hou et al.'s K (None where the architecture has none)
    }


def run_key(run: Mapping[str, Any]) -> SetupKey:
    """The key of a run, from :func:`setup_fields` or a ``results.json`` (older ones lack a field)."""
    return (
        run.get("paper", "?"),
        run["dataset"],
        run.get("model", "?"),
        run["method"],
        bool(run.get("qbp")),
        run.get("seq_len"),
        run.get("width"),
    )


def setup_key(cfg: DictConfig) -> SetupKey:
    """The key of a composed run config."""
    return run_key(setup_fields(cfg))


def published_fields(run: Mapping[str, Any]) -> dict[str, float | str | None]:
    """``published_test_error`` / ``published_test_loss`` and their source, for ``results.json``."""
    row = lookup(run_key(run))
    return {
        "published_test_error": row.test_value if row and row.metric == "error" else None,
        "published_test_loss": row.test_value if row and row.metric == "loss" else None,
        "published_in": f"docs/papers.md {row.section}" if row else None,
    }


def settings_differing(cfg: DictConfig) -> list[str] | None:
    """Where a run departs from the settings of its setup's published number, as
    ``key=value (published: value)``; None when the setup has no published number."""
    row = lookup(setup_key(cfg))
    if row is None:
        return None
    differing = []
    for key, published in row.settings:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value != published:
            differing.append(f"{key}={as_override(value)} (published: {as_override(published)})")
    return differing
