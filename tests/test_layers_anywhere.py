"""fewmult's layers in a user's own model and plain PyTorch loop: bind_optimizer gives LAB its
optimizer and clips after every step; the README's example runs as written."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fewmult.errors import UserError
from fewmult.nn import QuantConv2d, QuantLinear, QuantLSTM, bind_optimizer
from fewmult.quant import create_quantizer
from tests.conftest import REPO


class Mixed(nn.Module):
    """A user's model: a LAB convolution, a ternary dense layer, a LAB LSTM, plain layers between."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = QuantConv2d(2, 4, 3, stride=2, groups=2, weight_quantizer=create_quantizer("lab"))
        self.fc = QuantLinear(4 * 3 * 3, 6, weight_quantizer=create_quantizer("tc"))
        self.lstm = QuantLSTM(6, 5, weight_quantizer=lambda: create_quantizer("lab"))
        self.head = nn.Linear(6 + 5, 3)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        features = self.fc(torch.relu(self.conv(x)).flatten(1))
        return self.head(torch.cat([features, self.lstm(tokens)[:, -1]], dim=1))


def train_steps(model: Mixed, optimizer: torch.optim.Optimizer, steps: int) -> None:
    torch.manual_seed(1)
    x, tokens, y = torch.randn(8, 2, 7, 7), torch.randint(0, 6, (8, 4)), torch.randint(0, 3, (8,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x, tokens), y).backward()
        optimizer.step()


def test_bind_optimizer_clips_after_every_step_and_feeds_lab_its_adam_state():
    torch.manual_seed(0)
    model = Mixed()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)  # steps far past every clip bound
    bind_optimizer(model, optimizer)
    train_steps(model, optimizer, 3)
    assert model.conv.weight.abs().max() <= 1.0 and model.fc.weight.abs().max() <= model.fc.w0 + 1e-7
    assert model.head.weight.abs().max() > 1.0  # a plain layer is not touched
    for layer in (model.conv, *model.lstm.hidden_weights.values()):  # LAB's alpha from Adam's v
        d = optimizer.state[layer.weight]["exp_avg_sq"].sqrt() + 1e-8
        alpha = (d * layer.weight.abs()).sum() / d.sum()
        assert layer.train().effective_weight().abs().unique().tolist() == [pytest.approx(alpha.item())]


def test_removing_the_hook_stops_the_clipping():
    torch.manual_seed(0)
    model = Mixed()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    bind_optimizer(model, optimizer).remove()
    train_steps(model, optimizer, 3)
    assert model.conv.weight.abs().max() > 1.0


def test_lab_refuses_to_train_unbound_or_bound_to_what_cannot_feed_it():
    torch.manual_seed(0)
    model = Mixed()
    with pytest.raises(UserError, match=r"no optimizer is bound.*bind_optimizer\(model, optimizer\)"):
        train_steps(model, torch.optim.Adam(model.parameters()), 1)  # never BWN in disguise
    with pytest.raises(UserError, match="LAB reads Adam's second moment, but the optimizer is SGD"):
        bind_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(UserError, match=r"layer 'conv' reads its optimizer's state.*does not update"):
        bind_optimizer(model, torch.optim.Adam(model.head.parameters()))
    model.eval()(torch.randn(2, 2, 7, 7), torch.randint(0, 6, (2, 4)))  # evaluating needs no optimizer


def test_the_readme_example_trains_a_model_of_ones_own_with_a_plain_loop(capsys):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (block,) = [b for b in blocks if "bind_optimizer(model" in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    model, loss = namespace["model"], namespace["loss"]
    assert loss.item() < 1.0  # from about 2.3 (chance) on 64 examples it has to fit
    assert model.conv.weight.abs().max() <= 1.0 and model.fc.weight.abs().max() <= 1.0
    assert "loss after 30 steps" in capsys.readouterr().out
