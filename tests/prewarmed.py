"""``python -m MODULE`` for the tests, forked from an interpreter that has already imported torch.

Most of the suite's time went into starting processes: a launch of ``fewmult.train`` spends about
6 s importing torch and Lightning (which imports torchmetrics, torchvision's models and scipy)
before its first line runs, and the suite launches it about a hundred times. Each pytest
worker therefore starts one *prewarmed* interpreter that imports those modules once and then forks
a child per launch. The child takes the launch's working directory, environment, arguments and
output pipes, and runs the module exactly as ``python -m`` does (``runpy._run_module_as_main``):
the same entry point, checks, signals and exit status, a process of its own that a test can kill.
What it shares with its siblings is what a fresh interpreter would compute identically at import,
and its string-hash seed: a killed launch and its relaunch hash strings alike here, where two fresh
interpreters would not, so a kill test here would not catch a result that depends on the order of a
set of strings (run the suite with the switch below to check that).

A launch takes a fresh interpreter instead (:func:`popen` decides) when its environment changes
what an interpreter does at start-up or import (``PYTHON*`` such as ``-X importtime``'s variable, the
thread counts of OpenMP and MKL, ``LD_*``, ``TORCH*``, ``CUDA*``), and every launch does when
``FEWMULT_TESTS_FRESH_PROCESSES=1``, or without ``OMP_NUM_THREADS=1`` (set in pytest-xdist's workers):
OpenMP's and OpenBLAS's thread pools start at import otherwise, and a fork copies no thread.
"""

from __future__ import annotations

import io
import json
import locale
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# what a launch of fewmult's entry points imports before its first step. Not the entry points
# themselves (``-m`` runs a module not yet imported), and not wandb, whose import makes a temporary
# folder that the first child to exit would delete for all the others.
PREIMPORTED = ("fewmult.run.job",)
# environment variables read at interpreter start or at the import of the modules above
STARTUP_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "LD_", "TORCH", "CUDA", "NCCL")
FRESH_SWITCH = "FEWMULT_TESTS_FRESH_PROCESSES"
FORK_TIMEOUT = 300  # seconds a launch may wait for its fork (the imports of a cold start included)
BOOT = "from tests.prewarmed import serve_then_run; serve_then_run()"


# --- the prewarmed interpreter -------------------------------------------------------------------


def serve_then_run() -> None:
    """The prewarmed interpreter's main: serve launch requests; in each forked child, run one."""
    request = _serve()
    del sys.modules["__main__"].__dict__["serve_then_run"]  # the child's __main__ as -m leaves it
    _become(request)
    runpy._run_module_as_main(request["module"])


def _serve() -> dict[str, Any]:
    """Import, then fork a child per request line on stdin; report each child's pid and exit status
    on stdout as JSON lines. Returns only in a child."""
    import importlib

    for name in PREIMPORTED:
        importlib.import_module(name)
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # nothing the imports print may reach the protocol

    def reply(message: dict[str, Any]) -> None:
        os.write(replies, (json.dumps(message) + "\n").encode())

    pending = b""
    while True:
        ready, _, _ = select.select([requests], [], [], 0.02)
        _reap(reply)
        if not ready:
            continue
        chunk = os.read(requests, 1 << 16)
        if not chunk:  # the pytest worker is gone
            os._exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            refusal = _refusal(request["module"])
            if refusal:
                reply({"id": request["id"], "error": refusal})
                continue
            outputs = [_writer(request["stdout"]), _writer(request["stderr"])]
            sys.stdout.flush(), sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(requests), os.close(replies), os.close(devnull)
                request["fds"] = outputs
                return request
            for fd in outputs:
                os.close(fd)  # the child's copies stay open until it and its children close them
            reply({"id": request["id"], "pid": pid})


def _refusal(module: str) -> str | None:
    """Why a child forked now would not start as ``python -m module`` does, if it would not."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # a fork copies a thread's locks but not the thread
        return f"{threads} threads in the prewarmed interpreter"
    if module in sys.modules:  # -m runs a module that nothing has imported yet
        return f"{module} is already imported in the prewarmed interpreter"
    return None


def _writer(fifo: str) -> int:
    """The write end of the launch's output pipe (its reader, the worker, has it open already)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    return fd


def _reap(reply: Callable[[dict[str, Any]], None]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _become(request: dict[str, Any]) -> None:
    """The state ``python -m MODULE ARGS`` starts in: cwd, environment, argv, sys.path, stdio."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["-m", *request["args"]]
    sys.path[0] = os.getcwd()  # -m puts the working directory first
    tempfile.tempdir = None  # found again from the launch's TMPDIR, as a fresh interpreter would
    for fd, target in zip((1, 2), request["fds"], strict=True):
        os.dup2(target, fd)
        os.close(target)


# --- the pytest worker's side --------------------------------------------------------------------


class _Server:
    """The worker's prewarmed interpreter, started at its first launch."""

    def __init__(self) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (read when the interpreter dies)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.pending = b""
        self.started: dict[int, dict[str, Any]] = {}
        self.returncodes: dict[int, int] = {}
        self.next_id = 0

    def fits(self, env: dict[str, str]) -> bool:
        """Whether a child forked here starts as an interpreter started with ``env`` would."""

        def startup(e: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in e.items() if k.startswith(STARTUP_PREFIXES) and k != "PYTHONPATH"}

        path = env.get("PYTHONPATH")
        return startup(env) == startup(self.env) and path in (None, str(REPO))

    def launch(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path
    ) -> int:
        request_id = self.next_id
        self.next_id += 1
        request = {
            "id": request_id,
            "module": module,
            "args": args,
            "cwd": str(cwd),
            "env": env,
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + FORK_TIMEOUT
        while request_id not in self.started:
            left = _left(deadline)
            if left <= 0:
                raise RuntimeError(
                    f"the prewarmed interpreter did not fork {module} within {FORK_TIMEOUT} s:\n"
                    + self.log_tail()
                )
            self.collect(timeout=left)
        answer = self.started.pop(request_id)
        if "error" in answer:
            raise RuntimeError(f"the prewarmed interpreter could not fork: {answer['error']}")
        return answer["pid"]

    def returncode(self, pid: int, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.returncodes:
            left = _left(deadline)
            if left is not None and left <= 0:
                return None
            self.collect(timeout=left)
        return self.returncodes[pid]

    def log_tail(self) -> str:
        """The end of what the interpreter wrote to its stderr."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def collect(self, timeout: float | None) -> None:
        """Take the interpreter's messages that arrive within ``timeout``: pids and exit statuses."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise RuntimeError(f"the prewarmed interpreter exited ({self.proc.wait()}):\n{self.log_tail()}")
        self.pending += chunk
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            message = json.loads(line)
            if "returncode" in message:
                self.returncodes[message["pid"]] = message["returncode"]
            else:
                self.started[message["id"]] = message


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` time), None for none."""
    return None if deadline is None else deadline - time.monotonic()


_server: _Server | None = None


def _the_server() -> _Server:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    return _server


def _text(data: bytes) -> str:
    """As ``subprocess`` decodes with ``text=True``: the locale's encoding, universal newlines."""
    return io.TextIOWrapper(io.BytesIO(data), encoding=locale.getpreferredencoding(False)).read()


class Forked:
    """A launch forked from the prewarmed interpreter, with the part of ``subprocess.Popen``'s
    interface the tests use. Its output comes through pipes, as with ``stdout=PIPE, stderr=PIPE,
    text=True``: :meth:`communicate` returns when every process holding them (the launch's
    DataLoader workers too) has closed them, as ``subprocess`` does."""

    def __init__(self, module: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.server = _the_server()
        folder = Path(tempfile.mkdtemp(prefix="prewarmed-"))
        fifos = [folder / "stdout", folder / "stderr"]
        for fifo in fifos:
            os.mkfifo(fifo, 0o600)
        # read ends, stdout's first, and what came through each
        self.outputs = {os.open(fifo, os.O_RDONLY | os.O_NONBLOCK): bytearray() for fifo in fifos}
        self.unfinished = list(self.outputs)  # the read ends not yet at their end
        try:
            self.pid = self.server.launch(module, list(args), cwd, env, *fifos)
        finally:
            for fifo in fifos:
                fifo.unlink()
            folder.rmdir()
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.collect(timeout=0)
            self.returncode = self.server.returncodes.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.returncode(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read both outputs to their end, then wait for the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.unfinished:
            left = _left(deadline)
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            ready, _, _ = select.select(self.unfinished, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    self.outputs[fd] += chunk
                else:
                    os.close(fd)
                    self.unfinished.remove(fd)
        self.wait(None if deadline is None else max(_left(deadline), 0))
        out, err = self.outputs.values()
        return _text(bytes(out)), _text(bytes(err))


def _prewarmed_here() -> bool:
    """Not switched off, and one thread per process (pytest-xdist's workers, tests/conftest.py):
    OpenMP's and OpenBLAS's pools start at import otherwise, and a fork copies no thread."""
    return os.environ.get(FRESH_SWITCH) != "1" and os.environ.get("OMP_NUM_THREADS") == "1"


def popen(
    module: str, args: list[str] | tuple[str, ...], cwd: Path, env: dict[str, str]
) -> Forked | subprocess.Popen:
    """``python -m module *args`` in ``cwd`` with ``env``, output captured as text: forked from the
    worker's prewarmed interpreter where that starts as a fresh one would, else a fresh one."""
    if _prewarmed_here() and _the_server().fits(env):
        return Forked(module, list(args), cwd, env)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    module: str, args: list[str] | tuple[str, ...], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """As ``subprocess.run([python, "-m", module, *args], capture_output=True, text=True)``."""
    proc = popen(module, args, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)
