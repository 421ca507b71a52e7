"""Run as ``python -m tests.startup_probe`` by tests/test_prewarmed.py: prints, as one JSON line, the
state an interpreter starts a ``-m`` module in, then does what its arguments ask."""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":
    state = {
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "name": __name__,
        "spec": __spec__.name,
        "main_names": sorted(k for k in vars(sys.modules["__main__"]) if not k.startswith("__")),
        "probe_env": os.environ.get("PROBE"),
        "flags": list(sys.flags),
        "torch_before_main": "torch" in sys.modules,
    }
    print(json.dumps(state))
    print("to stderr", file=sys.stderr)
    for action in sys.argv[1:]:
        if action == "sleep":
            time.sleep(60)
        elif action == "late_grandchild":  # a child that outlives this process and then writes
            if os.fork() == 0:
                time.sleep(1.0)
                print("late", flush=True)
                os._exit(0)
        elif action.startswith("exit="):
            sys.exit(int(action.partition("=")[2]))
