"""Read and run a network written by ``python -m fewmult.export``, with NumPy alone (no torch).

This file imports only NumPy and the standard library: copy it next to an exported ``.npz`` to use
the network anywhere. ``python packed_forward.py model.npz inputs.npy`` prints the predicted class
of every input.

The file (version 1) is a NumPy ``.npz`` archive (``numpy.load(path)``, no pickles). Its array
``manifest`` holds a JSON text::

    {"format": "fewmult-packed", "version": 1, "model": ..., "method": ..., "input_shape": [C, H, W],
     "num_classes": K, "layers": [op, op, ...]}

and every other array is named by an op. The ops, applied in order to a batch ``x``:

* ``{"op": "flatten"}``: ``x.reshape(N, -1)``.
* ``{"op": "linear", "weight": W, "bias": name or null}``: ``x @ W.T + b``.
* ``{"op": "conv2d", "weight": W, "bias", "stride": [sh, sw], "padding": [ph, pw], "dilation":
  [dh, dw], "groups": g}``: 2-D cross-correlation as ``torch.nn.functional.conv2d``.
* ``{"op": "maxpool2d", "size": k}``: max over k x k windows with stride k.
* ``{"op": "affine", "scale": a, "shift": b}``: ``x * a + b`` per unit (per channel for images):
  a batch norm folded (``a = gamma / sqrt(var + eps)``, ``b = beta - a * mean``).
* ``{"op": "sign_threshold", "threshold": t, "negative": n}``: a batch norm followed by
  ``sign`` (sign(0) = +1) folded into one comparison per unit: ``+1`` where ``x >= t`` (``x <= t``
  where ``n`` is true, the units whose BN scale is negative), else ``-1``.
* ``{"op": "relu"}``: ``max(x, 0)``.

A weight ``W`` is ``{"encoding": ..., "shape": [...], ...}``:

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

import json
import sys
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

    def weight(self, spec: dict[str, Any]) -> np.ndarray:
        """The weight tensor of a ``linear`` or ``conv2d`` op, in float64."""
        shape, encoding = tuple(spec["shape"]), spec["encoding"]
        n = int(np.prod(shape))

        def plane(name: str) -> np.ndarray:
            return np.unpackbits(self.arrays[spec[name]], count=n).astype(np.float64)

        if encoding == "binary":
            values = spec["scale"] * (2 * plane("bits") - 1)
        elif encoding == "ternary":
            values = spec["scale"] * plane("nonzero") * (1 - 2 * plane("negative"))
        elif encoding == "float32":
            values = self.arrays[spec["values"]].astype(np.float64)
        else:
            raise ValueError(f"unknown weight encoding {encoding!r}")
        return values.reshape(shape)

    def forward(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores (N, num_classes) for inputs (N, *input_shape), computed in float64."""
        weights = [self.weight(op["weight"]) if "weight" in op else None for op in self.layers]
        outputs = []
        for start in range(0, len(x), batch_size):
            h = np.asarray(x[start : start + batch_size], dtype=np.float64)
            for op, w in zip(self.layers, weights, strict=True):
                h = self._apply(op, w, h)
            outputs.append(h)
        return np.concatenate(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).argmax(axis=1)

    def _per_unit(self, name: str, h: np.ndarray) -> np.ndarray:
        """A per-unit array shaped to broadcast over a batch of vectors or of images."""
        a = self.arrays[name].astype(np.float64)
        return a.reshape(1, -1, *([1] * (h.ndim - 2)))

    def _apply(self, op: dict[str, Any], w: np.ndarray | None, h: np.ndarray) -> np.ndarray:
        kind = op["op"]
        if kind == "flatten":
            return h.reshape(len(h), -1)
        if kind in ("linear", "conv2d"):
            out = (
                h @ w.T
                if kind == "linear"
                else conv2d(h, w, op["stride"], op["padding"], op["dilation"], op["groups"])
            )
            return out if op["bias"] is None else out + self._per_unit(op["bias"], out)
        if kind == "maxpool2d":
            k = op["size"]
            n, c, height, width = h.shape
            h = h[:, :, : height // k * k, : width // k * k]
            return h.reshape(n, c, height // k, k, width // k, k).max(axis=(3, 5))
        if kind == "affine":
            return h * self._per_unit(op["scale"], h) + self._per_unit(op["shift"], h)
        if kind == "sign_threshold":
            t, negative = self._per_unit(op["threshold"], h), self._per_unit(op["negative"], h).astype(bool)
            return np.where(np.where(negative, h <= t, h >= t), 1.0, -1.0)
        if kind == "relu":
            return np.maximum(h, 0)
        raise ValueError(f"unknown op {kind!r}")


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
    for label in network.predict(np.load(argv[1], allow_pickle=False)):
        print(int(label))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
