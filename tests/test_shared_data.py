"""Many jobs on one data folder: each download and each preprocessing cache happens once, and a job
killed halfway leaves nothing under a final name.

The jobs are real processes. Downloads go through the real ``torchvision.datasets.MNIST`` from a
local HTTP server (no network here) that can hold a response until the test has seen the other
processes waiting on the lock, so the concurrency is certain rather than left to timing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fewmult.data.files import STAGING_PREFIX
from tests.conftest import REPO
from tests.fakedata import write_mnist

RAW_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class Child:
    """A Python process whose output lines are collected as they come."""

    def __init__(self, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 120) -> list[str]:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, "\n".join(self.lines)
        return self.lines

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)


def wait_until(condition: Callable[[], bool], what: str, children: list[Child], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        outputs = "\n---\n".join("\n".join(c.lines) for c in children)
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{outputs}"
        assert all(c.proc.poll() in (None, 0) for c in children), outputs
        time.sleep(0.05)


# ---------------------------------------------------------------- preprocessing cache

CACHE_CHILD = """
import sys, time, hashlib
from pathlib import Path
import torch
from fewmult.data.cache import cached

path, counter, go = (Path(a) for a in sys.argv[1:4])

def compute():
    with open(counter, "a") as f:
        f.write("computed\\n")
    while not go.exists():  # held until the test has seen the others waiting
        time.sleep(0.02)
    return {"x": torch.arange(1000.0).reshape(10, 100) / 7}

tensors = cached(path, compute)
print("digest", hashlib.sha1(tensors["x"].numpy().tobytes()).hexdigest(), flush=True)
"""


def test_a_cache_wanted_by_three_jobs_is_computed_once(tmp_path):
    path, counter, go = tmp_path / "fewmult-cache" / "x.pt", tmp_path / "counter", tmp_path / "go"
    children = [Child(CACHE_CHILD, str(path), str(counter), str(go)) for _ in range(3)]
    wait_until(lambda: counter.exists(), "one job to start computing", children)
    wait_until(
        lambda: sum(c.said("waiting for process") for c in children) == 2, "the other two to wait", children
    )
    go.touch()
    outputs = [c.finish() for c in children]
    assert counter.read_text() == "computed\n"
    assert (
        sum(any("computing the preprocessing cache once into" in line for line in out) for out in outputs)
        == 1
    )
    digests = {line for out in outputs for line in out if line.startswith("digest")}
    assert len(digests) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.pt", "x.pt.lock"]


WRITER_KILLED_MIDWAY = """
import sys, time
from pathlib import Path
import torch
from fewmult.data.cache import cached

def torn_save(obj, f):  # stands in for a disk write that the kill interrupts
    f.write(b"PK partial bytes of a cache")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)

torch.save = torn_save
cached(Path(sys.argv[1]), lambda: {"x": torch.ones(3)})
"""


def test_a_job_killed_while_writing_the_cache_leaves_nothing_readable(tmp_path):
    import torch

    from fewmult.data.cache import cached

    path = tmp_path / "fewmult-cache" / "x.pt"
    writer = Child(WRITER_KILLED_MIDWAY, str(path))
    wait_until(lambda: writer.said("writing"), "the write to begin", [writer])
    writer.kill()
    assert not path.exists()
    (torn,) = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert torn.read_bytes() == b"PK partial bytes of a cache"

    computed = []
    tensors = cached(path, lambda: computed.append(1) or {"x": torch.full((3,), 2.0)})
    assert computed == [1] and torch.equal(tensors["x"], torch.full((3,), 2.0))
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.full((3,), 2.0))
    assert not torn.exists()  # removed by the next holder of the lock


# ---------------------------------------------------------------- downloads


class MirrorServer:
    """Serves gzipped MNIST files; counts downloads; can hold or tear a response."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: Counter[str] = Counter()
        self.first_request = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.tear: str | None = None  # this file is sent half and then never finished
        self.stop_tearing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if self.headers.get("Method") == "HEAD":  # torchvision's probe for redirects
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.requests[name] += 1
                server.first_request.set()
                server.release.wait(timeout=120)
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name == server.tear:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    server.stop_tearing.wait(timeout=120)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.stop_tearing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path):
    raw = write_mnist(tmp_path / "source", n_train=40, n_test=20)
    files = {f"{name}.gz": gzip.compress((raw / name).read_bytes()) for name in RAW_FILES}
    server = MirrorServer(files)
    yield server
    server.close()


DOWNLOAD_CHILD = """
import hashlib, json, sys
import torchvision
from fewmult.data.mnist import MNISTData

url, resources, root = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
torchvision.datasets.MNIST.mirrors = [url]  # the test's local server instead of the internet
torchvision.datasets.MNIST.resources = [tuple(r) for r in resources]
data = MNISTData(name="mnist", root=root, download=True, val_size=10, batch_size=10, seed=0).raw()
print("digest", hashlib.sha1(data["train_x"].numpy().tobytes()).hexdigest(), flush=True)
"""


def downloader(server: MirrorServer, root: Path) -> Child:
    import json

    resources = [[name, hashlib.md5(body).hexdigest()] for name, body in server.files.items()]
    return Child(DOWNLOAD_CHILD, server.url, json.dumps(resources), str(root))


@pytest.mark.slow  # three processes and a local HTTP server; the cache tests stay fast
def test_three_jobs_on_an_empty_data_folder_download_each_file_once(tmp_path, mirror):
    root = tmp_path / "data"
    mirror.release.clear()  # hold the first file until both other jobs wait on the lock
    children = [downloader(mirror, root) for _ in range(3)]
    wait_until(mirror.first_request.is_set, "the first download", children)
    wait_until(
        lambda: sum(c.said("waiting for process") for c in children) == 2, "the other two to wait", children
    )
    mirror.release.set()
    outputs = [c.finish() for c in children]
    assert mirror.requests == Counter(list(mirror.files))  # every file exactly once
    assert len({line for out in outputs for line in out if line.startswith("digest")}) == 1
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(RAW_FILES)
    assert not list(root.glob(STAGING_PREFIX + "*"))


@pytest.mark.slow  # three processes and a local HTTP server; the cache tests stay fast
def test_a_killed_download_leaves_no_file_under_its_final_name(tmp_path, mirror):
    root = tmp_path / "data"
    torn = "train-labels-idx1-ubyte.gz"
    mirror.tear = torn
    first = downloader(mirror, root)
    wait_until(lambda: mirror.requests[torn] == 1, "the second file to start", [first])
    first.kill()
    raw = root / "MNIST" / "raw"
    assert not raw.exists() or not list(raw.iterdir())  # the finished first file waits in staging
    (staging,) = root.glob(STAGING_PREFIX + "*")

    mirror.tear = None
    mirror.stop_tearing.set()
    downloader(mirror, root).finish()
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)
    assert not staging.exists()
    assert mirror.requests[torn] == 2 and mirror.requests["train-images-idx3-ubyte.gz"] == 2
