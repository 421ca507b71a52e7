"""Every registered quantizer, tested the moment it is registered: values, gradients, clipping,
evaluation policy, unbiasedness; and the specific formulas of BWN, LAB and the sign activation."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from fewmult.errors import UserError
from fewmult.nn import QuantLinear, RPReLU, bind_optimizer
from fewmult.quant import (
    AdamSecondMoment,
    SignActivation,
    WeightQuantizer,
    create_activation,
    create_quantizer,
    list_activations,
    list_quantizers,
    quantizer_class,
    register_quantizer,
)

ALL = list_quantizers()
QUANTIZING = [n for n in ALL if create_quantizer(n).bits < 32]
STOCHASTIC = [n for n in ALL if create_quantizer(n).stochastic]


def layer_with(
    name: str, in_features: int = 60, out_features: int = 40, seed: int = 0, **kwargs
) -> QuantLinear:
    torch.manual_seed(seed)
    quantizer = create_quantizer(name, **kwargs)
    layer = QuantLinear(in_features, out_features, bias=False, weight_quantizer=quantizer)
    if layer.weight_quantizer.needs_optimizer_state:  # LAB trains only with its optimizer bound
        bind_optimizer(layer, torch.optim.Adam(layer.parameters()))
    return layer


def test_registry_has_every_method_of_both_papers():
    assert set(ALL) >= {"fp", "bc_det", "bc_stoch", "tc", "bwn", "lab", "lab2", "bnn", "xnor"}


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(UserError, match="registered: bc_det, bc_stoch"):
        create_quantizer("binary")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="twice"):
        register_quantizer("fp")(WeightQuantizer)


@pytest.mark.parametrize("name", ALL)
def test_a_quantizer_states_what_layers_and_training_need(name):
    # the contract of docs in fewmult/quant/base.py, read as attributes (never found by hasattr)
    layer = layer_with(name)
    q = layer.weight_quantizer
    assert isinstance(q, WeightQuantizer) and quantizer_class(name) is type(q)
    assert q.init_gain in (1.0, 2.0)  # U(-W0, W0) or Glorot's U(-2 W0, 2 W0)
    assert layer.weight.abs().max() <= q.init_gain * layer.w0
    assert q.clip_bound is None or q.clip_bound > 0
    reads_state = type(q).bind_curvature is not WeightQuantizer.bind_curvature
    assert q.needs_optimizer_state == reads_state
    if not q.needs_optimizer_state:
        with pytest.raises(TypeError, match="reads no optimizer state"):
            q.bind_curvature(lambda: None)


@pytest.mark.parametrize("name", ALL)
def test_docstring_states_rule_and_source(name):
    doc = type(create_quantizer(name)).__doc__
    assert doc and "q(w)" in doc
    if name != "fp":
        assert "Pseudo-gradient" in doc and "docs/papers.md" in doc


@pytest.mark.parametrize("name", QUANTIZING)
def test_value_set(name):
    """+-s (and 0 where ternary), one magnitude s per layer or, where the quantizer's scale is one
    per output channel (IR-Net's), per channel."""
    layer = layer_with(name).train()
    q = layer.effective_weight().detach()
    per_channel = layer.weight_quantizer.effective_scale(layer.weight).numel() > 1
    allowed = {1: 2, 2: 3}[layer.weight_quantizer.bits]
    for rows in q if per_channel else [q]:
        values = rows.unique()
        assert len(values) <= allowed
        assert (values > 0).any() and (values < 0).any()
        nonzero = values[values != 0].abs()
        assert torch.allclose(nonzero, nonzero[0].expand_as(nonzero)), "one magnitude per layer or channel"


@pytest.mark.parametrize("name", ALL)
def test_effective_scale_is_the_magnitude_of_every_nonzero_effective_weight(name):
    layer = layer_with(name).train()
    q = layer.weight_quantizer
    scale = q.effective_scale(layer.weight)
    counter = getattr(q, "stream", None)
    drawn = None if counter is None else int(counter.rng_counter)
    effective = layer.effective_weight().detach()  # training step's q(w); LAB updates alpha_last here
    if q.bits == 32:
        assert scale is None
        return
    assert drawn is None or int(counter.rng_counter) == drawn + 1  # effective_scale drew nothing
    nonzero = effective != 0  # the scale is one per layer or one per output channel
    assert torch.allclose(
        effective.abs()[nonzero], q.effective_scale(layer.weight).expand_as(effective)[nonzero]
    )
    assert torch.allclose(scale, q.effective_scale(layer.weight))  # LAB before its first step: BWN's


@pytest.mark.parametrize("name", ALL)
def test_expected_zero_fraction_is_the_share_of_zero_effective_weights(name):
    """Ternary: the mean zero share over many draws is within 6 sigma of the expectation; others: None."""
    layer = layer_with(name, 100, 50).train()
    q = layer.weight_quantizer
    expected = q.expected_zero_fraction(layer.weight)
    if q.bits != 2:
        assert expected is None
        return
    torch.manual_seed(3)
    draws = 40
    with torch.no_grad():
        zeros = sum((layer.effective_weight() == 0).float().mean() for _ in range(draws)) / draws
    p = float(expected)
    assert 0.2 < p < 0.9  # Glorot's init spreads the weights over the range
    sigma = (p * (1 - p) / (draws * layer.weight.numel())) ** 0.5
    assert abs(float(zeros) - p) < 6 * sigma


@pytest.mark.parametrize("name", ALL)
def test_most_likely_is_the_mode_of_the_effective_weight(name):
    """Deterministic quantizers: q(w) itself. Stochastic: each weight's most frequent value over 400
    draws, for weights whose mode has probability at least 0.65 (6 sigma above 1/2)."""
    layer = layer_with(name, 30, 20).train()
    q = layer.weight_quantizer
    mode = q.most_likely(layer.weight)
    if not q.stochastic:
        assert torch.equal(mode, layer.effective_weight().detach())
        return
    torch.manual_seed(2)
    with torch.no_grad():
        draws = torch.stack([layer.effective_weight() for _ in range(400)])
    s = q.clip_bound
    share_of_mode = (draws == mode).float().mean(0)
    p = layer.weight.detach().abs() / s  # ternary: P(nonzero); binary: |P(+s) - P(-s)|
    clear = (p - 0.5).abs() > 0.15 if q.bits == 2 else p > 0.3
    assert clear.sum() > 50
    assert (share_of_mode[clear] > 0.5).all()


def libra_pb_gradient(w: torch.Tensor, upstream: torch.Tensor, t: float, k: float) -> torch.Tensor:
    """IR-Net's weight gradient by hand, per output row of n weights: b = (w - mean) / std (unbiased),
    g = s * upstream * k t (1 - tanh^2(t b)) with s = 2^round(log2(mean|b|)), and the chain rule
    through the standardization, dL/dw = (g - mean(g) - b * sum(g b) / (n - 1)) / std."""
    w = w.double()
    n = w.shape[1]
    centered = w - w.mean(1, keepdim=True)
    std = centered.std(1, keepdim=True)
    b = centered / std
    s = 2.0 ** torch.round(torch.log2(b.abs().mean(1, keepdim=True)))
    g = s * upstream.double() * k * t * (1 - torch.tanh(t * b) ** 2)
    return ((g - g.mean(1, keepdim=True) - b * (g * b).sum(1, keepdim=True) / (n - 1)) / std).float()


# each weight quantizer's pseudo-gradient dL/dw given dL/dq (upstream), where it is not straight through
WEIGHT_GRADIENTS = {"irnet": lambda w, upstream: libra_pb_gradient(w, upstream, t=0.1, k=10.0)}


@pytest.mark.parametrize("name", ALL)
def test_weight_gradient_is_the_papers(name):
    """Straight through (dL/dw = dL/dq) for every quantizer but those in WEIGHT_GRADIENTS."""
    layer = layer_with(name).train()
    upstream = torch.randn_like(layer.weight)
    (layer.effective_weight() * upstream).sum().backward()
    if name not in WEIGHT_GRADIENTS:
        assert torch.equal(layer.weight.grad, upstream)
        return
    expected = WEIGHT_GRADIENTS[name](layer.weight.detach(), upstream)
    assert torch.allclose(layer.weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(layer.weight.grad, upstream, rtol=0.1)  # not straight through


@pytest.mark.parametrize("name", ALL)
def test_clipping_bounds_the_latent_weights(name):
    layer = layer_with(name)
    bound = layer.weight_quantizer.clip_bound
    with torch.no_grad():
        layer.weight.mul_(100)
    layer.weight_quantizer.clip_(layer.weight)
    if bound is None:
        assert layer.weight.abs().max() > 1  # full precision is never clipped
    else:
        assert layer.weight.abs().max() <= bound + 1e-7
        assert (layer.weight.abs() == bound).any()


@pytest.mark.parametrize("name", QUANTIZING)
def test_evaluation_policy(name):
    layer = layer_with(name).eval()
    q = layer.weight_quantizer
    first, second = layer.effective_weight(), layer.effective_weight()
    if q.stochastic:
        assert q.eval_policy == "latent" and torch.equal(first, layer.weight)
    else:
        assert q.eval_policy == "quantized" and not torch.equal(first, layer.weight)
    assert torch.equal(first, second)  # evaluation is deterministic


@pytest.mark.parametrize("name", STOCHASTIC)
def test_evaluation_policy_can_be_overridden(name):
    torch.manual_seed(0)
    layer = QuantLinear(30, 20, weight_quantizer=create_quantizer(name, eval_policy="quantized")).eval()
    assert not torch.equal(layer.effective_weight(), layer.weight)
    with pytest.raises(UserError, match="eval_policy"):
        create_quantizer(name, eval_policy="sampled")


@pytest.mark.parametrize("rng", ["hash", "torch"])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_quantizers_are_unbiased(name, rng):
    """E[q(w)] = w: the z-score of every weight's sample mean stays small (fixed seed: cannot flake)."""
    layer = layer_with(name, 50, 20, rng=rng).train()
    s = layer.weight_quantizer.clip_bound
    with torch.no_grad():  # weights spread over the whole range, both ends included
        layer.weight.copy_(torch.linspace(-s, s, layer.weight.numel()).reshape(layer.weight.shape))
    torch.manual_seed(1)
    draws = 4000
    total = torch.zeros_like(layer.weight)
    total_sq = torch.zeros_like(layer.weight)
    with torch.no_grad():
        for _ in range(draws):
            q = layer.effective_weight()
            total += q
            total_sq += q * q
    mean = total / draws
    var = (total_sq / draws - mean**2).clamp_min(1e-12)
    z = (mean - layer.weight) / (var / draws).sqrt()
    z = z[var > 1e-10]  # weights at +-s or 0 are deterministic
    assert z.abs().max() < 6
    assert 0.8 < z.square().mean() < 1.2  # chi-square / n is about 1 when unbiased
    assert torch.allclose(mean, layer.weight, atol=6 * s / draws**0.5)  # 6 sigma of the worst weight


@pytest.mark.parametrize("rng", ["hash", "torch"])
def test_stochastic_binary_connect_probabilities(rng):
    q = create_quantizer("bc_stoch", rng=rng)
    q.s = 0.5
    w = torch.full((200_000,), 0.2)  # p(+s) = (0.2/0.5 + 1)/2 = 0.7
    torch.manual_seed(0)
    out = q(w)
    assert set(out.unique().tolist()) == {-0.5, 0.5}
    assert (out > 0).float().mean().item() == pytest.approx(0.7, abs=0.005)


@pytest.mark.parametrize("rng", ["hash", "torch"])
def test_ternary_connect_probabilities(rng):
    q = create_quantizer("tc", rng=rng)
    q.s = 0.5
    torch.manual_seed(0)
    out = q(torch.full((200_000,), -0.15))  # p(-s) = 0.3, p(0) = 0.7
    assert set(out.unique().tolist()) == {-0.5, 0.0}
    assert (out < 0).float().mean().item() == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("name", ["bc_det", "bwn", "lab"])
def test_sign_of_zero_is_plus(name):
    q = create_quantizer(name).eval()  # deterministic quantizers evaluate with q(w)
    assert q(torch.tensor([0.0, -0.0, 0.5, -0.5]))[:2].gt(0).all()


def test_lin_scale_is_the_layers_w0_and_unit_is_one():
    layer = QuantLinear(784, 1024, weight_quantizer=create_quantizer("bc_det"))
    assert layer.weight_quantizer.clip_bound == pytest.approx(0.02880, abs=1e-5)  # docs/papers.md A.0
    assert layer.effective_weight().abs().unique().tolist() == [pytest.approx(layer.w0)]
    unit = QuantLinear(784, 1024, weight_quantizer=create_quantizer("bc_det", scale="unit"))
    assert set(unit.effective_weight().abs().unique().tolist()) == {1.0}
    assert unit.weight.abs().max() <= unit.w0  # Hou et al.'s init U(-W0, W0) for unscaled signs
    assert layer.weight.abs().max() > layer.w0  # Lin et al.'s Glorot init U(-2 W0, 2 W0)


def test_bwn_alpha_is_mean_absolute_weight():
    w = torch.tensor([[0.5, -0.1], [0.2, -0.4]])
    assert torch.allclose(create_quantizer("bwn")(w), torch.tensor([[0.3, -0.3], [0.3, -0.3]]))


def test_bwn_per_channel_alpha_is_each_output_channels_mean_absolute_weight():
    w = torch.tensor([[0.5, -0.1], [0.2, -0.4]])
    expected = torch.tensor([[0.3, -0.3], [0.3, -0.3]])
    assert torch.allclose(create_quantizer("bwn", per_channel=True)(w), expected)
    conv = torch.randn(6, 3, 3, 3)
    q = create_quantizer("xnor", per_channel=True)(conv)
    for c in range(6):  # a convolution's output map: its 27 weights share mean|w_c|
        assert torch.allclose(q[c], conv[c].abs().mean() * torch.where(conv[c] >= 0, 1.0, -1.0))


PER_CHANNEL = [n for n in ALL if "per_channel" in inspect.signature(quantizer_class(n)).parameters]


@pytest.mark.parametrize("name", PER_CHANNEL)
def test_per_channel_scales_are_the_magnitudes_of_each_output_channel(name):
    layer = layer_with(name, per_channel=True).train()
    effective = layer.effective_weight().detach()
    scale = layer.weight_quantizer.effective_scale(layer.weight)
    assert scale.shape == (40, 1)
    assert torch.allclose(effective.abs(), scale.expand_as(effective))
    # the channels' scales differ (seed 0: 0.053-0.066), it is not one per layer
    assert scale.max() - scale.min() > 0.1 * scale.mean()


def lab_layer_after_adam_steps(steps: int, per_channel: bool = False):
    torch.manual_seed(0)
    quantizer = create_quantizer("lab", per_channel=per_channel)
    layer = QuantLinear(20, 8, bias=False, weight_quantizer=quantizer)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01)
    layer.weight_quantizer.bind_curvature(AdamSecondMoment(optimizer, layer.weight))
    x, target = torch.randn(64, 20), torch.randn(64, 8)
    for _ in range(steps):
        optimizer.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        optimizer.step()
    return layer, optimizer


def test_lab_equals_bwn_before_the_first_step():
    layer, _ = lab_layer_after_adam_steps(0)
    assert torch.allclose(layer.effective_weight(), create_quantizer("bwn")(layer.weight))


def test_lab_alpha_from_a_real_adam_state():
    layer, optimizer = lab_layer_after_adam_steps(5)
    w = layer.weight.detach()
    v = optimizer.state[layer.weight]["exp_avg_sq"]
    d = v.sqrt() + 1e-8  # Hou et al., Proposition 3.1 with the code's d (docs/papers.md A.7, D.17)
    alpha = (d * w.abs()).sum() / d.sum()
    assert torch.allclose(layer.effective_weight(), alpha * torch.where(w >= 0, 1.0, -1.0), rtol=1e-6)
    assert not torch.allclose(alpha, w.abs().mean(), rtol=1e-3)  # curvature matters


def test_lab_per_channel_alpha_is_the_proposition_applied_to_each_output_channel():
    """``alpha_c = ||d_c * w_c||_1 / ||d_c||_1`` (docs/papers.md G.2), kept without the optimizer."""
    layer, optimizer = lab_layer_after_adam_steps(5, per_channel=True)
    w = layer.weight.detach()
    d = optimizer.state[layer.weight]["exp_avg_sq"].sqrt() + 1e-8
    for c in range(8):
        alpha = (d[c] * w[c].abs()).sum() / d[c].sum()
        assert torch.allclose(layer.effective_weight()[c], alpha * torch.where(w[c] >= 0, 1.0, -1.0))
    fresh = QuantLinear(20, 8, bias=False, weight_quantizer=create_quantizer("lab", per_channel=True))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval().effective_weight(), layer.effective_weight())


def test_lab_refuses_an_optimizer_without_second_moment():
    layer = QuantLinear(4, 2, weight_quantizer=create_quantizer("lab"))
    with pytest.raises(UserError, match="optim=adam"):
        AdamSecondMoment(torch.optim.SGD(layer.parameters(), lr=0.1), layer.weight)


def test_sign_activation_forward_and_hard_tanh_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    y = SignActivation()(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_two_differently_configured_models_share_no_state():
    a = QuantLinear(10, 5, weight_quantizer=create_quantizer("bc_det"))
    b = QuantLinear(30, 5, weight_quantizer=create_quantizer("bc_det", scale="unit"))
    assert a.weight_quantizer is not b.weight_quantizer
    assert a.weight_quantizer.clip_bound == pytest.approx(a.w0) and b.weight_quantizer.clip_bound == 1.0


def test_lab_alpha_survives_a_reload_without_optimizer():
    layer, _ = lab_layer_after_adam_steps(5)
    trained = layer.effective_weight().detach()
    fresh = QuantLinear(20, 8, bias=False, weight_quantizer=create_quantizer("lab"))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval().effective_weight(), trained)  # evaluated from the checkpoint alone
    with pytest.raises(UserError, match=r"no optimizer is bound.*fewmult\.nn\.bind_optimizer"):
        fresh.train().effective_weight()  # training it unbound would be BWN in disguise


def test_hashed_stream_repeats_with_the_seed_and_resumes_from_a_checkpoint():
    torch.manual_seed(3)
    a = create_quantizer("bc_stoch")
    torch.manual_seed(3)
    b = create_quantizer("bc_stoch")
    w = torch.rand(1000) - 0.5
    assert torch.equal(a(w), b(w))  # same seed, same draws
    state = {k: v.clone() for k, v in a.state_dict().items()}
    later = a(w)
    b.load_state_dict(state)
    assert torch.equal(b(w), later)  # the counter is part of the state
    assert not torch.equal(a(w), later)  # and every draw is new


def test_hashed_uniforms_look_uniform_and_independent():
    from fewmult.quant.rng import hashed_uniform

    u = hashed_uniform(torch.empty(1_000_000), torch.tensor(7))
    counts = torch.histc(u, bins=100, min=0, max=1)
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi2 < 180  # 99 degrees of freedom; 180 is far beyond the 99.99th percentile
    pairs = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(pairs) < 0.005  # neighbours uncorrelated
    v = hashed_uniform(torch.empty(1_000_000), torch.tensor(8))
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1]) < 0.005  # successive keys uncorrelated


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """Wellons' lowbias32 in NumPy's uint32, whose products wrap by definition: the reference."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


@pytest.mark.parametrize("key", [0, 7, 2**31, 2**32 - 1, 123_456_789_012])
def test_hashed_uniforms_are_the_lowbias32_formula_compiled_or_not(key):
    """fewmult computes in int32 (wrapping products, masked shifts) for speed; the numbers must be
    the uint32 formula's, in eager mode and in the torch.compile'd loop alike."""
    from fewmult.quant.fusion import run_fused
    from fewmult.quant.rng import hashed_uniform

    n = 100_003  # not a multiple of a vector width: the compiled loop's scalar tail is checked too
    with np.errstate(over="ignore"):
        k = _lowbias32(np.array([key & 0xFFFFFFFF], dtype=np.uint32))
        x = _lowbias32((np.arange(n, dtype=np.uint32) * np.uint32(0x9E3779B1)) ^ k)
    expected = torch.from_numpy((x >> np.uint32(8)).astype(np.float32) / 16777216)
    assert torch.equal(hashed_uniform(torch.empty(n), torch.tensor(key)), expected)
    fused = run_fused(hashed_uniform, torch.empty(n), torch.tensor(key))
    assert fused is not None and torch.equal(fused, expected)


# the pseudo-gradient each activation quantizer's paper states, dy/dx as a function of x
ACTIVATION_GRADIENTS = {
    "sign": lambda x: (x.abs() <= 1).to(x.dtype),  # Hubara et al.: hard tanh's
    "approx_sign": lambda x: torch.where(x < 0, 2 + 2 * x, 2 - 2 * x) * (x.abs() < 1),  # Bi-Real eq. 5
    "rsign": lambda x: torch.where(x < 0, 2 + 2 * x, 2 - 2 * x) * (x.abs() < 1),  # thresholds start at 0
    "identity": lambda x: torch.ones_like(x),
    # IR-Net's EDE k t (1 - tanh^2(t x)) in the first epoch: t = t_min = 0.1, k = 1 / t
    "ede": lambda x: 10 * 0.1 * (1 - torch.tanh(0.1 * x) ** 2),
}


@pytest.mark.parametrize("name", list_activations())
def test_every_activation_has_its_papers_values_and_gradient(name):
    assert name in ACTIVATION_GRADIENTS, f"state the paper's pseudo-gradient of {name!r} here"
    # points on both sides of every kink, and the kinks themselves
    x = torch.tensor([[-3.0, -1.0, -0.75, -0.5, -1e-3, 0.0, 1e-3, 0.25, 0.999, 1.0, 2.5]], requires_grad=True)
    y = create_activation(name, channels=x.shape[1])(x)  # one example of 11 channels
    y.backward(torch.ones_like(y))
    assert torch.allclose(x.grad, ACTIVATION_GRADIENTS[name](x.detach()))
    if name == "identity":
        assert torch.equal(y, x)
    else:  # binary: +-1, sign(0) = +1
        assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))


def test_rsign_thresholds_each_channel_and_learns_the_threshold():
    """ReActNet's RSign: ``sign(x - alpha_c)``; ``dL/dx = dL/dy * g(x - alpha_c)`` with Bi-Real's
    ``g(u) = max(0, 2 - 2|u|)``, and ``dL/dalpha_c = -sum over the channel of dL/dy * g(x - alpha_c)``."""
    torch.manual_seed(0)
    act = create_activation("rsign", channels=3)
    with torch.no_grad():
        act.threshold.copy_(torch.tensor([-0.5, 0.0, 0.7]))
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    upstream = torch.randn(4, 3, 5, 5)
    y = act(x)
    y.backward(upstream)
    u = x.detach() - act.threshold.detach().view(1, 3, 1, 1)
    g = (2 - 2 * u.abs()).clamp(min=0)
    assert torch.equal(y, torch.where(u >= 0, 1.0, -1.0))
    assert torch.allclose(x.grad, upstream * g)
    assert torch.allclose(act.threshold.grad, -(upstream * g).sum((0, 2, 3)))
    with pytest.raises(UserError, match="channels=C"):
        create_activation("rsign")


def test_rprelu_is_a_shifted_prelu_per_channel_with_the_papers_gradients():
    """ReActNet's RPReLU: ``y = x - gamma + zeta`` where ``x > gamma``, ``beta (x - gamma) + zeta``
    elsewhere; ``dy/dbeta = 1{x <= gamma} (x - gamma)``, ``dy/dgamma = -1{x > gamma} - beta 1{x <= gamma}``,
    ``dy/dzeta = 1``."""
    torch.manual_seed(0)
    act = RPReLU(2)
    gamma, beta, zeta = torch.tensor([0.3, -0.2]), torch.tensor([0.25, -0.4]), torch.tensor([1.0, 0.5])
    with torch.no_grad():
        act.shift_in.copy_(gamma), act.prelu.weight.copy_(beta), act.shift_out.copy_(zeta)
    x = torch.randn(6, 2, 3, 3, requires_grad=True)
    y = act(x)
    y.sum().backward()
    view = (1, 2, 1, 1)
    u = x.detach() - gamma.view(view)
    above = u > 0
    assert torch.allclose(y, torch.where(above, u, beta.view(view) * u) + zeta.view(view))
    assert torch.allclose(x.grad, torch.where(above, 1.0, beta.view(view).expand_as(u)))
    assert torch.allclose(act.prelu.weight.grad, torch.where(above, 0.0, u).sum((0, 2, 3)))
    dgamma = torch.where(above, -1.0, -beta.view(view).expand_as(u)).sum((0, 2, 3))
    assert torch.allclose(act.shift_in.grad, dgamma)
    assert torch.allclose(act.shift_out.grad, torch.full((2,), 6 * 9.0))


def test_an_unknown_activation_names_the_registered_ones():
    registered = "approx_sign, ede, identity, rsign, sign"
    with pytest.raises(UserError, match=f"unknown activation 'sgn'; registered: {registered}"):
        create_activation("sgn")


def test_per_channel_activations_take_a_batch_of_one():
    """RSign and RPReLU reshape their inputs to (N, C, H*W) rows for the fused loops; a batch of one
    example must not be taken for a per-channel parameter (it was, and its backward failed)."""
    x = torch.randn(1, 4, 3, 3)
    for act in (create_activation("rsign", channels=4), RPReLU(4)):
        one, two = x.clone().requires_grad_(), torch.cat([x, x]).requires_grad_()
        act(one).sum().backward()
        grads_one = [p.grad.clone() for p in act.parameters()]
        act.zero_grad()
        act(two).sum().backward()
        assert torch.allclose(one.grad, two.grad[:1])
        assert all(torch.allclose(2 * g, p.grad) for g, p in zip(grads_one, act.parameters(), strict=True))


def test_ede_follows_the_authors_log_up_schedule():
    """t = 10^(log10 t_min + (log10 t_max - log10 t_min) e / E), k = max(1/t, 1) (htqin/IR-Net trainers):
    with the ResNet-20 1/1 trainer's 1e-3..10 over 400 epochs, t is 1e-3, 0.1 and 1 at epochs 0, 200
    and 300, and never reaches 10."""
    from fewmult.quant.irnet import ede_t_and_k

    for epoch, t, k in ((0, 1e-3, 1e3), (200, 0.1, 10.0), (300, 1.0, 1.0)):
        assert ede_t_and_k(epoch, 400, 1e-3, 10.0) == (pytest.approx(t), pytest.approx(k))
    assert ede_t_and_k(399, 400, 1e-3, 10.0)[0] == pytest.approx(10 ** (-3 + 4 * 399 / 400))
    with pytest.raises(UserError, match=r"method\.ede_t_min"):
        create_activation("ede", t_min=10.0, t_max=0.1)


def test_set_epoch_reaches_every_ede_part_and_needs_a_number_of_epochs():
    from fewmult.nn import set_epoch

    layer = QuantLinear(20, 8, weight_quantizer=create_quantizer("irnet", t_min=0.1, t_max=10.0))
    net = torch.nn.Sequential(create_activation("ede", channels=20), layer)
    assert set_epoch(net, 5, 10) == 2  # the activation and the weight quantizer
    for part in (net[0], layer.weight_quantizer):
        assert part.t.item() == pytest.approx(1.0) and part.k.item() == pytest.approx(1.0)
    assert set_epoch(QuantLinear(4, 2, weight_quantizer=create_quantizer("bwn")), 0, None) == 0
    with pytest.raises(UserError, match=r"trainer\.max_epochs"):
        set_epoch(net, 0, -1)


def test_libra_pb_balances_each_channel_and_scales_it_by_a_power_of_two():
    """b = (w_c - mean) / std (unbiased) per output channel: every channel's binary weights are the
    signs of b, and its magnitude is 2^round(log2(mean|b_c|)), whatever the weights' offset and scale."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.01, 5, 6).view(6, 1, 1, 1) + 3.0
    q = create_quantizer("irnet")(w)
    for c in range(6):
        b = (w[c] - w[c].mean()) / w[c].std()
        scale = 2.0 ** torch.round(torch.log2(b.abs().mean()))
        assert torch.equal(q[c], torch.where(b >= 0, scale, -scale))
        assert 0 < int((q[c] > 0).sum()) < 27  # both signs, though sign(w) would be all +1 ...
    assert (w[:2] > 0).all()  # ... in the channels whose spread is small against the offset of 3
