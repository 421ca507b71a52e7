"""Quantized back propagation: the power-of-two rounding and the layers' gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fewmult.build import qbp_settings
from fewmult.config import compose_config
from fewmult.errors import UserError
from fewmult.models import PaperNet
from fewmult.models.charlstm import CharLSTM
from fewmult.nn import QuantConv2d, QuantLinear, QuantLSTM
from fewmult.qbp import QBPSettings, pow2_quantize
from fewmult.quant import create_quantizer
from fewmult.quant.rng import RandomStream
from tests.stats import assert_mean_is


def is_signed_power_of_two_or_zero(q: torch.Tensor) -> bool:
    nonzero = q[q != 0].abs()
    return bool(torch.equal(torch.exp2(torch.log2(nonzero).round()), nonzero))


def test_values_are_signed_powers_of_two_and_zero_stays_zero():
    torch.manual_seed(0)
    x = torch.randn(10_000) * torch.exp(torch.randn(10_000) * 3)
    x[:10] = 0
    q = pow2_quantize(x)
    assert is_signed_power_of_two_or_zero(q)
    assert (q[:10] == 0).all()
    assert torch.equal(torch.sign(q[10:]), torch.sign(x[10:]))
    # each value is one of the two powers of two around it
    lo = torch.exp2(torch.floor(torch.log2(x[10:].abs())))
    assert ((q[10:].abs() == lo) | (q[10:].abs() == 2 * lo)).all()


def test_unbiased_when_unclipped():
    """E[q(x)] = x, checked by z-scores over 4,000 draws of 500 values (fixed seed)."""
    torch.manual_seed(1)
    x = torch.randn(500) * 3
    draws = torch.stack([pow2_quantize(x) for _ in range(4000)])
    mean, std = draws.mean(0), draws.std(0)
    z = (mean - x)[std > 0] / (std[std > 0] / 4000**0.5)
    assert z.abs().max() < 6 and 0.8 < z.square().mean() < 1.2


def test_probability_of_rounding_up():
    torch.manual_seed(2)
    q = pow2_quantize(torch.full((100_000,), 0.3))  # between 0.25 and 0.5: up with p = 0.3/0.25 - 1
    assert set(q.unique().tolist()) == {0.25, 0.5}
    assert (q == 0.5).float().mean().item() == pytest.approx(0.2, abs=0.005)


def test_exponent_clipping_as_the_authors_conv_layers():
    x = torch.tensor([100.0, 16.0, 0.001, -0.001, 0.0])
    q = pow2_quantize(x, exp_min=-4, exp_max=3)
    assert q[:2].tolist() == [16.0, 16.0]  # saturates at 2^(exp_max + 1)
    assert q[2:4].tolist() == [0.0625, -0.0625]  # rounds up to 2^exp_min
    assert q[4] == 0
    torch.manual_seed(3)
    y = torch.randn(10_000) * 10
    assert pow2_quantize(y, -4, 3).abs().max() <= 16 and pow2_quantize(y, -4, 3).abs().min() >= 1 / 16


def test_deterministic_rounding_picks_the_nearer_power():
    x = torch.tensor([0.3, 0.4, 5.0, 7.0, -3.0])
    assert pow2_quantize(x, stochastic=False).tolist() == [0.25, 0.5, 4.0, 8.0, -4.0]


@pytest.mark.parametrize("exp_range", [(-4, 3), (None, None)])
def test_compact_codes_decode_to_the_same_values(exp_range):
    x = torch.randn(1000) * 5
    x[0] = 0
    float_settings = QBPSettings(*exp_range, stochastic=True, compact=False)
    compact = QBPSettings(*exp_range, stochastic=True, compact=True)
    torch.manual_seed(4)
    expected = float_settings.encode(x)
    torch.manual_seed(4)
    codes = compact.encode(x)
    assert codes.dtype == (torch.int8 if exp_range[0] is not None else torch.int16)
    assert torch.equal(compact.decode(codes, torch.float32), expected)


def exact_and_qbp_grads(layer_fn, x_shape, draws=1000):
    torch.manual_seed(5)
    qbp_layer, exact_layer = layer_fn(QBPSettings(None, None)), layer_fn(None)
    exact_layer.load_state_dict(qbp_layer.state_dict(), strict=False)  # without the QBP random stream
    x = torch.randn(*x_shape)
    upstream = torch.randn_like(exact_layer(x))

    def grads(layer):
        x_ = x.clone().requires_grad_(True)
        layer.zero_grad()
        (layer(x_) * upstream).sum().backward()
        return layer.weight.grad.clone(), x_.grad.clone(), layer.bias.grad.clone()

    exact = grads(exact_layer)
    samples = [grads(qbp_layer) for _ in range(draws)]
    return exact, samples


@pytest.mark.parametrize(
    "layer_fn, x_shape",
    [
        (lambda qbp: QuantLinear(24, 10, qbp=qbp), (16, 24)),
        (lambda qbp: QuantConv2d(3, 4, 3, padding=1, qbp=qbp), (2, 3, 6, 6)),
        (lambda qbp: QuantConv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, qbp=qbp), (2, 4, 9, 9)),
    ],
    ids=["linear", "conv", "conv-strided-dilated-grouped"],
)
def test_weight_gradient_is_exact_in_expectation_and_error_signal_is_exact(layer_fn, x_shape):
    (w_exact, x_exact, b_exact), samples = exact_and_qbp_grads(layer_fn, x_shape)
    w_samples = torch.stack([s[0] for s in samples])
    for _, x_grad, b_grad in samples:
        assert torch.allclose(x_grad, x_exact, atol=1e-6)  # error signals stay full precision
        assert torch.allclose(b_grad, b_exact, atol=1e-6)
    assert not torch.allclose(w_samples[0], w_exact, atol=1e-3)  # a single draw is quantized
    assert_mean_is(w_samples, w_exact)


def test_a_convolution_takes_any_geometry_with_and_without_qbp():
    # a ResNet's strided and grouped convolutions: forward as F.conv2d with the effective weight;
    # with QBP the weight gradient correlates q(x) with the exact error in the same geometry
    torch.manual_seed(0)
    geometry = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 3}
    settings = QBPSettings(exp_min=None, exp_max=None, stochastic=False)
    layer = QuantConv2d(6, 9, (3, 2), **geometry, weight_quantizer=create_quantizer("bwn"), qbp=settings)
    assert (layer.fan_in, layer.fan_out) == (6 // 3 * 6, 9 * 6)  # one group's fan-in
    x = torch.randn(2, 6, 7, 8, requires_grad=True)
    w = layer.effective_weight().detach().requires_grad_()
    expected = F.conv2d(x, w, layer.bias, **geometry)
    upstream = torch.randn_like(expected)
    out = layer.train()(x)
    assert torch.allclose(out, expected, atol=1e-6)
    (out * upstream).sum().backward()
    q = pow2_quantize(x.detach(), None, None, stochastic=False)
    expected_w = torch.nn.grad.conv2d_weight(q, w.shape, upstream, **geometry)
    assert torch.allclose(layer.weight.grad, expected_w, rtol=1e-5, atol=1e-6)
    exact_x = torch.autograd.grad((F.conv2d(x, w, layer.bias, **geometry) * upstream).sum(), x)[0]
    assert torch.allclose(x.grad, exact_x, atol=1e-6)
    assert torch.allclose(layer.eval()(x), expected, atol=1e-6)  # evaluation: no QBP


def test_qbp_is_off_in_evaluation():
    layer = QuantLinear(8, 3, qbp=QBPSettings()).eval()
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), F.linear(x, layer.weight))


@pytest.mark.parametrize("exp_range", [(-4, 3), (None, None)])
def test_fused_bit_kernel_matches_the_reference_rounding(exp_range):
    """The layers' fused kernel: same value set and same probabilities as pow2_quantize."""
    settings = QBPSettings(*exp_range)
    x = torch.tensor([0.3, -5.0, 0.001, 100.0, 0.0, 1.0, -0.75])
    draws = torch.stack([settings.round(x, torch.tensor(k)) for k in range(5_000)])
    lo, hi = exp_range
    for i, value in enumerate(x.tolist()):
        reference = pow2_quantize(x[i : i + 1].expand(5_000).contiguous(), lo, hi)
        assert set(draws[:, i].unique().tolist()) == set(reference.unique().tolist())
        assert draws[:, i].mean().item() == pytest.approx(
            reference.mean().item(), abs=0.02 * max(abs(value), 0.1)
        )


@pytest.mark.parametrize("fused", [True, False], ids=["hashed-fused", "torch-rand"])
def test_the_authors_conv_rounding_turns_zero_into_minus_a_sixteenth(fused):
    # Lin et al.'s code: log2(0) = -inf clipped to -4, sign(0) = -1 (docs/papers.md A.5)
    x = torch.tensor([0.0, 0.0, 0.25, -3.0])
    key = RandomStream().next_key() if fused else None
    authors = QBPSettings(exp_min=-4, exp_max=3, zero_to_min=True).round(x, key)
    assert authors[:2].tolist() == [-1 / 16, -1 / 16]
    assert authors[2].item() == 0.25 and authors[3].item() in (-2.0, -4.0)
    assert QBPSettings(exp_min=-4, exp_max=3).round(x, key)[:2].tolist() == [0.0, 0.0]  # the paper's form


def test_authors_code_settings_are_those_of_lin_et_al():
    settings = qbp_settings(compose_config("qbp=true", "qbp_settings=authors_code"))
    conv, dense = settings["qbp_conv"], settings["qbp_dense"]
    assert (conv.exp_min, conv.exp_max, conv.zero_to_min) == (-4, 3, True)
    assert (dense.exp_min, dense.exp_max, dense.zero_to_min) == (None, None, False)
    assert (dense.error, conv.error) == ("after_bn", "exact")
    paper = qbp_settings(compose_config("qbp=true"))
    assert (paper["qbp_dense"].error, paper["qbp_conv"].error) == ("exact", "exact")


def test_the_authors_dense_weight_gradient_uses_the_error_after_batch_norm():
    # Lin et al.'s code (docs/papers.md A.5): dL/dW = e^T q(x) with e = dL/d(BN output), BN's Jacobian
    # ignored; the error propagated to the layer input stays exact. Deterministic rounding here.
    settings = QBPSettings(exp_min=None, exp_max=None, stochastic=False, error="after_bn")
    torch.manual_seed(0)
    net = PaperNet("3FC", (5,), 2, qbp_dense=settings).train()
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 2, (8,))
    F.cross_entropy(net(x), y).backward()

    # by hand: the same network without QBP, the errors after each BN kept
    plain = PaperNet("3FC", (5,), 2).train()
    plain.load_state_dict(net.state_dict(), strict=False)  # all but the QBP layers' random streams
    x_plain = x.detach().clone().requires_grad_()
    fc1_in = torch.flatten(x_plain, 1)
    bn1 = plain.fc1[2](plain.fc1[1](fc1_in))
    bn1.retain_grad()
    fc2_in = plain.fc1[3](bn1)
    bn2 = plain.out[1](plain.out[0](fc2_in))
    bn2.retain_grad()
    F.cross_entropy(bn2, y).backward()
    for layer, error, inputs in ((net.fc1[1], bn1.grad, fc1_in), (net.out[0], bn2.grad, fc2_in)):
        expected = error.T @ pow2_quantize(inputs.detach(), None, None, stochastic=False)
        assert torch.allclose(layer.weight.grad, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(x.grad, x_plain.grad, rtol=1e-5, atol=1e-7)  # the exact input error
    # the paper's form differs: its error is the one before BN
    exact = PaperNet("3FC", (5,), 2, qbp_dense=replace(settings, error="exact")).train()
    exact.load_state_dict(net.state_dict())
    F.cross_entropy(exact(x.detach()), y).backward()
    assert not torch.allclose(exact.out[0].weight.grad, net.out[0].weight.grad, rtol=1e-2)


def test_authors_code_gives_every_layer_lin_et_als_weight_gradient():
    # Lin et al.'s code (docs/papers.md A.5): a conv's gradient is corr(q(x), exact error) with
    # exponents in [-4, 3] and 0 -> -1/16; a dense layer's is (error after its BN)^T q(x), unclipped
    authors = qbp_settings(compose_config("qbp=true", "qbp_settings=authors_code"))
    settings = {kind: replace(s, stochastic=False) for kind, s in authors.items()}
    torch.manual_seed(2)
    net = PaperNet("2C3-2C3-MP2-3FC", (1, 6, 6), 3, **settings).train()
    x = torch.randn(4, 1, 6, 6) * 8
    x[:, :, 0, :] = 0.0  # zero inputs: -1/16 in the conv's rounding
    y = torch.randint(0, 3, (4,))
    x_qbp = x.clone().requires_grad_()
    F.cross_entropy(net(x_qbp), y).backward()

    plain = PaperNet("2C3-2C3-MP2-3FC", (1, 6, 6), 3).train()
    plain.load_state_dict(net.state_dict(), strict=False)  # all but the QBP layers' random streams
    x_plain = x.clone().requires_grad_()
    c1 = plain.conv1[0](x_plain)
    a1 = plain.conv1[2](plain.conv1[1](c1))
    c2 = plain.conv2[0](a1)
    a2 = plain.conv2[3](plain.conv2[2](plain.conv2[1](c2)))
    f_in = torch.flatten(a2, 1)
    z = plain.fc1[2](plain.fc1[1](f_in))
    a3 = plain.fc1[3](z)
    o = plain.out[1](plain.out[0](a3))
    for t in (c1, c2, z, o):
        t.retain_grad()
    F.cross_entropy(o, y).backward()

    def conv_q(t):
        q = pow2_quantize(t.detach(), -4, 3, stochastic=False)
        return torch.where(t == 0, torch.full_like(q, -1 / 16), q)

    def dense_q(t):
        return pow2_quantize(t.detach(), None, None, stochastic=False)

    assert (a1 == 0).any() and (f_in == 0).any()  # ReLU zeros reach both kinds of layer
    expected = {
        net.conv1[0]: torch.nn.grad.conv2d_weight(conv_q(x), net.conv1[0].weight.shape, c1.grad),
        net.conv2[0]: torch.nn.grad.conv2d_weight(conv_q(a1), net.conv2[0].weight.shape, c2.grad),
        net.fc1[1]: z.grad.T @ dense_q(f_in),
        net.out[0]: o.grad.T @ dense_q(a3),
    }
    for layer, grad in expected.items():
        assert torch.allclose(layer.weight.grad, grad, rtol=1e-4, atol=1e-6), layer
    assert torch.allclose(x_qbp.grad, x_plain.grad, rtol=1e-4, atol=1e-7)  # errors stay exact


def test_each_forward_pass_keeps_its_own_error_after_batch_norm():
    # two forwards before one backward (two losses, one step) give the sum of the two gradients
    settings = QBPSettings(exp_min=None, exp_max=None, stochastic=False, error="after_bn")
    torch.manual_seed(1)
    net = PaperNet("4FC", (6,), 3, qbp_dense=settings).train()
    xs, ys = torch.randn(2, 8, 6), torch.randint(0, 3, (2, 8))
    separate = []
    for x, y in zip(xs, ys, strict=True):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        separate.append(net.fc1[1].weight.grad.clone())
    net.zero_grad()
    (F.cross_entropy(net(xs[0]), ys[0]) + F.cross_entropy(net(xs[1]), ys[1])).backward()
    assert torch.allclose(net.fc1[1].weight.grad, separate[0] + separate[1], rtol=1e-5, atol=1e-7)


def test_the_error_after_batch_norm_needs_batch_norm():
    with pytest.raises(UserError, match=r"needs model\.batch_norm=true"):
        PaperNet("3FC", (5,), 2, batch_norm=False, qbp_dense=QBPSettings(error="after_bn"))
    with pytest.raises(UserError, match=r"model=lstm has none"):
        CharLSTM((10,), 7, hidden_size=4, qbp_dense=QBPSettings(error="after_bn"))
    with pytest.raises(UserError, match=r"model=lstm has none"):  # the layer itself, in a user's model
        QuantLSTM(7, 4, qbp=QBPSettings(error="after_bn"))
    with pytest.raises(UserError, match=r"qbp_settings\.\*\.error must be one of"):
        QBPSettings(error="before")
