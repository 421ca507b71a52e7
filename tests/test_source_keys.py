"""Inductor's source keys are remembered between processes, and never reused once a file changed."""

from __future__ import annotations

import json
import os

import pytest
from torch._inductor import codecache

from fewmult.run import source_keys


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_fingerprint_follows_every_file_the_hash_reads_and_nothing_else(tmp_path):
    root = tmp_path / "pkg"
    write(root / "__init__.py", "")
    write(root / "sub" / "__init__.py", "")
    write(root / "sub" / "mod.py", "x = 1\n")
    write(root / "include" / "header.h", "int x;\n")  # not a package: iter_modules never reads it

    def now() -> str:
        return source_keys.fingerprint(source_keys._package_files(root), "1.0")

    first = now()
    assert now() == first
    write(root / "sub" / "__pycache__" / "mod.cpython-311.pyc", "bytecode")
    write(root / "include" / "other.h", "int y;\n")
    assert now() == first
    assert source_keys.fingerprint(source_keys._package_files(root), "1.1") != first  # a new version
    write(root / "sub" / "mod.py", "x = 22\n")  # a new size
    second = now()
    assert second != first
    stat = (root / "sub" / "mod.py").stat()
    os.utime(root / "sub" / "mod.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # edited in place
    third = now()
    assert third != second
    write(root / "sub" / "new.py", "")  # an added module
    assert now() != third


def clear_memos() -> None:
    for memo in (codecache.torch_key, codecache.triton_key):
        memo.clear()


@pytest.fixture
def fresh_keys(tmp_path, monkeypatch):
    """An empty inductor cache folder; torch's key memos cleared afterwards (so that the worker's
    later compilations recompute the true keys whatever this test set)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    yield tmp_path / "inductor" / source_keys.STORE_NAME
    clear_memos()


def reuse(monkeypatch) -> None:
    """What a new process does: its memos empty, its first compiled function about to run."""
    monkeypatch.setattr(source_keys, "_done", False)
    clear_memos()
    source_keys.reuse_source_keys()


def test_a_later_process_takes_the_stored_keys_until_their_files_change(fresh_keys, monkeypatch):
    reuse(monkeypatch)  # the first process: torch computes the keys, which are stored
    store = json.loads(fresh_keys.read_text())
    true_torch_key = codecache.torch_key()
    [(fingerprint, stored)] = store["torch_key"].items()
    assert stored == true_torch_key.hex()
    if codecache.triton_key() is not None:
        assert list(store["triton_key"].values()) == [codecache.triton_key()]

    store["torch_key"][fingerprint] = "00ff"  # marked, so that its use shows
    fresh_keys.write_text(json.dumps(store))
    reuse(monkeypatch)
    assert codecache.torch_key() == bytes.fromhex("00ff")

    # torch's files as they were before an upgrade, and as many other installations as are kept
    others = {f"installation {i}": "00ff" for i in range(source_keys.KEPT)}
    store["torch_key"] = others
    fresh_keys.write_text(json.dumps(store))
    reuse(monkeypatch)
    assert codecache.torch_key() == true_torch_key  # computed afresh
    kept = json.loads(fresh_keys.read_text())["torch_key"]
    assert len(kept) == source_keys.KEPT and "installation 0" not in kept  # the oldest gave way
    assert list(kept.items())[-1] == (fingerprint, true_torch_key.hex())


def test_an_unreadable_store_is_computed_and_written_again(fresh_keys, monkeypatch):
    fresh_keys.parent.mkdir(parents=True)
    fresh_keys.write_text("{ not json")
    reuse(monkeypatch)
    stored = json.loads(fresh_keys.read_text())["torch_key"]
    assert list(stored.values()) == [codecache.torch_key().hex()]
