"""Each fused function compiles once per job, not once per shape, mode or setting it meets.

Dynamo guards every compiled version on what it was traced with, and after 8 versions of a function
it stops compiling it and runs it eagerly, unfused, with only a log warning. A job used to make up
to 13 versions before its first epoch ended (``requires_grad``, a view's base shape, the counting
passes' batch of 1 before ``deterministic`` was set, autocast), so a ``gpu_pool`` slot running a
few jobs in one process silently trained its binary activations unfused. Here two real jobs run in
one process, float32 then bf16-mixed, and each function's versions are counted.
"""

from __future__ import annotations

import torch

from fewmult.config import compose_config
from fewmult.quant.fusion import _COMPILED
from fewmult.run.job import train

RESNET = [
    "dataset=synthetic",
    "dataset.shape=[3,8,8]",
    *("dataset.n_train=24", "dataset.n_val=12", "dataset.n_test=12", "dataset.batch_size=8"),
    "model=resnet20",
    "method=reactnet",
    "logger=none",
    "trainer.max_epochs=1",
    "schedule=constant",
]


def versions() -> dict[str, int]:
    """Compiled versions held for each function fewmult has compiled since Dynamo's last reset."""
    entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list
    held = {fn.__name__: len(entries(fn.__code__)) for fn, compiled in _COMPILED.items() if compiled}
    return {name: n for name, n in held.items() if n}


def test_a_job_compiles_each_fused_function_once_and_a_precision_adds_one(tmp_path):
    torch._dynamo.reset()  # versions made by this worker's earlier tests
    assert train(compose_config(*RESNET), tmp_path / "fp32")["status"] == "completed"
    once = versions()
    assert {"_shifted_sign", "_shifted_sign_backward", "_rprelu", "_rprelu_backward", "_scaled_sign"} <= set(
        once
    )
    assert once == dict.fromkeys(once, 1), once  # training, validation and the counting passes alike
    bf16 = compose_config(*RESNET, "trainer.precision=bf16-mixed")
    assert train(bf16, tmp_path / "bf16")["status"] == "completed"
    assert versions() == {name: 2 for name in once}, versions()  # + bfloat16 activations
