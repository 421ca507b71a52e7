"""Bop against Helwegen et al.'s update rule, and the parameter groups the recipes' weight decay uses."""

from __future__ import annotations

import copy

import pytest
import torch

from fewmult.build import build_model, optimizer_factory
from fewmult.config import check_config, compose_config
from fewmult.errors import UserError
from fewmult.nn.layers import quant_layers
from fewmult.optim import Bop, parameter_groups

GAMMA, THRESHOLD = 0.3, 0.05  # large enough that a few steps flip some weights and not others


def bop_on(w: torch.Tensor, real: torch.Tensor, **options) -> Bop:
    return Bop(
        [{"params": [w], "binary": True}, {"params": [real]}],
        lr=0.01,
        **{"gamma": GAMMA, "threshold": THRESHOLD, **options},
    )


def test_bop_flips_as_algorithm_1_of_the_paper():
    """m_t = (1 - gamma) m_{t-1} + gamma g_t; w_t = -w_{t-1} where |m_t| > tau and
    sign(m_t) = sign(w_{t-1}), else w_{t-1} -- computed by hand in float64 over 20 steps."""
    gen = torch.Generator().manual_seed(0)
    w = torch.where(torch.rand(200, generator=gen) < 0.5, -1.0, 1.0).requires_grad_()
    real = torch.randn(5, requires_grad=True)
    bop = bop_on(w, real)
    m_ref, w_ref = torch.zeros(200, dtype=torch.float64), w.detach().double().clone()
    flips = 0
    for _ in range(20):
        g = torch.randn(200, generator=gen) * 0.1 + 0.02  # a drift, so that flips come and go
        w.grad, real.grad = g.clone(), torch.randn(5, generator=gen)
        bop.step()
        m_ref = (1 - GAMMA) * m_ref + GAMMA * g.double()
        flip = (m_ref.abs() > THRESHOLD) & (torch.sign(m_ref) == torch.sign(w_ref))
        w_ref = torch.where(flip, -w_ref, w_ref)
        flips += int(flip.sum())
        assert torch.equal(w.detach().double(), w_ref)
        assert torch.allclose(bop.state[w]["grad_average"].double(), m_ref, atol=1e-6)
        assert torch.equal(w.grad, g)  # the gradient is left for whoever reads it after the step
    assert 50 < flips < 20 * 200 // 2  # the rule did something, and not everything


def test_bop_trains_the_real_valued_parameters_exactly_as_adam():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(7, requires_grad=True)
    twin = real.detach().clone().requires_grad_()
    w = torch.ones(3, requires_grad=True)
    bop, adam = bop_on(w, real), torch.optim.Adam([twin], lr=0.01)
    for _ in range(5):
        g = torch.randn(7, generator=gen)
        real.grad, twin.grad, w.grad = g.clone(), g.clone(), torch.randn(3, generator=gen)
        bop.step(), adam.step()
    assert torch.equal(real, twin)
    assert "grad_average" not in bop.state[real] and "exp_avg" not in bop.state[w]  # no state crossing


def test_bop_resumes_from_its_state_dict_as_if_never_stopped():
    gen = torch.Generator().manual_seed(2)
    grads = [(torch.randn(50, generator=gen) * 0.1, torch.randn(4, generator=gen)) for _ in range(8)]

    def run(steps, start=None):
        w, real = torch.ones(50, requires_grad=True), torch.zeros(4, requires_grad=True)
        bop = bop_on(w, real)
        if start is not None:
            (w_start, real_start), state = start
            with torch.no_grad():
                w.copy_(w_start), real.copy_(real_start)
            bop.load_state_dict(state)
        for g_w, g_real in steps:
            w.grad, real.grad = g_w.clone(), g_real.clone()
            bop.step()
        return (w.detach().clone(), real.detach().clone()), copy.deepcopy(bop.state_dict())

    whole, _ = run(grads)
    halfway = run(grads[:4])
    resumed, _ = run(grads[4:], start=halfway)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed, strict=True))
    assert not torch.equal(whole[0], torch.ones(50))  # some weight flipped


def test_bop_refuses_bad_settings_and_groups_without_binary_weights():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(UserError, match="0 < gamma <= 1"):
        Bop([{"params": [w], "binary": True}], lr=0.01, gamma=0.0)
    with pytest.raises(UserError, match="no parameter group marked binary"):
        Bop([w], lr=0.01)


def test_bop_takes_exactly_the_quantized_layers_weights():
    """Bop's group: the binary weights of the quantized layers; the full-precision first and last
    layers, BN and RPReLU stay with Adam, with the recipe's weight decay."""
    cfg = compose_config("method=reactnet", "optim=bop", "dataset=synthetic", "model=resnet20")
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer = optimizer_factory(cfg)(model)
    assert isinstance(optimizer, Bop)
    binary = [g for g in optimizer.param_groups if g["binary"]]
    assert len(binary) == 1 and binary[0]["weight_decay"] == 0.0
    quantized = {id(layer.weight) for layer in quant_layers(model) if layer.weight_quantizer is not None}
    assert {id(p) for p in binary[0]["params"]} == quantized and len(quantized) == 18
    others = [p for g in optimizer.param_groups if not g["binary"] for p in g["params"]]
    assert len(others) + len(quantized) == len(list(model.parameters()))


@pytest.mark.parametrize("method", ["fp", "lab", "tc", "bc_stoch", "irnet_1w32a"])
def test_bop_on_weights_it_cannot_flip_is_refused_before_training(method):
    cfg = compose_config(f"method={method}", "optim=bop", "dataset=synthetic")
    with pytest.raises(UserError, match="optim=bop"):
        check_config(cfg)


def test_weight_decay_on_conv_weights_skips_bn_biases_and_the_classifier():
    cfg = compose_config("method=bwn", "model=resnet20", "dataset=synthetic")
    model = build_model(cfg, (1, 28, 28), 10)
    decayed, other = parameter_groups(model, weight_decay=1e-5, decay_on="conv_weights")
    assert decayed["weight_decay"] == 1e-5 and other["weight_decay"] == 0.0
    assert [p.dim() for p in decayed["params"]] == [4] * 19  # every convolution kernel, stem included
    assert {p.dim() for p in other["params"]} <= {1, 2}  # BN, the linear classifier
    every = parameter_groups(model, weight_decay=1e-4, decay_on="all")
    assert len(every) == 1 and len(every[0]["params"]) == len(list(model.parameters()))
    assert len(parameter_groups(model)) == 1  # no decay: one group, as model.parameters()
    with pytest.raises(UserError, match="weight_decay_on must be one of"):
        parameter_groups(model, 1e-4, "biases")


def test_irnet_recipe_steps_sgd_with_momentum_and_l2_on_every_parameter():
    """IR-Net's CIFAR code: SGD(momentum 0.9, weight decay 1e-4) over all parameters: the first step
    is p - lr (g + wd p) (torch's momentum buffer starts at the first gradient)."""
    cfg = compose_config("paper=qin2020", "dataset=cifar10", "method=bnn")
    model = build_model(cfg, (3, 32, 32), 10)
    optimizer = optimizer_factory(cfg)(model)
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    optimizer.step()
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert torch.allclose(p, p0 - 0.1 * (0.5 + 1e-4 * p0), atol=1e-7)


@pytest.mark.parametrize("optim", ["adam", "bop"])
def test_adam_steps_with_one_fused_kernel_and_the_same_numbers(optim):
    """``conf/optim/{adam,bop}.yaml`` build Adam with ``fused=True`` (BENCHMARKS.md: the step 3x
    faster on a CPU); a fused step equals a foreach step to float32 rounding."""
    overrides = ["dataset=synthetic", "model.arch=32FC", "method=bnn", f"optim={optim}"]
    cfg = compose_config(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    other = copy.deepcopy(model)
    fused = optimizer_factory(cfg)(model)
    assert fused.defaults["fused"] is True
    plain = optimizer_factory(compose_config(*overrides, "optim.optimizer.fused=false"))(other)
    assert not plain.defaults["fused"]
    for _ in range(3):
        for net, optimizer in ((model, fused), (other, plain)):
            optimizer.zero_grad()
            x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
            net(x).logsumexp(1).sum().backward()
            optimizer.step()
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
