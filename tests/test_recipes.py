"""Today's recipes (IR-Net, Bi-Real Net, ReActNet) are their authors' training code, and run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from fewmult.build import build_model, optimizer_factory
from fewmult.config import compose_config
from tests.conftest import only_run_dir
from tests.test_configs import learning_rates

# what each authors' CIFAR/ImageNet trainer sets (docs/papers.md G.3): the arXiv paper and the
# code agree on these, except ReActNet's weight decay (code only) and Bi-Real's label smoothing (code only)
AUTHORS = {
    "qin2020": dict(model="resnet20", optimizer=torch.optim.SGD, lr=0.1, momentum=0.9, batch=128,
                    epochs=400, decay={"all": 1e-4}, smoothing=0.0),
    "liu2018": dict(model="resnet18", optimizer=torch.optim.Adam, lr=1e-3, batch=512, epochs=256,
                    decay={}, smoothing=0.1),
    "liu2020": dict(model="resnet18", optimizer=torch.optim.Adam, lr=2.5e-3, batch=512, epochs=128,
                    decay={}, smoothing=0.0),
}  # fmt: skip


@pytest.mark.parametrize("paper", list(AUTHORS))
def test_the_cifar10_recipe_of_each_paper_is_its_authors_code(paper):
    want = AUTHORS[paper]
    cfg = compose_config(f"paper={paper}", "dataset=cifar10", "method=bnn")  # binary activations too
    assert cfg.recipe.paper == paper and cfg.model.name == want["model"]
    assert (cfg.dataset.batch_size, cfg.trainer.max_epochs) == (want["batch"], want["epochs"])
    assert (cfg.dataset.augment, cfg.dataset.preprocess) == ("crop_flip", "standardize")
    optimizer = optimizer_factory(cfg)(build_model(cfg, (3, 32, 32), 10))
    assert type(optimizer) is want["optimizer"]
    assert {g["lr"] for g in optimizer.param_groups} == {want["lr"]}
    assert {g.get("momentum", 0.0) for g in optimizer.param_groups} <= {want.get("momentum", 0.0)}
    decayed = {g["weight_decay"] for g in optimizer.param_groups} - {0.0}
    assert decayed == set(want["decay"].values())
    assert instantiate(cfg.loss).label_smoothing == want["smoothing"]


def test_the_schedules_of_the_recipes_are_their_authors():
    """IR-Net: CosineAnnealingLR(T_max=400) stepped after every epoch; Bi-Real and ReActNet: LambdaLR
    (1 - step / epochs) stepped before every epoch, so the first epoch already trains below lr_0."""
    irnet = learning_rates("paper=qin2020", "dataset=cifar10")
    assert irnet[:400] == [
        pytest.approx(0.05 * (1 + math.cos(math.pi * e / 400)), abs=1e-12) for e in range(400)
    ]
    for paper, lr, epochs in (("liu2018", 1e-3, 256), ("liu2020", 2.5e-3, 128)):
        lrs = learning_rates(f"paper={paper}", "dataset=cifar10")
        assert lrs[:epochs] == [pytest.approx(lr * (1 - (e + 1) / epochs), abs=1e-15) for e in range(epochs)]


def test_label_smoothing_is_bireals_smoothed_cross_entropy():
    """Bi-Real's CrossEntropyLabelSmooth: -sum_k ((1 - eps) [k = y] + eps / K) log p_k, eps = 0.1."""
    loss = instantiate(compose_config("method=bireal", "dataset=cifar10").loss)
    scores, labels = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 10
    log_p = scores.log_softmax(dim=1)
    by_hand = -(0.9 * log_p[torch.arange(64), labels] + 0.1 * log_p.mean(dim=1)).mean()
    assert torch.allclose(loss(scores, labels), by_hand, atol=1e-6)


def test_bop_trains_a_binary_net_from_the_command_line(run_cli, tmp_path):
    """``optim=bop`` through ``python -m fewmult.train``: BNN's weights flipped by Bop, BN and the
    full-precision ends by Adam, on the generated digits, 3 epochs, seed 0: val error 1.5 %; with
    optim.threshold=1e9 (no flip: only Adam's parameters learn) 88.5 %."""
    proc = run_cli("method=bnn", "optim=bop", "dataset=synthetic", "trainer.max_epochs=3", "logger=none")
    assert proc.returncode == 0, proc.stderr
    assert "optimizer bop (command line)" in proc.stdout
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert results["status"] == "completed" and results["val_error"] < 0.3
