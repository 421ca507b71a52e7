"""Every ``python -m fewmult.train`` command and every ``key=value`` override the README shows composes
through the real entry point (``python -m fewmult.train OVERRIDES --cfg job``).

One process drives Hydra's command line once per command (``fewmult.train.main`` with its
``sys.argv``, as ``python -m`` calls it), so the ~100 compositions cost one start-up. Multirun
commands are expanded into their jobs' override lists (each swept value once); a value that is a
placeholder (``...``, ``K``, ``M``) is not an override and is skipped, and an override that only
exists within a choice (``dataset.md5`` of ``dataset=warpeace``) is composed with that choice
(:data:`CONTEXT`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
PLACEHOLDERS = re.compile(r"^(\.\.\.|OVERRIDES|[A-Z]+|k|M|<.*>)$")
# overrides that exist only within a choice of another group: composed with it
CONTEXT = {
    "method.weight_quantizer.": ["method=tc"],
    "method.weight_quantizer.per_channel": ["method=lab"],
    "method.residual_activation": ["method=irnet", "model=vgg_small"],
    "dataset.md5": ["dataset=warpeace"],
    "dataset.download": ["dataset=mnist"],
    "dataset.use_extra": ["dataset=svhn"],
    "dataset.preprocess": ["dataset=svhn"],
    "model.pool_in_fan_out": ["dataset=cifar10"],
    "hydra.launcher.": ["hydra/launcher=gpu_pool"],
    "trainer.devices": ["trainer=ddp"],
    "optim.optimizer.fused": ["optim=adam"],
    **{
        f"dataset.{key}": ["dataset=imagenet"]
        for key in ("workers", "jpeg_draft", "prefetch_factor", "lighting", "decode")
    },
}
NOT_OURS = {"local_lock=flock"}  # an NFS mount option, not a fewmult override

# The driver: one Hydra command line per input line, through fewmult.train.main as `python -m` runs it
DRIVER = """
import contextlib, io, json, sys
from hydra.core.global_hydra import GlobalHydra
from fewmult.train import main
failures = {}
for line in sys.stdin:
    overrides = json.loads(line)
    GlobalHydra.instance().clear()
    sys.argv = ["fewmult.train", *overrides, "--cfg", "job"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        failures[" ".join(overrides)] = f"exit {exc.code}: {err.getvalue()[-500:]}"
print(json.dumps(failures))
"""


def _jobs(tokens: list[str]) -> list[list[str]]:
    """A command's overrides, or for a multirun (``-m``) one override list per swept value."""
    overrides = [t for t in tokens if t != "-m" and not PLACEHOLDERS.match(t)]
    parsed = OverridesParser.create().parse_overrides(overrides)
    columns = [
        [f"{p.get_key_element()}={v}" for v in p.sweep_string_iterator()] if p.is_sweep_override() else [o]
        for o, p in zip(overrides, parsed, strict=True)
    ]
    longest = max((len(c) for c in columns), default=1)
    return [[c[min(i, len(c) - 1)] for c in columns] for i in range(longest)] or [[]]


ROW_PRESET = re.compile(r"^\+experiment=(lin2016|hou2017)_[a-z0-9]+_")  # one per published row


def readme_commands() -> list[list[str]]:
    """The overrides of every ``python -m fewmult.train`` in the README (code blocks and inline); of
    the ~80 published-row presets one per paper (test_configs composes every row's command)."""
    found, papers = [], set()
    for line in re.findall(r"python -m fewmult\.train([^`\n|]*)", README):
        tokens = shlex.split(line.split(" #")[0])
        if tokens and (row := ROW_PRESET.match(tokens[0])):
            if row.group(1) in papers:
                continue
            papers.add(row.group(1))
        if any(PLACEHOLDERS.match(t.partition("=")[2]) for t in tokens if "=" in t):
            tokens = [t for t in tokens if not PLACEHOLDERS.match(t.partition("=")[2])]
        found += _jobs(tokens)
    return found


def readme_overrides() -> list[list[str]]:
    """Every inline ``key=value`` span of the README (``a|b`` alternatives each), with its context."""
    found = []
    for span in re.findall(r"`([+~]?[a-z_][\w./@-]*=[^`]*)`", README):
        if span in NOT_OURS:
            continue
        parts = span.split()
        for override in parts if all("=" in part for part in parts) else [" ".join(parts)]:
            key, _, values = override.replace("\\|", "|").partition("=")
            for value in values.split("|") if not values.startswith(("[", "{")) else [values]:
                if not value or PLACEHOLDERS.match(value):
                    continue
                prefixes = [prefix for prefix in CONTEXT if key.startswith(prefix)]
                context = CONTEXT[max(prefixes, key=len)] if prefixes else []  # the closest entry
                found += _jobs([*context, f"{key}={value}"])
    return found


def test_the_readme_shows_commands_and_overrides_of_every_group():
    commands, overrides = readme_commands(), readme_overrides()
    assert len(commands) > 30 and len(overrides) > 40
    keys = {o.partition("=")[0] for job in commands + overrides for o in job}
    assert {"method", "dataset", "paper", "trainer", "logger", "qbp_settings", "+experiment"} <= keys
    used = {prefix for prefix in CONTEXT if any(k.startswith(prefix) for k in keys)}
    assert used == set(CONTEXT), "a CONTEXT entry no README override needs"


def test_every_readme_command_and_override_composes_through_the_cli():
    jobs = list(dict.fromkeys(json.dumps(job) for job in readme_commands() + readme_overrides()))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input="\n".join(jobs) + "\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.splitlines()[-1])
    assert not failures, "\n".join(f"{k}\n  {v}" for k, v in failures.items())
