"""Character-level language modelling on a byte string (Hou et al. 2017, sections 4.3-4.4).

The text is read as **bytes**, as the authors' Python 2 code did: War and Peace then has 3,258,246
symbols and 87 of them (docs/papers.md B.3, D.22). The vocabulary is the set of byte values of the whole
file. The file is cut into blocks of ``block_size`` characters, the first ``split[0]`` of the blocks
train, the next ``split[1]`` validate, the rest test (80/10/10 gives 260/32/33 blocks of 10,000 on
War and Peace; 90/5/5 gives 558/31/31 on the Linux kernel, as the authors' code). Each split is cut
into non-overlapping windows of ``seq_len`` characters; the target of a window is the window shifted
by one character.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fewmult.data.datamodule import TensorDataModule
from fewmult.data.splits import Splits
from fewmult.errors import UserError, require_positive


def stdlib_text(max_bytes: int | None = None) -> bytes:
    """The standard library's public top-level modules (``[!_]*.py``), by file name, cut at ``max_bytes``
    (None: all of them).

    Real text that ships with every Python: the offline default. Private modules are left out: some
    are generated per platform (``_sysconfigdata_*``). The text differs between Python versions, so
    results on it compare only within one version.
    """
    folder = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(folder.glob("[!_]*.py")):
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if max_bytes is not None and size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def block_counts(num_blocks: int, split: Sequence[float]) -> tuple[int, int, int]:
    """Train / validation / test blocks: the first two rounded down, the test split takes the rest."""
    train = int(split[0] * num_blocks + 1e-9)
    val = int(split[1] * num_blocks + 1e-9)
    return train, val, num_blocks - train - val


def windows(codes: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping inputs ``codes[k L : (k+1) L]`` and their targets, shifted by one."""
    n = (len(codes) - 1) // seq_len
    return codes[: n * seq_len].view(n, seq_len), codes[1 : n * seq_len + 1].view(n, seq_len)


class TextData(TensorDataModule):
    """Windows of character codes, ``x`` and ``y`` both int64 of shape (N, seq_len).

    Args:
        path: the text file, relative to ``root`` unless absolute; None reads Python's
            standard-library sources (see :func:`stdlib_text`).
        root: the data folder.
        seq_len: characters per window, the number of unrolled time steps (100 in the paper).
        split: fractions of the blocks for train, validation and test.
        block_size: characters per block. Fixed (not batch x seq_len as in the authors' code) so that
            the time-step sweep trains and tests every length on the same characters.
        max_bytes: read at most this many bytes (None: the whole file).
        md5: the expected checksum of the file (None: not checked).
        how_to_get: the sentence that tells the user where the file comes from.
    """

    input_kind = "tokens"
    selection_metric = "loss"  # the epoch of best validation cross-entropy (docs/papers.md B.3)

    def __init__(
        self,
        name: str = "text",
        path: str | None = None,
        root: str = ".",
        seq_len: int = 100,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        block_size: int = 10_000,
        max_bytes: int | None = None,
        md5: str | None = None,
        how_to_get: str = "",
        **kwargs,
    ) -> None:
        super().__init__(name=name, val_size=0, **kwargs)
        require_positive(seq_len, "dataset.seq_len")
        require_positive(block_size, "dataset.block_size")
        split = tuple(split)
        if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
            raise UserError(f"dataset.split must be three non-negative fractions summing to 1, got {split}.")
        if max_bytes is not None:
            require_positive(max_bytes, "dataset.max_bytes")
        self.path = None if path is None else Path(root).expanduser() / Path(path).expanduser()
        self.seq_len, self.split, self.block_size = seq_len, split, block_size
        self.max_bytes, self.md5, self.how_to_get = max_bytes, md5, how_to_get
        self.image_shape = (seq_len,)
        self.vocabulary: bytes = b""

    def read(self) -> bytes:
        """The raw bytes, with one clear message for a missing, unreadable or damaged file."""
        if self.path is None:
            return stdlib_text(self.max_bytes)
        if not self.path.is_file():
            raise UserError(
                f"{self.name}: no text file at dataset.path={self.path}. {self.how_to_get} "
                "Or point dataset.path at your copy."
            )
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise UserError(f"{self.name}: cannot read {self.path}: {exc.strerror}.") from exc
        if self.md5 is not None and hashlib.md5(data).hexdigest() != self.md5:
            raise UserError(
                f"{self.name}: {self.path} is not the paper's file (its MD5 is not {self.md5}): a "
                "different edition or a damaged copy. Replace it, or set dataset.md5=null to train on it "
                "anyway (the numbers will not be comparable with the paper's)."
            )
        return data[: self.max_bytes] if self.max_bytes else data

    def load_splits(self) -> Splits:
        data = self.read()
        num_blocks = (len(data) - 1) // self.block_size
        counts = block_counts(num_blocks, self.split)
        if min(counts) * self.block_size < self.seq_len:
            raise UserError(
                f"{self.name}: {len(data):,} characters make {num_blocks} blocks of dataset.block_size="
                f"{self.block_size}, split {counts}: every split needs at least dataset.seq_len="
                f"{self.seq_len} characters. Use a longer text, a smaller dataset.block_size or a shorter "
                "dataset.seq_len."
            )
        raw = np.frombuffer(data, dtype=np.uint8)
        self.vocabulary = bytes(np.unique(raw).tolist())
        lookup = np.zeros(256, dtype=np.int64)
        lookup[np.frombuffer(self.vocabulary, dtype=np.uint8)] = np.arange(len(self.vocabulary))
        codes = torch.from_numpy(lookup[raw])
        parts = []
        start = 0
        for blocks in counts:
            end = start + blocks * self.block_size
            parts += windows(codes[start : end + 1], self.seq_len)
            start = end
        return Splits(*parts, num_classes=len(self.vocabulary))
