"""Packed export: every method's network, written and read back by NumPy alone, predicts as PyTorch;
``python -m fewmult.export`` on a real run proves its file and reports its size and test error."""

from __future__ import annotations

import json
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bench_runtime import as_trained as trained_looking
from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.errors import UserError
from fewmult.export import pack_network, torch_predictions
from fewmult.nn import quant_layers
from fewmult.packed_forward import FORMAT, PackedNetwork, maxpool2d
from fewmult.packing import pack_bits
from fewmult.runtime.bench import torch_float32
from tests.conftest import REPO, trained_run
from tests.test_methods_train import METHODS  # every method the papers' nets take
from tests.test_resume import TINY_LSTM

# Bi-Real's ResNet block: a shortcut around every convolution, 2x2 average pooling + a real-valued
# 1x1 convolution where it downsamples
BIREAL_BLOCK = ("model.convs_per_shortcut=1", "model.shortcut=avgpool_conv")
NETS = {
    "mlp": (("model=mlp", "model.arch=64FC-48FC"), (1, 8, 8)),
    "cnn": (("model=cnn", "model.arch=8C3-MP2-12C3-16FC", "model.padding=1"), (3, 12, 12)),
}


# max-pools (shape, k, stride, padding) on odd and even sizes, ImageNet's stem first
MAXPOOLS = [
    ((2, 3, 9, 9), 3, 2, 1),
    ((1, 4, 8, 7), 2, 2, 0),
    ((1, 1, 5, 5), 3, 1, 1),
    ((1, 2, 7, 6), 3, 3, 0),
]


@pytest.mark.parametrize("shape, k, stride, padding", MAXPOOLS)
def test_maxpool_is_torchs(shape, k, stride, padding):
    """The NumPy max-pool (ImageNet's stem: 3x3, stride 2, padding 1) on odd and even sizes."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.max_pool2d(x, k, stride, padding).numpy()
    assert np.array_equal(maxpool2d(x.numpy(), k, stride, padding), expected)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_packed_bits_are_numpys_packbits(n):
    bits = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    assert np.array_equal(pack_bits(bits).numpy(), np.packbits(bits.numpy()))
    assert np.array_equal(np.unpackbits(pack_bits(bits).numpy(), count=n).astype(bool), bits.numpy())


def mode_of_latent_weights(layer: torch.nn.Module) -> torch.Tensor:
    """The most likely effective weight of stochastic BinaryConnect and ternary connect, from their
    probabilities (docs/papers.md A.3, A.4), not from the quantizer's ``most_likely``:
    BC: ``+s`` with ``p = clip((w/s + 1)/2, 0, 1)``, the mode where ``p >= 1/2`` (``+s`` at ``p = 1/2``);
    TC: ``s sign(w)`` with ``p = clip(|w|/s, 0, 1)``, else 0, the mode where ``p > 1/2``."""
    quantizer, w = layer.weight_quantizer, layer.weight.detach()
    s = float(quantizer.s)
    if type(quantizer).__name__ == "StochasticBinaryConnect":
        return torch.where(((w / s + 1) / 2).clamp(0, 1) >= 0.5, s, -s)
    return torch.where((w.abs() / s).clamp(0, 1) > 0.5, s * torch.sign(w), 0.0)


def latent_net_with_modes(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a latent-evaluated net whose weights are their modes: the network the export holds."""
    copy = deepcopy(model).eval()
    with torch.no_grad():
        for layer in quant_layers(copy):
            if layer.weight_quantizer is not None:
                layer.weight.copy_(mode_of_latent_weights(layer))
    return copy


def write(tmp_path: Path, model: torch.nn.Module) -> PackedNetwork:
    ops, arrays = pack_network(model)
    path = tmp_path / "model.npz"
    manifest = {"format": FORMAT, "version": 1, "layers": ops}
    np.savez(path, manifest=np.array(json.dumps(manifest)), **arrays)
    return PackedNetwork(str(path))


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("method", METHODS)
def test_numpy_forward_of_the_file_predicts_as_pytorch(tmp_path, method, net):
    overrides, shape = NETS[net]
    cfg = compose_config("dataset=synthetic", f"method={method}", *overrides)
    torch.manual_seed(0)
    model = trained_looking(build_model(cfg, shape, 10))
    packed = write(tmp_path, model)
    x = torch.rand(300, *shape)
    latent = any(
        m.weight_quantizer.eval_policy == "latent" for m in quant_layers(model) if m.weight_quantizer
    )
    reference = latent_net_with_modes(model) if latent else model  # the evaluated network, or its modes
    with torch.no_grad():
        scores = reference(x).numpy()
    assert np.array_equal(packed.predict(x.numpy()), scores.argmax(-1))
    assert np.allclose(packed.forward(x.numpy()), scores, rtol=1e-4, atol=1e-4)
    # the packed sizes: 1 bit per binary weight, 2 per ternary
    bits = {"fp": 32, "tc": 2}.get(method, 1)
    for op in (o for o in packed.layers if "weight" in o):
        n = int(np.prod(op["weight"]["shape"]))
        stored = sum(
            packed.arrays[v].nbytes
            for k, v in op["weight"].items()
            if k in ("bits", "nonzero", "negative", "values")
        )
        assert stored == (4 * n if bits == 32 else bits * ((n + 7) // 8))
        if op["weight"]["encoding"] != "float32":  # a scale per layer, or per output channel (bireal, irnet)
            scale = op["weight"]["scale"]
            quantizer = next(m.weight_quantizer for m in quant_layers(model) if m.weight_quantizer)
            per_channel = getattr(quantizer, "per_channel", False)  # an option, or IR-Net's always
            assert isinstance(scale, str) == per_channel
            assert not per_channel or packed.arrays[scale].shape == (op["weight"]["shape"][0],)
    if cfg.method.activation:  # sign activations: BN folded into thresholds
        hidden_blocks = len(list(model.children())) - 1
        assert [o["op"] for o in packed.layers].count("sign_threshold") == hidden_blocks


@pytest.mark.parametrize("method", ["lab", "lab2", "tc", "fp"])
def test_the_lstm_predicts_every_position_as_pytorch(tmp_path, method):
    cfg = compose_config("dataset=text", f"method={method}", "model.hidden_size=24")
    torch.manual_seed(0)
    model = build_model(cfg, (15,), 30).eval()
    with torch.no_grad():  # biases and weights away from their initial values, as after training
        for layer in quant_layers(model):
            layer.weight.uniform_(-0.3, 0.3)
            if layer.bias is not None:
                layer.bias.normal_(0, 0.5)
    packed = write(tmp_path, model)
    assert [op["op"] for op in packed.layers] == ["lstm", "linear"]
    tokens = torch.randint(0, 30, (40, 15))
    reference = latent_net_with_modes(model) if method == "tc" else model
    with torch.no_grad():
        scores = reference(tokens).numpy()
    assert np.array_equal(packed.predict(tokens.numpy()), scores.argmax(-1))
    assert np.allclose(packed.forward(tokens.numpy()), scores, atol=1e-5)


def test_a_model_of_another_kind_is_refused_with_the_reason():
    with pytest.raises(UserError, match="PaperNet: model=mlp"):
        pack_network(torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_the_reader_needs_no_torch(tmp_path):
    """packed_forward.py runs as a script in a Python where importing torch fails."""
    cfg = compose_config("dataset=synthetic", "method=lab2", *NETS["mlp"][0])
    torch.manual_seed(0)
    model = trained_looking(build_model(cfg, (1, 8, 8), 10))
    write(tmp_path, model)
    x = torch.rand(20, 1, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    script = REPO / "fewmult" / "packed_forward.py"
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        "sys.argv = ['packed_forward.py', 'model.npz', 'x.npy']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert [int(v) for v in proc.stdout.split()] == torch_predictions(model, x, latent_eval=False).tolist()


TRAINED = {
    "bc_stoch": ("dataset=synthetic", "method=bc_stoch", "model.arch=128FC-64FC"),
    "lab2": ("dataset=synthetic", "method=lab2", "model.arch=128FC-64FC"),
    "lstm-lab2": (*TINY_LSTM, "method=lab2"),
    "resnet20-reactnet": (
        *("dataset=synthetic", "dataset.shape=[3,12,12]", "dataset.n_train=200", "dataset.batch_size=50"),
        *("model=resnet20", "method=reactnet", *BIREAL_BLOCK),
    ),
}
BENCHED = {"lab2", "resnet20-reactnet"}


@pytest.mark.parametrize("run", list(TRAINED))
def test_export_of_a_trained_run(run_cli, tmp_path, run):
    out = trained_run(tmp_path / "run", *TRAINED[run], "trainer.max_epochs=2")
    bench = ("--bench", "--batches", "1", "--threads", "1") if run in BENCHED else ()
    proc = run_cli(str(out), *bench, module="fewmult.export")
    assert proc.returncode == 0, proc.stderr
    if bench:
        check_bench(proc, out)
    if run == "lstm-lab2":  # --bench compares image networks only: said in one line, the export kept
        refused = run_cli(str(out), "--bench", module="fewmult.export")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert "--bench times networks of images" in refused.stderr
        assert "vs NumPy" in refused.stdout
    summary = json.loads((out / "export" / "export.json").read_text())
    results = json.loads((out / "results.json").read_text())
    n = summary["test_examples"]
    assert summary["predictions_identical"] == n > 0
    assert n == 200 if run != "lstm-lab2" else n % 20 == 0  # 200 images; windows of 20 characters
    assert f"{n} of {n} test predictions identical" in proc.stdout
    assert f"vs NumPy: {n} of {n} test predictions identical" in proc.stdout  # the compiled runtime
    # a tiny LSTM's float32 softmax layer and biases are a large share of its file, and so are a
    # ResNet-20's per-channel arrays (BN, RSign, RPReLU) and float stem and shortcut convolutions
    smaller = {"lstm-lab2": 2, "resnet20-reactnet": 5}.get(run, 10)
    assert summary["file_bytes"] < summary["float32_weight_bytes"] / smaller < summary["checkpoint_bytes"]
    assert "size: " in proc.stdout and "best.ckpt" in proc.stdout
    if run != "bc_stoch":  # evaluated with its quantized weights: the export is that very network
        assert not summary["latent_weights_at_evaluation"]
        assert summary["export_test_error"] == pytest.approx(results["test_error"], abs=1e-6)
    else:  # evaluated with latent weights: the deterministic quantization, its own error beside the run's
        assert summary["latent_weights_at_evaluation"]
        assert "run (latent weights)" in proc.stdout and 0 <= summary["export_test_error"] <= 1


def check_bench(proc: subprocess.CompletedProcess, run_dir) -> None:
    """What ``python -m fewmult.export RUN --bench --batches 1 --threads 1`` prints and records
    on a trained run: the compiled runtime's predictions, and one row of images/s."""
    assert "vs PyTorch" in proc.stdout and "1 thread(s)" in proc.stdout
    summary = json.loads((run_dir / "export" / "export.json").read_text())
    assert summary["runtime_predictions_identical"] == summary["test_examples"]
    (row,) = summary["bench"]["rows"]
    assert row["batch"] == 1 and summary["bench"]["threads"] == 1
    for name in ("runtime", "numpy", "torch"):
        assert row[f"{name}_images_per_s"] > 0
    assert row["vs_torch"] == pytest.approx(row["runtime_images_per_s"] / row["torch_images_per_s"])


def test_export_of_a_folder_without_a_checkpoint_says_what_is_missing(run_cli, tmp_path):
    proc = run_cli(str(tmp_path), module="fewmult.export")
    assert proc.returncode == 2
    assert "run_config.yaml is missing" in proc.stderr and "Traceback" not in proc.stderr


def test_the_export_fails_when_a_prediction_differs(tmp_path, monkeypatch, capsys):
    """The proof has teeth: with one of the file's predictions changed (the one stand-in here: a
    wrapped ``PackedNetwork.forward``), ``python -m fewmult.export`` exits 1 and says how many differ."""
    from fewmult import export
    from fewmult.run.job import train

    run_dir = tmp_path / "run"
    cfg = compose_config(*TRAINED["lab2"], "trainer.max_epochs=1", "logger=none")
    assert train(cfg, run_dir)["status"] == "completed"
    assert export.main([str(run_dir)]) == 0
    forward = PackedNetwork.forward

    def one_off(self, x, batch_size=256):
        scores = forward(self, x, batch_size)
        scores[0, scores[0].argmin()] = scores[0].max() + 1
        return scores

    monkeypatch.setattr(export.PackedNetwork, "forward", one_off)
    assert export.main([str(run_dir)]) == 1
    assert "fewmult.export: error: 1 predictions differ from PyTorch's" in capsys.readouterr().err


# ResNet-20 on 8x8 images: Bi-Real's block (a shortcut per convolution, 2x2 average pooling + 1x1
# convolution where it downsamples), the original block (two convolutions a shortcut) with He et al.'s
# zero-padding shortcut, ReActNet's RSign / RPReLU and IR-Net's hard tanh
RESNETS = {
    "bireal": ("method=bireal", *BIREAL_BLOCK),
    "reactnet": ("method=reactnet", *BIREAL_BLOCK),
    "bwn-two_convs-zero_pad": ("method=bwn", "model.convs_per_shortcut=2", "model.shortcut=zero_pad"),
    "reactnet-imagenet_stem": ("method=reactnet", *BIREAL_BLOCK, "model.stem=imagenet"),  # 7x7/2 + max-pool
    # IR-Net's Libra-PB weights (per-channel powers of two) with He et al.'s zero-padding shortcut and
    # a hard tanh after every sum
    "irnet": ("method=irnet", "model.convs_per_shortcut=1"),
}


@pytest.mark.parametrize("setup", list(RESNETS))
def test_resnets_predict_as_pytorch(tmp_path, setup):
    cfg = compose_config("dataset=synthetic", "model=resnet20", *RESNETS[setup])
    torch.manual_seed(0)
    model = trained_looking(build_model(cfg, (3, 8, 8), 10))
    packed = write(tmp_path, model)
    x = torch.randn(100, 3, 8, 8)
    with torch.no_grad():
        scores = model(x).numpy()
    assert np.array_equal(packed.predict(x.numpy()), scores.argmax(-1))
    assert np.allclose(packed.forward(x.numpy()), scores, rtol=1e-4, atol=1e-4 * np.abs(scores).max())
    ops = [op["op"] for op in packed.layers]
    assert ops.count("residual") == 9 * (2 if cfg.model.convs_per_shortcut == 1 else 1)
    assert ops[-2:] == ["global_avgpool", "linear"]
    baseline = torch_float32(packed)(x.numpy()).numpy()  # what --bench times beside the runtime
    assert np.allclose(baseline, scores, rtol=1e-4, atol=1e-4 * np.abs(scores).max())
    if "model.stem=imagenet" in RESNETS[setup]:
        assert {"op": "maxpool2d", "size": 3, "stride": 2, "padding": 1} in packed.layers
    assert ops.count("hardtanh") == (18 if "method=irnet" in RESNETS[setup] else 0)
