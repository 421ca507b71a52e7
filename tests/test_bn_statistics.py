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
from torch import nn

from fewmult.nn.bn_statistics import reestimate_batch_norm

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
