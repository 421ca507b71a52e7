"""Read and run a network written by ``python -m fewmult.export``, with NumPy alone (no torch).

This file imports only NumPy and the standard library: copy it next to an exported ``.npz`` to use
the network anywhere. ``python packed_forward.py model.npz inputs.npy`` prints the predicted class
of every input (a line per input; for a language model, one class per position).

The file (version 1) is a NumPy ``.npz`` archive (``numpy.load(path)``, no pickles). Its array
``manifest`` holds a JSON text::

    {"format": "fewmult-packed", "version": 1, "model": ..., "method": ..., "input_shape": [C, H, W],
     "num_classes": K, "layers": [op, op, ...]}

and every other array is named by an op. The ops, applied in order to a batch ``x``:

* ``{"op": "flatten"}``: ``x.reshape(N, -1)``.
* ``{"op": "linear", "weight": W, "bias": name or null}``: ``x @ W.T + b``.
* ``{"op": "conv2d", "weight": W, "bias", "stride": [sh, sw], "padding": [ph, pw], "dilation":
  [dh, dw], "groups": g}``: 2-D cross-correlation as ``torch.nn.functional.conv2d``.
* ``{"op": "maxpool2d", "size": k}``: max over k x k windows with stride k; with ``"stride": s`` and
  ``"padding": p`` (the ImageNet ResNet stem's 3, 2, 1), as ``torch.nn.MaxPool2d(k, s, p)``:
  windows every s pixels over the image padded by p pixels that never win.
* ``{"op": "affine", "scale": a, "shift": b}``: ``x * a + b`` per unit (per channel for images):
  a batch norm folded (``a = gamma / sqrt(var + eps)``, ``b = beta - a * mean``).
* ``{"op": "sign_threshold", "threshold": t, "negative": n}``: a batch norm followed by
  ``sign`` (sign(0) = +1) folded into one comparison per unit: ``+1`` where ``x >= t`` (``x <= t``
  where ``n`` is true, the units whose BN scale is negative), else ``-1``.
* ``{"op": "relu"}``: ``max(x, 0)``.
* ``{"op": "hardtanh"}``: ``clip(x, -1, 1)`` (IR-Net's, after a residual addition).
* ``{"op": "residual", "body": [op, ...], "shortcut": [op, ...]}``: ``body(x) + shortcut(x)``, each
  list applied in order to the same ``x`` (an empty shortcut is the identity): a ResNet's block.
* ``{"op": "avgpool2d", "size": k}``: the mean over k x k windows with stride k; a window cut by
  the edge (odd maps) averages the values it holds (``ceil_mode=True, count_include_pad=False``).
* ``{"op": "channel_pad", "stride": s, "before": a, "after": b}``: ``x[:, :, ::s, ::s]`` with ``a``
  zero channels before and ``b`` after (the parameter-free shortcut of He et al.'s option A).
* ``{"op": "rprelu", "shift_in": g, "slope": s, "shift_out": z}``: per channel,
  ``y = x - g`` where ``x > g``, else ``s (x - g)``, plus ``z`` (ReActNet's RPReLU).
* ``{"op": "global_avgpool"}``: images (N, C, H, W) to their channel means (N, C).
* ``{"op": "lstm", "hidden_size": H, "gates": ["input", "forget", "cell", "output"], "input_weights":
  {gate: W}, "hidden_weights": {gate: W}, "bias": {gate: name}, "cell_activation": "tanh" or
  "sign"}``: token codes (N, T) to hidden states (N, T, H), zero initial state, for every step
  ``pre[gate] = W_x[gate][:, token] + b[gate] + W_h[gate] @ h``, ``i, f, o = sigmoid(pre)``,
  ``g = tanh(pre[cell])``, ``c = f c + i g``, ``h = o * act(c)`` (sign(0) = +1). A ``linear`` op
  after it applies at every position.

A weight ``W`` is ``{"encoding": ..., "shape": [...], ...}``, its scale ``s`` a number (one per
layer) or the name of an array of one per output channel (``W[c] = s[c] * ...``, per-channel
scales as XNOR-Net, Bi-Real and ReActNet):

* ``"binary"``: ``{"bits": name, "scale": s}``, one bit per weight packed eight to a byte as
  ``numpy.packbits`` (row-major, first weight in the top bit); ``W = s`` where the bit is 1, ``-s``
  where it is 0.
* ``"ternary"``: ``{"nonzero": name, "negative": name, "scale": s}``, two such bit planes (two bits
  per weight): ``W = s * nonzero * (-1 if negative else 1)``.
* ``"float32"``: ``{"values": name}``, the weights themselves (full-precision layers).

Inputs are what fewmult's data modules give the network (e.g. pixels in [0, 1] for MNIST, the
preprocessed images for SVHN and CIFAR-10).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

FORMAT, VERSION = "fewmult-packed", 1


class PackedNetwork:
    """An exported network: its manifest, its arrays, and :meth:`forward` / :meth:`predict`."""

    def __init__(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as archive:
            self.arrays = {name: archive[name] for name in archive.files}
        self.manifest: dict[str, Any] = json.loads(str(self.arrays.pop("manifest")))
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ValueError(f"{path} is not a {FORMAT} file of version {VERSION}")
        self.layers = self.manifest["layers"]
        self._weights: dict[str, np.ndarray] = {}

    def weight(self, spec: dict[str, Any]) -> np.ndarray:
        """A weight tensor of the file, in float64 (decoded once)."""
        key = json.dumps(spec, sort_keys=True)
        if key not in self._weights:
            self._weights[key] = self._decode(spec)
        return self._weights[key]

    def _decode(self, spec: dict[str, Any]) -> np.ndarray:
        shape, encoding = tuple(spec["shape"]), spec["encoding"]
        n = int(np.prod(shape))

        def plane(name: str) -> np.ndarray:
            return np.unpackbits(self.arrays[spec[name]], count=n).astype(np.float64)

        scale = spec.get("scale")
        if isinstance(scale, str):  # one per output channel
            scale = np.repeat(self.arrays[scale].astype(np.float64), n // shape[0])
        if encoding == "binary":
            values = scale * (2 * plane("bits") - 1)
        elif encoding == "ternary":
            values = scale * plane("nonzero") * (1 - 2 * plane("negative"))
        elif encoding == "float32":
            values = self.arrays[spec["values"]].astype(np.float64)
        else:
            raise ValueError(f"unknown weight encoding {encoding!r}")
        return values.reshape(shape)

    def forward(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores for inputs (N, *input_shape), computed in float64: (N, num_classes), or for a
        language model's token codes (N, T), (N, T, vocabulary)."""
        outputs = []
        for start in range(0, len(x), batch_size):
            h = np.asarray(x[start : start + batch_size])
            if h.dtype.kind == "f":
                h = h.astype(np.float64)
            outputs.append(self._run(self.layers, h))
        return np.concatenate(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The predicted class of every input (of every position, for a language model)."""
        return self.forward(x).argmax(axis=-1)

    def _per_unit(self, name: str, h: np.ndarray) -> np.ndarray:
        """A per-unit array shaped to broadcast over a batch of vectors or of images."""
        a = self.arrays[name].astype(np.float64)
        return a.reshape(1, -1, *([1] * (h.ndim - 2)))

    def _apply(self, op: dict[str, Any], h: np.ndarray) -> np.ndarray:
        kind = op["op"]
        if kind == "flatten":
            return h.reshape(len(h), -1)
        if kind == "linear":  # at every position of a sequence too
            out = h @ self.weight(op["weight"]).T
            return out if op["bias"] is None else out + self.arrays[op["bias"]]
        if kind == "conv2d":
            w = self.weight(op["weight"])
            out = conv2d(h, w, op["stride"], op["padding"], op["dilation"], op["groups"])
            return out if op["bias"] is None else out + self._per_unit(op["bias"], out)
        if kind == "lstm":
            return self._lstm(op, h)
        if kind == "maxpool2d":
            return maxpool2d(h, op["size"], op.get("stride", op["size"]), op.get("padding", 0))
        if kind == "affine":
            return h * self._per_unit(op["scale"], h) + self._per_unit(op["shift"], h)
        if kind == "sign_threshold":
            t, negative = self._per_unit(op["threshold"], h), self._per_unit(op["negative"], h).astype(bool)
            return np.where(np.where(negative, h <= t, h >= t), 1.0, -1.0)
        if kind == "relu":
            return np.maximum(h, 0)
        if kind == "hardtanh":
            return np.clip(h, -1.0, 1.0)
        if kind == "residual":
            return self._run(op["body"], h) + self._run(op["shortcut"], h)
        if kind == "avgpool2d":
            return avgpool2d(h, op["size"])
        if kind == "channel_pad":
            s = op["stride"]
            return np.pad(h[:, :, ::s, ::s], ((0, 0), (op["before"], op["after"]), (0, 0), (0, 0)))
        if kind == "rprelu":
            shifted = h - self._per_unit(op["shift_in"], h)
            slope = self._per_unit(op["slope"], h)
            return np.where(shifted > 0, shifted, slope * shifted) + self._per_unit(op["shift_out"], h)
        if kind == "global_avgpool":
            return h.mean(axis=(2, 3))
        raise ValueError(f"unknown op {kind!r}")

    def _run(self, ops: list[dict[str, Any]], h: np.ndarray) -> np.ndarray:
        for op in ops:
            h = self._apply(op, h)
        return h

    def _lstm(self, op: dict[str, Any], tokens: np.ndarray) -> np.ndarray:
        gates = op["gates"]
        w_x = {g: self.weight(op["input_weights"][g]) for g in gates}
        w_h = {g: self.weight(op["hidden_weights"][g]) for g in gates}
        bias = {g: self.arrays[op["bias"][g]].astype(np.float64) for g in gates}
        h = np.zeros((len(tokens), op["hidden_size"]))
        c = np.zeros_like(h)
        states = []
        for t in range(tokens.shape[1]):
            pre = {g: w_x[g][:, tokens[:, t]].T + bias[g] + h @ w_h[g].T for g in gates}
            i, f, o = (1 / (1 + np.exp(-pre[g])) for g in ("input", "forget", "output"))
            c = f * c + i * np.tanh(pre["cell"])
            h = o * (np.where(c >= 0, 1.0, -1.0) if op["cell_activation"] == "sign" else np.tanh(c))
            states.append(h)
        return np.stack(states, axis=1)


def all_ops(ops: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every op of a list, those inside residual ops included (depth first)."""
    for op in ops:
        yield op
        if op["op"] == "residual":
            yield from all_ops(op["body"])
            yield from all_ops(op["shortcut"])


def maxpool2d(x: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """``torch.nn.MaxPool2d(k, stride, padding)`` in NumPy (floor mode): padding never wins. The
    maximum of the k x k strided slices, one whole-map pass each (a max over a sliding-window view
    took half of an ImageNet ResNet-18's time in the compiled runtime)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=-np.inf)
    rows, cols = (x.shape[2] - k) // stride * stride + 1, (x.shape[3] - k) // stride * stride + 1
    out = x[:, :, :rows:stride, :cols:stride].copy()
    for i, j in itertools.product(range(k), range(k)):
        np.maximum(out, x[:, :, i : i + rows : stride, j : j + cols : stride], out=out)
    return out


def avgpool2d(x: np.ndarray, k: int) -> np.ndarray:
    """``torch.nn.AvgPool2d(k, ceil_mode=True, count_include_pad=False)`` in NumPy: the k x k
    offsets of each window summed in row-major order, divided by the count inside the image."""
    height, width = x.shape[2:]
    ho, wo = -(-height // k), -(-width // k)
    if (height, width) != (ho * k, wo * k):  # windows cut by the edge: zeros there, not counted
        x = np.pad(x, ((0, 0), (0, 0), (0, ho * k - height), (0, wo * k - width)))
    inside = np.zeros((ho * k, wo * k))
    inside[:height, :width] = 1
    sums = sum(x[:, :, i::k, j::k] for i in range(k) for j in range(k))
    return sums / sum(inside[i::k, j::k] for i in range(k) for j in range(k))


def conv2d(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int) -> np.ndarray:
    """``torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)`` in NumPy."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_channels, per_group, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    outs = []
    per_out = out_channels // groups
    for g in range(groups):
        patch = windows[:, g * per_group : (g + 1) * per_group]  # (N, c, H', W', kh, kw)
        kernel = w[g * per_out : (g + 1) * per_out]  # (o, c, kh, kw)
        outs.append(np.einsum("nchwij,ocij->nohw", patch, kernel, optimize=True))
    return np.concatenate(outs, axis=1)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python packed_forward.py MODEL.npz INPUTS.npy", file=sys.stderr)
        return 2
    network = PackedNetwork(argv[0])
    for labels in network.predict(np.load(argv[1], allow_pickle=False)):
        print(" ".join(str(int(v)) for v in np.atleast_1d(labels)))  # a sequence's: one per position
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
