"""Character-level text: bytes, the authors' block splits, windows, and messages for bad files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fewmult.config import compose_config
from fewmult.data.text import TextData, block_counts
from fewmult.errors import UserError


def write_text(path, size: int, seed: int = 0) -> bytes:
    data = np.random.default_rng(seed).integers(32, 120, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize(
    "num_blocks, split, expected",
    [(325, (0.8, 0.1, 0.1), (260, 32, 33)), (620, (0.9, 0.05, 0.05), (558, 31, 31))],
)
def test_block_counts_are_the_authors(num_blocks, split, expected):
    """War and Peace (3,258,246 characters) and the Linux kernel (6,206,996) in blocks of 10,000."""
    assert block_counts(num_blocks, split) == expected


def test_war_and_peace_sized_text_splits_into_the_papers_windows(tmp_path):
    path = tmp_path / "warpeace_input.txt"
    data = write_text(path, 3_258_246)
    splits = TextData(path=str(path), batch_size=100).load()
    assert splits.sizes() == {"train": 26_000, "val": 3_200, "test": 3_300}  # 2.6 M, 320 k, 330 k characters
    assert splits.train_x.shape == (26_000, 100) and splits.train_x.dtype == torch.int64
    vocabulary = sorted(set(data))
    decode = torch.tensor(vocabulary)
    start = 2_600_000  # validation follows the 260 training blocks
    assert bytes(decode[splits.val_x[0]].tolist()) == data[start : start + 100]
    # targets are the inputs shifted by one character, also across window boundaries
    assert torch.equal(splits.val_y[:, :-1], splits.val_x[:, 1:])
    assert torch.equal(splits.val_y[:-1, -1], splits.val_x[1:, 0])
    assert bytes(decode[splits.test_y[-1, -1:]].tolist()) == data[3_250_000:3_250_001]  # the +1 character


def test_vocabulary_is_the_byte_values_so_bom_and_crlf_count(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("\ufeffab\r\n" * 400).encode())  # UTF-8 BOM: 3 bytes; CRLF: 2 bytes
    data = TextData(path=str(path), seq_len=10, block_size=200, batch_size=10)
    assert data.load().num_classes == 7
    assert data.vocabulary == bytes(sorted(set("\ufeffab\r\n".encode())))


def test_the_split_does_not_move_with_the_window_length(tmp_path):
    path = tmp_path / "t.txt"
    data = write_text(path, 50_001)
    first_val = []
    for seq_len in (10, 50, 150):
        splits = TextData(path=str(path), seq_len=seq_len, batch_size=10, block_size=1000).load()
        assert len(splits.train_y) == 40_000 // seq_len
        first_val.append(splits.val_x[0, :10].tolist())
    assert first_val[0] == first_val[1] == first_val[2]
    assert bytes(np.array(sorted(set(data)))[first_val[0]].tolist()) == data[40_000:40_010]


def test_offline_default_is_python_s_own_sources_in_a_fixed_order():
    a = TextData(max_bytes=30_000, block_size=1_000, batch_size=10)
    b = TextData(max_bytes=30_000, block_size=1_000, batch_size=10)
    sa, sb = a.load(), b.load()
    assert torch.equal(sa.train_x, sb.train_x) and a.vocabulary == b.vocabulary
    text = bytes(np.frombuffer(a.vocabulary, dtype=np.uint8)[sa.train_x[:40].flatten().numpy()].tolist())
    assert b"import " in text or b"def " in text
    # (30,000 - 1) // 1,000 = 29 blocks (one character is kept for the last target): 23 / 2 / 4
    assert sa.sizes() == {"train": 230, "val": 20, "test": 40}


def test_missing_file_says_where_to_put_it(tmp_path):
    cfg = compose_config("dataset=warpeace")
    from hydra.utils import instantiate

    with pytest.raises(UserError) as info:
        instantiate(cfg.dataset).load()
    message = str(info.value)
    assert str(tmp_path / "data" / "warpeace_input.txt") in message  # FEWMULT_DATA is the data folder
    assert "houlu369/Loss-aware-Binarization" in message and "dataset.path" in message


def test_a_different_edition_of_war_and_peace_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "warpeace_input.txt"
    write_text(path, 100_000)
    good = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"dataset\.md5=null"):
        TextData(path=str(path), md5="c12bc0d6a5530c4d6878952f5c3d76b9", batch_size=10).load()
    TextData(path=str(path), md5=good, batch_size=10, block_size=1000).load()  # the expected file loads


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 0}, "dataset.seq_len must be a positive integer"),
        ({"split": (0.5, 0.5)}, "dataset.split must be three"),
        ({"max_bytes": -3}, "dataset.max_bytes must be a positive integer"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        TextData(batch_size=10, **kwargs)


def test_a_text_too_short_for_its_splits_says_so(tmp_path):
    path = tmp_path / "t.txt"
    write_text(path, 5_000)
    with pytest.raises(UserError, match="every split needs at least"):
        TextData(path=str(path), batch_size=1).load()  # 0 blocks of 10,000
