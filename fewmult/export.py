"""``python -m fewmult.export RUN_DIR``: the evaluated network of ``best.ckpt`` with packed weights.

Writes ``RUN_DIR/export/model.npz`` in the format of :mod:`fewmult.packed_forward` (1 bit per binary
weight, 2 per ternary, one scale per layer, batch norm folded into a per-unit scale and shift, or
into thresholds where a sign activation follows), then proves it: the NumPy forward of that file
on the run's test split must give the same predictions as the PyTorch network it came from, and
its test error is printed beside the run's; so must the compiled runtime (:mod:`fewmult.runtime`).
A streamed dataset's test split (ImageNet's ``val/`` folders) is checked on its first
``--examples`` images (1,000 by default: NumPy's forward of the 224-pixel ResNet-18 takes about
0.15 s an image on 2 cores), decoded and normalized as the run evaluated them.
``export.json`` next to it records the numbers. ``--bench`` then times the runtime against the NumPy
reference and PyTorch float32 (:mod:`fewmult.runtime.bench`).

Methods evaluated with their latent weights (stochastic BinaryConnect, ternary connect: Lin et
al. evaluate the real-valued net) are exported as their deterministic quantization, the most likely
value of every weight (:meth:`~fewmult.quant.base.WeightQuantizer.most_likely`); the printed test
error of the export then differs from the run's, which the run's own number would hide.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewmult.count import format_bytes
from fewmult.data import TensorDataModule
from fewmult.errors import UserError, report_user_error
from fewmult.models.charlstm import CharLSTM
from fewmult.models.papernet import PaperNet
from fewmult.models.resnet import ResNet, ZeroPadShortcut
from fewmult.nn.activations import RPReLU
from fewmult.nn.layers import QuantConv2d, QuantLinear
from fewmult.nn.recurrent import GATES
from fewmult.packed_forward import FORMAT, VERSION, PackedNetwork
from fewmult.packing import pack_bits
from fewmult.qbp import TapError
from fewmult.quant.activations import RSign, SignActivation
from fewmult.runtime import CompiledNetwork
from fewmult.stages.init_from import recorded_network

_BatchNorm = nn.modules.batchnorm._BatchNorm


class _Writer:
    """Collects the manifest's ops and the arrays they name."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, value: np.ndarray) -> str:
        key = f"{len(self.arrays)}.{name}"
        self.arrays[key] = value
        return key

    @contextlib.contextmanager
    def nested(self) -> Iterator[list[dict[str, Any]]]:
        """Ops written inside go to the list it yields (a residual op's body or shortcut)."""
        outer, self.ops = self.ops, []
        try:
            yield self.ops
        finally:
            self.ops = outer


def _weight_spec(writer: _Writer, layer: QuantLinear | QuantConv2d, name: str = "weight") -> dict[str, Any]:
    """The encoding of one layer's exported weights: binary, ternary or float32."""
    quantizer = layer.weight_quantizer
    exported = exported_weight(layer)
    shape = list(exported.shape)
    if quantizer is None or quantizer.bits == 32:
        return {"encoding": "float32", "shape": shape, "values": writer.array(name, exported.numpy())}
    scale = quantizer.effective_scale(layer.weight).detach()
    codes = torch.round(exported / scale)
    if not torch.equal(codes.abs() * scale, exported.abs()) or codes.abs().max() > 1:
        raise UserError(f"{type(quantizer).__name__}'s weights are not +-scale or 0; they cannot be packed.")
    # one scale per layer, or the array of one per output channel
    per_channel = scale.numel() > 1
    scale_spec: float | str = (
        writer.array(f"{name}_scale", scale.flatten().double().numpy()) if per_channel else float(scale)
    )
    if quantizer.bits == 1:
        if (codes == 0).any():
            raise UserError(f"{type(quantizer).__name__} gave a zero weight, which 1 bit cannot hold.")
        return {
            "encoding": "binary",
            "shape": shape,
            "scale": scale_spec,
            "bits": writer.array(f"{name}_bits", pack_bits(codes > 0).numpy()),
        }
    return {
        "encoding": "ternary",
        "shape": shape,
        "scale": scale_spec,
        "nonzero": writer.array(f"{name}_nonzero", pack_bits(codes != 0).numpy()),
        "negative": writer.array(f"{name}_negative", pack_bits(codes < 0).numpy()),
    }


def exported_weight(layer: QuantLinear | QuantConv2d) -> torch.Tensor:
    """The weight the export holds: the evaluated effective weight, or for a net evaluated with its
    latent weights, their most likely quantization."""
    quantizer = layer.weight_quantizer
    with torch.no_grad():
        if quantizer is None:
            return layer.weight.detach().clone()
        return quantizer.most_likely(layer.weight).clone()


def _layer_op(writer: _Writer, layer: QuantLinear | QuantConv2d) -> None:
    bias = None if layer.bias is None else writer.array("bias", layer.bias.detach().double().numpy())
    op: dict[str, Any] = {"op": "linear" if isinstance(layer, QuantLinear) else "conv2d"}
    op["weight"] = _weight_spec(writer, layer)
    op["bias"] = bias
    if isinstance(layer, QuantConv2d):
        if isinstance(layer.padding, str):
            raise UserError(f"padding={layer.padding!r} is not exported; give the sizes.")
        op.update(
            stride=list(layer.stride),
            padding=list(layer.padding),
            dilation=list(layer.dilation),
            groups=layer.groups,
        )
    writer.ops.append(op)


def _bn_affine(bn: _BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation-mode BN as ``x * a + b`` per unit, in float64."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a.numpy(), (beta - a * mean).numpy()


def _bn_op(writer: _Writer, bn: _BatchNorm, then_sign: bool) -> None:
    a, b = _bn_affine(bn)
    if not then_sign:
        writer.ops.append(
            {"op": "affine", "scale": writer.array("scale", a), "shift": writer.array("shift", b)}
        )
        return
    # sign(a x + b) = +1  <=>  x >= -b/a (a > 0), x <= -b/a (a < 0); a = 0: always sign(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        threshold = np.where(a != 0, -b / a, np.where(b >= 0, -np.inf, np.inf))
    writer.ops.append(
        {
            "op": "sign_threshold",
            "threshold": writer.array("threshold", threshold),
            "negative": writer.array("negative", a < 0),
        }
    )


def _lstm_ops(writer: _Writer, model: CharLSTM) -> None:
    """The quantized LSTM (its eight gate matrices, biases, cell activation) and the softmax layer."""
    lstm = model.lstm
    if not isinstance(lstm.cell_activation, (nn.Tanh, SignActivation)):
        raise UserError(f"fewmult.export writes LSTMs with tanh or sign cells, not {lstm.cell_activation}.")
    op: dict[str, Any] = {"op": "lstm", "hidden_size": lstm.hidden_size, "gates": list(GATES)}
    op["cell_activation"] = "sign" if isinstance(lstm.cell_activation, SignActivation) else "tanh"
    op["input_weights"] = {g: _weight_spec(writer, w, g) for g, w in lstm.input_weights.items()}
    op["hidden_weights"] = {g: _weight_spec(writer, w, f"h_{g}") for g, w in lstm.hidden_weights.items()}
    op["bias"] = {
        g: writer.array(f"bias_{g}", w.bias.detach().double().numpy()) for g, w in lstm.input_weights.items()
    }
    writer.ops.append(op)
    _layer_op(writer, model.out)


def _sign_op(writer: _Writer, activation: nn.Module, channels: int) -> None:
    """A binary activation before a convolution: sign(x) (Bi-Real's ApproxSign, BNN's sign) or
    ReActNet's sign(x - alpha_c), as one threshold per channel."""
    if isinstance(activation, RSign):
        threshold = activation.threshold.detach().double().numpy()
    elif isinstance(activation, SignActivation):
        threshold = np.zeros(channels)
    else:
        raise UserError(f"fewmult.export cannot write a {type(activation).__name__} activation.")
    writer.ops.append(
        {
            "op": "sign_threshold",
            "threshold": writer.array("threshold", threshold),
            "negative": writer.array("negative", np.zeros(channels, dtype=bool)),
        }
    )


def _resnet_module_ops(writer: _Writer, m: nn.Module) -> None:
    """The ops of one of a ResNet's parts other than its sign activations."""
    if isinstance(m, nn.Sequential):
        for child in m:
            _resnet_module_ops(writer, child)
    elif isinstance(m, (QuantLinear, QuantConv2d)):
        _layer_op(writer, m)
    elif isinstance(m, _BatchNorm):
        _bn_op(writer, m, then_sign=False)
    elif isinstance(m, nn.ReLU):
        writer.ops.append({"op": "relu"})
    elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (-1.0, 1.0):  # IR-Net's
        writer.ops.append({"op": "hardtanh"})
    elif isinstance(m, RPReLU):
        writer.ops.append(
            {
                "op": "rprelu",
                **{
                    key: writer.array(key, p.detach().double().numpy())
                    for key, p in (
                        ("shift_in", m.shift_in),
                        ("slope", m.prelu.weight),
                        ("shift_out", m.shift_out),
                    )
                },
            }
        )
    elif (
        isinstance(m, nn.AvgPool2d) and m.kernel_size == m.stride and not m.count_include_pad and m.ceil_mode
    ):
        writer.ops.append({"op": "avgpool2d", "size": int(m.kernel_size)})
    elif isinstance(m, nn.MaxPool2d) and not m.ceil_mode and m.dilation == 1:  # the ImageNet stem's
        pool = {"size": int(m.kernel_size), "stride": int(m.stride), "padding": int(m.padding)}
        writer.ops.append({"op": "maxpool2d", **pool})
    elif isinstance(m, ZeroPadShortcut):
        writer.ops.append(
            {"op": "channel_pad", "stride": m.stride, "before": m.pad // 2, "after": m.pad - m.pad // 2}
        )
    elif not isinstance(m, nn.Identity):
        raise UserError(f"fewmult.export cannot write a {type(m).__name__} (in a ResNet).")


def _half_block(writer: _Writer, pre: nn.Module, conv: QuantConv2d, bn: nn.Module) -> None:
    """``BN(conv(pre(x)))``: the binary activation (if any), the convolution, its batch norm."""
    if not isinstance(pre, nn.Identity):
        _sign_op(writer, pre, conv.in_channels)
    _layer_op(writer, conv)
    _resnet_module_ops(writer, bn)


def _resnet_ops(writer: _Writer, model: ResNet) -> None:
    """Stem, blocks (a residual op per shortcut), global average pooling, classifier."""
    _resnet_module_ops(writer, model.stem)
    for block in model.blocks:
        with writer.nested() as body:
            _half_block(writer, block.pre1, block.conv1, block.bn1)
            if not block.per_conv:
                _resnet_module_ops(writer, block.post1)
                _half_block(writer, block.pre2, block.conv2, block.bn2)
        with writer.nested() as shortcut:
            _resnet_module_ops(writer, block.shortcut)
        writer.ops.append({"op": "residual", "body": body, "shortcut": shortcut})
        if block.per_conv:
            _resnet_module_ops(writer, block.post1)
            with writer.nested() as body:
                _half_block(writer, block.pre2, block.conv2, block.bn2)
            writer.ops.append({"op": "residual", "body": body, "shortcut": []})
        _resnet_module_ops(writer, block.post2)
    writer.ops.append({"op": "global_avgpool"})
    _layer_op(writer, model.classifier)


def pack_network(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The ops and arrays of a :class:`PaperNet`, :class:`ResNet` or :class:`CharLSTM` in evaluation mode."""
    writer = _Writer()
    if isinstance(model, (CharLSTM, ResNet)):
        (_lstm_ops if isinstance(model, CharLSTM) else _resnet_ops)(writer, model)
        return writer.ops, writer.arrays
    if not isinstance(model, PaperNet):
        raise UserError(
            f"fewmult.export writes fewmult's models (PaperNet: model=mlp, cnn and the papers' nets; "
            f"ResNet: model=resnet20, resnet18, resnet34; CharLSTM: model=lstm), not a "
            f"{type(model).__name__}."
        )
    modules = [m for block in model.children() for m in block.children() if not isinstance(m, TapError)]
    i = 0
    while i < len(modules):
        m = modules[i]
        following = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(m, nn.Flatten):
            writer.ops.append({"op": "flatten"})
        elif isinstance(m, (QuantLinear, QuantConv2d)):
            _layer_op(writer, m)
        elif isinstance(m, nn.MaxPool2d):
            writer.ops.append({"op": "maxpool2d", "size": int(m.kernel_size)})
        elif isinstance(m, _BatchNorm):
            then_sign = isinstance(following, SignActivation)
            _bn_op(writer, m, then_sign)
            i += then_sign
        elif isinstance(m, nn.ReLU):
            writer.ops.append({"op": "relu"})
        else:
            raise UserError(f"fewmult.export cannot write a {type(m).__name__} (in {type(model).__name__}).")
        i += 1
    return writer.ops, writer.arrays


def torch_predictions(model: nn.Module, x: torch.Tensor, latent_eval: bool) -> np.ndarray:
    """Predictions of the PyTorch network the export holds (for latent-weight methods: the net with
    its most likely quantized weights, evaluated as the latent net is)."""
    model.eval()
    saved = {}
    if latent_eval:
        for layer in (m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))):
            saved[layer] = layer.weight.detach().clone()
            with torch.no_grad():
                layer.weight.copy_(exported_weight(layer))
    try:
        with torch.no_grad():
            return torch.cat([model(batch).argmax(-1) for batch in x.split(256)]).numpy()
    finally:
        with torch.no_grad():
            for layer, weight in saved.items():
                layer.weight.copy_(weight)


STREAMED_EXAMPLES = 1000  # test images a streamed split is checked on, unless --examples says


def test_examples(datamodule: Any, limit: int | None) -> tuple[torch.Tensor, np.ndarray, int]:
    """Inputs and labels of the test split (its first ``limit`` examples where given) and the number
    of labels in the whole split: held in memory (a language model's examples are windows, each a
    label per character), or streamed from disk (ImageNet's folders) through the run's evaluation
    transform and normalization, in file order."""
    if isinstance(datamodule, TensorDataModule):
        splits = datamodule.load()
        x = splits.test_x if datamodule.input_kind == "tokens" else splits.test_x.float()
        return x[:limit], splits.test_y[:limit].numpy(), splits.test_y.numel()
    xs, ys, n = [], [], 0
    for batch in datamodule.test_dataloader():
        x, y = datamodule.on_after_batch_transfer(batch, 0)
        xs.append(x)
        ys.append(y)
        n += len(y)
        if limit is not None and n >= limit:
            break
    return torch.cat(xs)[:limit], torch.cat(ys)[:limit].numpy(), len(datamodule.load().test)


def export_run(run_dir: Path, examples: int | None = None) -> dict[str, Any]:
    """Write ``RUN_DIR/export/model.npz``, check it against PyTorch on the test split (its first
    ``examples``; a streamed split's first ``STREAMED_EXAMPLES`` when not given), return the numbers."""
    run_dir = Path(run_dir)
    cfg, model, datamodule = recorded_network(run_dir)
    if examples is None and not isinstance(datamodule, TensorDataModule):
        examples = STREAMED_EXAMPLES
    ops, arrays = pack_network(model)
    quantizers = [m.weight_quantizer for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    latent_eval = any(q is not None and q.eval_policy == "latent" and q.bits < 32 for q in quantizers)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "input_kind": datamodule.input_kind,  # images (float) or tokens (int64 codes)
        "input_shape": list(datamodule.image_shape),
        "num_classes": datamodule.num_classes,
        "weights": "most likely quantization of the latent weights" if latent_eval else "as evaluated",
        "layers": ops,
    }
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    path = out / "model.npz"
    np.savez(path, manifest=np.array(json.dumps(manifest)), **arrays)

    x, y, split_size = test_examples(datamodule, examples)
    scores = PackedNetwork(str(path)).forward(x.numpy())
    packed = scores.argmax(-1)
    runtime = CompiledNetwork(str(path))
    runtime_scores = runtime.forward(x.numpy())
    reference = torch_predictions(model, x, latent_eval)
    results_path = run_dir / "results.json"
    run_results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    summary = {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "checkpoint_bytes": (run_dir / "checkpoints" / "best.ckpt").stat().st_size,
        "float32_weight_bytes": 4
        * sum(a.numel() for a in model.state_dict().values() if a.is_floating_point()),
        "test_examples": int(y.size),  # a language model's: every position of every window
        "test_split_examples": split_size,
        "predictions_identical": int((packed == reference).sum()),
        "runtime": f"{runtime.isa}, {runtime.threads} threads"
        if runtime.compiled
        else "NumPy (not compiled)",
        "runtime_predictions_identical": int((runtime_scores.argmax(-1) == packed).sum()),
        "runtime_largest_score_difference": float(np.abs(runtime_scores - scores).max()),
        "export_test_error": float((packed != y).mean()),
        "run_test_error": run_results.get("test_error", math.nan),
        "latent_weights_at_evaluation": latent_eval,
    }
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _sizes(text: str) -> list[int]:
    return [_positive(t) for t in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fewmult.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir", type=Path, help="a run folder of fewmult.train (it holds checkpoints/best.ckpt)"
    )
    parser.add_argument(
        "--bench", action="store_true", help="time the compiled runtime, the NumPy reference and PyTorch"
    )
    parser.add_argument(
        "--batches", type=_sizes, default=[1, 64], help="batch sizes of --bench (default: 1,64)"
    )
    parser.add_argument(
        "--threads", type=_positive, default=None, help="threads of --bench (default: the cores)"
    )
    parser.add_argument(
        "--examples",
        type=_positive,
        default=None,
        help=f"check on the test split's first N examples (default: all of a split held in memory, the "
        f"first {STREAMED_EXAMPLES:,} images of a streamed one)",
    )
    args = parser.parse_args(argv)
    try:
        s = export_run(args.run_dir, args.examples)
    except Exception as exc:
        return report_user_error("fewmult.export", exc)
    kind = (
        "most likely quantization of the latent weights"
        if s["latent_weights_at_evaluation"]
        else "the evaluated network"
    )
    print(f"wrote {s['file']} ({kind})")
    print(
        f"size: {format_bytes(s['file_bytes'])}; best.ckpt {format_bytes(s['checkpoint_bytes'])}, "
        f"its float32 weights and buffers {format_bytes(s['float32_weight_bytes'])}"
    )
    n, same = s["test_examples"], s["predictions_identical"]
    print(f"NumPy forward of the file vs PyTorch: {same} of {n} test predictions identical")
    run_label = "run (latent weights)" if s["latent_weights_at_evaluation"] else "run"
    part = (
        f" (on the first {n:,} of its {s['test_split_examples']:,})" if n < s["test_split_examples"] else ""
    )
    print(f"test error: export {s['export_test_error']:.4f}{part}, {run_label} {s['run_test_error']:.4f}")
    same_runtime = s["runtime_predictions_identical"]
    print(
        f"compiled runtime ({s['runtime']}) vs NumPy: {same_runtime} of {n} test predictions identical, "
        f"scores within {s['runtime_largest_score_difference']:.2g}"
    )
    if same != n:
        print(f"fewmult.export: error: {n - same} predictions differ from PyTorch's", file=sys.stderr)
        return 1
    if same_runtime != n:
        print(
            f"fewmult.export: error: {n - same_runtime} predictions of the compiled runtime differ from "
            "the NumPy reference's",
            file=sys.stderr,
        )
        return 1
    if args.bench:
        try:
            bench(args.run_dir, Path(s["file"]), args.batches, args.threads)
        except Exception as exc:
            return report_user_error("fewmult.export", exc)
    return 0


def bench(run_dir: Path, path: Path, batches: list[int], threads: int | None) -> None:
    """Print and record (``export.json``'s ``bench``) images/s of the runtime, NumPy and PyTorch."""
    from fewmult.runtime import bench as timing
    from fewmult.runtime import max_threads

    _, _, datamodule = recorded_network(run_dir)
    if datamodule.input_kind != "images":
        raise UserError(
            "--bench times networks of images against PyTorch's feed-forward layers; this run's "
            f"network reads {datamodule.input_kind} (the export itself is written and checked)."
        )
    x = test_examples(datamodule, max(batches))[0].numpy()  # the runtime times the first examples
    repeats = -(-max(batches) // len(x))
    x = np.concatenate([x] * repeats) if repeats > 1 else x
    threads = threads or max_threads()
    rows = timing.images_per_second(str(path), x, batches, threads)
    print(timing.format_rows(rows, threads, CompiledNetwork(str(path), threads=threads).isa))
    summary_path = path.parent / "export.json"
    summary = json.loads(summary_path.read_text())
    summary["bench"] = {"threads": threads, "rows": rows}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
