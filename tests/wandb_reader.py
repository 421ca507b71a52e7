"""Reads the records of an offline W&B run file (``run-*.wandb``) with ``wandb.proto``.

wandb 0.30 ships no reader for its own offline files. The format is a LevelDB-style log: a
7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a
7-byte header (CRC32, length, type FULL/FIRST/MIDDLE/LAST) and a serialized ``Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a file is read: wandb takes ~2 s to import, in every pytest worker
    from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, payloads = 7, b"", []
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # the block's tail is zero padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
    from wandb.proto import wandb_internal_pb2

    return [wandb_internal_pb2.Record.FromString(p) for p in payloads]


def history(path: Path) -> list[dict]:
    """Every logged history row as {key: value}."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def run_info(path: Path) -> wandb_internal_pb2.RunRecord:
    return next(r.run for r in read_records(path) if r.WhichOneof("record_type") == "run")


def exit_code(path: Path) -> int | None:
    codes = [r.exit.exit_code for r in read_records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None
