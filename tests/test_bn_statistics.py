"""BN re-estimation (fewmult/nn/bn_statistics.py) against NumPy transcriptions of both procedures.

``authors_code`` is checked against a line-by-line NumPy transcription of Lin et al.'s
``Trainer.set_BN_mean_var`` / ``set_mean_var`` with ``BN_fast_eval=True`` and ``layer.BN_updates``
(their trainer.py and layer.py): reset once, then per set the first batch with batch statistics,
then every batch with the running estimate, each update the running average of the batch means and
biased batch variances, all layers updated at once from the old estimate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.data.order import EpochShuffle
from fewmult.nn import QuantLinear
from fewmult.nn.bn_statistics import reestimate_batch_norm
from tests.conftest import trained_run

EPS = 1e-4


def small_net(conv: bool) -> nn.Sequential:
    torch.manual_seed(0)
    if conv:
        layers = [nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3, eps=EPS), nn.ReLU(), nn.Flatten()]
        features = 3 * 4 * 4
    else:
        layers = [nn.Flatten(), nn.Linear(12, 5, bias=False), nn.BatchNorm1d(5, eps=EPS), nn.ReLU()]
        features = 5
    net = nn.Sequential(*layers, nn.Linear(features, 4, bias=False), nn.BatchNorm1d(4, eps=EPS))
    for bn in (m for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.weight.data.uniform_(0.5, 1.5)  # BN's scale and shift take part in the next layer's input
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def data(conv: bool, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, 6, 6) if conv else (n, 12)
    return torch.randn(shape, generator=g) * 2 + 1


# ---- NumPy transcription of Lin et al.'s code ---------------------------------------------------


class NumpyNet:
    """The net's forward pass in NumPy: ``can_fit`` as in layer.py (batch statistics) or the
    running ``mean`` / ``var`` per BN layer."""

    def __init__(self, net: nn.Sequential) -> None:
        self.layers = [
            (type(m).__name__, {k: v.detach().double().numpy() for k, v in m.named_parameters()}) for m in net
        ]
        norms = [i for i, (kind, _) in enumerate(self.layers) if kind.startswith("BatchNorm")]
        self.mean = {i: 0.0 for i in norms}
        self.var = {i: 0.0 for i in norms}
        self.n_samples = 0

    def fprop(self, x: np.ndarray, can_fit: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The batch mean and biased variance each BN layer sees (``self.batch_mean/var``)."""
        batch = {}
        for i, (kind, p) in enumerate(self.layers):
            if kind == "Flatten":
                x = x.reshape(len(x), -1)
            elif kind == "Linear":
                x = x @ p["weight"].T
            elif kind == "Conv2d":
                w = p["weight"]
                k = w.shape[-1]
                h = x.shape[2] - k + 1
                patches = np.stack(
                    [x[:, :, r : r + k, c : c + k].reshape(len(x), -1) for r in range(h) for c in range(h)], 1
                )
                x = (patches @ w.reshape(len(w), -1).T).transpose(0, 2, 1).reshape(len(x), len(w), h, h)
            elif kind == "ReLU":
                x = np.maximum(x, 0)
            else:  # BatchNorm1d / BatchNorm2d: per channel, over the batch (and positions)
                assert kind.startswith("BatchNorm"), kind
                axes = (0,) if x.ndim == 2 else (0, 2, 3)
                batch[i] = (x.mean(axes), x.var(axes))  # T.var: biased
                mean, var = batch[i] if can_fit else (self.mean[i], self.var[i])
                shape = (1, -1) + (1,) * (x.ndim - 2)
                x = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS)
                x = p["weight"].reshape(shape) * x + p["bias"].reshape(shape)
        return batch

    def bn_updates(self, x: np.ndarray, can_fit: bool) -> None:
        batch = self.fprop(x, can_fit)  # with the old estimate: Theano's updates are simultaneous
        new_n = self.n_samples + 1
        for i, (batch_mean, batch_var) in batch.items():
            self.mean[i] = (self.n_samples / new_n) * self.mean[i] + (1 / new_n) * batch_mean
            self.var[i] = (self.n_samples / new_n) * self.var[i] + (1 / new_n) * batch_var
        self.n_samples = new_n


def lin_set_bn_mean_var(net: NumpyNet, sets: list[np.ndarray], batch_size: int) -> None:
    """``set_BN_mean_var``: reset, then ``set_mean_var`` of the training set, then the validation set."""
    for i in net.mean:  # reset_mean_var
        net.mean[i], net.var[i] = 0.0, 0.0
    net.n_samples = 0
    for X in sets:
        n_batches = len(X) // batch_size
        net.bn_updates(X[:batch_size], can_fit=True)  # BN_updates_1: the first batch
        for j in range(n_batches):  # BN_updates_2: every whole batch, the first one again
            net.bn_updates(X[j * batch_size : (j + 1) * batch_size], can_fit=False)


def batches(x: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], torch.zeros(0)) for i in range(0, len(x) - batch_size + 1, batch_size)]


# ---- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_authors_code_form_is_lin_et_al_procedure(conv):
    """Each BN layer's re-estimated mean and variance equal the transcription's to float32 rounding
    (measured: < 2e-6 relative), and differ from the clean form's by far more (the first batch
    counted twice, the running estimate inside, biased variances)."""
    net, batch_size = small_net(conv), 8
    train, val = data(conv, 43, seed=1), data(conv, 21, seed=2)  # partial last batches are dropped
    reference = NumpyNet(net)
    lin_set_bn_mean_var(reference, [train.double().numpy(), val.double().numpy()], batch_size)

    reestimate_batch_norm(net, [batches(train, batch_size), batches(val, batch_size)], "authors_code")
    norms = [(i, m) for i, m in enumerate(net) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for i, bn in norms:
        np.testing.assert_allclose(bn.running_mean.double().numpy(), reference.mean[i], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(bn.running_var.double().numpy(), reference.var[i], rtol=2e-5)
        assert not bn.training and bn.momentum == 0.1  # left as found

    clean = small_net(conv)
    reestimate_batch_norm(clean, [batches(train, batch_size), batches(val, batch_size)], "batch_stats")
    gap = max(
        (clean[i].running_var - bn.running_var).abs().max().item() / bn.running_var.abs().max().item()
        for i, bn in norms
    )
    assert gap > 1e-2, gap


def test_batch_stats_form_averages_each_batchs_own_statistics():
    """The clean form: every layer normalizes with its batch's statistics; the running values are
    the plain averages of the batch means and unbiased batch variances."""
    net, batch_size = small_net(conv=False), 8
    train, val = data(False, 40, seed=3), data(False, 16, seed=4)
    reference = NumpyNet(net)
    seen: dict[int, list] = {i: [] for i in reference.mean}
    for X in (train, val):
        for x, _ in batches(X, batch_size):
            for i, (mean, var) in reference.fprop(x.double().numpy(), can_fit=True).items():
                seen[i].append((mean, var * batch_size / (batch_size - 1)))
    reestimate_batch_norm(net, [batches(train, batch_size), batches(val, batch_size)], "batch_stats")
    for i, stats in seen.items():
        means, variances = zip(*stats, strict=True)
        np.testing.assert_allclose(
            net[i].running_mean.double().numpy(), np.mean(means, 0), rtol=2e-5, atol=2e-6
        )
        np.testing.assert_allclose(net[i].running_var.double().numpy(), np.mean(variances, 0), rtol=2e-5)


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="unknown BN re-estimation form 'lin'"):
        reestimate_batch_norm(small_net(False), [], "lin")


# the whole path: training runs that re-estimate (or not) before every validation
BN_RUN = ["dataset=synthetic", "method=tc", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"]


def checkpoint_net(overrides: list[str], checkpoint: dict):
    """The config, the splits and the network of a checkpoint, in eval mode."""
    cfg = compose_config(*overrides)
    splits = instantiate(cfg.dataset).load()
    model = build_model(cfg, splits.input_shape, splits.num_classes)
    model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()})
    return cfg, splits, model.eval()


def statistics_sets(cfg, splits, epoch: int, shuffle_val: bool) -> list[torch.Tensor]:
    """The training set in the order of ``epoch``, the validation set in file order or in the
    seed's fixed order (``shuffle_val``)."""
    order = EpochShuffle(cfg.seed, every=cfg.dataset.shuffle_every)
    order.set_epoch(epoch)
    train = splits.train_x[order.permutation(len(splits.train_y))]
    val = splits.val_x[EpochShuffle(cfg.seed).permutation(len(splits.val_y))] if shuffle_val else splits.val_x
    return [train, val]


def recomputed_bn_statistics(overrides: list[str], checkpoint: dict) -> list[tuple[torch.Tensor, ...]]:
    """The clean re-estimated BN statistics, computed here from a checkpoint's weights: the plain
    average over the training (in the checkpoint epoch's order) then validation (in the seed's
    order) minibatches of training size of each BN layer's batch mean and unbiased variance, every
    layer normalizing with its batch statistics, ternary connect evaluated with its latent weights."""
    cfg, splits, model = checkpoint_net(overrides, checkpoint)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    seen: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {bn: [] for bn in norms}
    for bn in norms:
        bn.train()  # normalize with the batch's statistics ...
        bn.momentum = 0.0  # ... and leave the running ones alone
        bn.register_forward_pre_hook(lambda m, args: seen[m].append((args[0].mean(0), args[0].var(0))))
    batch = cfg.dataset.batch_size
    with torch.no_grad():
        for x in statistics_sets(cfg, splits, checkpoint["epoch"], shuffle_val=True):
            for i in range(len(x) // batch):
                model(x[i * batch : (i + 1) * batch])
    return [tuple(torch.stack(s).mean(0) for s in zip(*seen[bn], strict=True)) for bn in norms]


def lin_code_bn_statistics(overrides: list[str], checkpoint: dict) -> list[tuple[torch.Tensor, ...]]:
    """The BN statistics of Lin et al.'s ``set_BN_mean_var``, by the NumPy transcription above
    (``lin_set_bn_mean_var``), from a checkpoint's weights: the training set in the order of the
    checkpoint's epoch, then the validation set in file order, in training-size batches."""
    cfg, splits, model = checkpoint_net(overrides, checkpoint)
    kinds = (QuantLinear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Flatten)
    leaves = [m for m in model.modules() if isinstance(m, kinds)]
    flat = torch.nn.Sequential(  # ternary connect evaluates with its latent weights
        *(
            torch.nn.Linear(m.in_features, m.out_features, bias=False) if isinstance(m, QuantLinear) else m
            for m in leaves
        )
    )
    for plain, leaf in zip(flat, leaves, strict=True):
        if isinstance(plain, torch.nn.Linear):
            plain.weight.data = leaf.weight.data
    sets = statistics_sets(cfg, splits, checkpoint["epoch"], shuffle_val=False)
    reference = NumpyNet(flat)
    lin_set_bn_mean_var(reference, [x.double().numpy() for x in sets], cfg.dataset.batch_size)
    return [
        (torch.as_tensor(reference.mean[i]), torch.as_tensor(reference.var[i]))
        for i in sorted(reference.mean)
    ]


@pytest.mark.slow  # three training runs: out of the inner loop
def test_bn_reestimation_sets_the_evaluated_statistics(tmp_path):
    """``bn_reestimate=true``: the BN statistics the best epoch was evaluated with (saved in best.ckpt)
    are the re-estimated ones, computed here from the checkpoint's weights in each form;
    ``procedure=lin2016_code`` (the Lin presets) gives Lin et al.'s form; with ``false`` they are the
    running averages. Each differs from the other forms by far more than the tolerance. Measured
    (largest difference of a mean or relative difference of a variance): each form against its own
    computation 3.1e-7 (clean) and 2.3e-7 (Lin's); clean against Lin's 0.16 and 0.29; the running
    averages against the clean form 1.67."""
    runs = {
        "false": ["bn_reestimate=false"],
        "batch_stats": ["bn_reestimate=true"],
        "lin": ["procedure=lin2016_code"],
    }
    gaps = {}
    for name, args in runs.items():
        run_dir = trained_run(tmp_path / name, *BN_RUN, *args)
        checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
        state = checkpoint["state_dict"]
        means = [k for k in state if k.endswith("running_mean")]
        saved = [(state[k], state[k.replace("running_mean", "running_var")]) for k in means]
        for form, expected in (
            ("batch_stats", recomputed_bn_statistics([*BN_RUN, *args], checkpoint)),
            ("lin", lin_code_bn_statistics([*BN_RUN, *args], checkpoint)),
        ):
            assert len(saved) == len(expected) == 4  # three hidden layers and the output layer
            gaps[name, form] = max(
                max((m - em).abs().max().item(), ((v - ev) / ev).abs().max().item())
                for (m, v), (em, ev) in zip(saved, expected, strict=True)
            )
    assert gaps["batch_stats", "batch_stats"] < 1e-4 and gaps["lin", "lin"] < 1e-4, gaps
    assert min(gaps["false", "batch_stats"], gaps["batch_stats", "lin"], gaps["lin", "batch_stats"]) > 1e-2, (
        gaps
    )
