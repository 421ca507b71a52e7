"""Multiplication counts against Lin et al.'s table (docs/papers.md C.2); BOPs, FLOPs and OPs as Bi-Real
Net and ReActNet count them (G.4)."""

from __future__ import annotations

import json

import pytest

from fewmult.build import build_model
from fewmult.config import compose_config
from fewmult.count import count_for_config, count_operations, main
from fewmult.nn.recurrent import GATES


@pytest.mark.parametrize(
    "overrides, with_bn, without_bn",
    [
        (["dataset=mnist", "method=fp"], 1.7535e9, 1.7480e9),
        (["dataset=mnist", "method=tc", "qbp=true"], 7.4245e6, 1.8492e6),
    ],
)
def test_mnist_mlp_reproduces_the_papers_figures(overrides, with_bn, without_bn):
    rows, totals = count_for_config(compose_config(*overrides))
    assert totals["total"] == pytest.approx(with_bn, rel=5e-5)
    assert totals["total_without_bn"] == pytest.approx(without_bn, rel=5e-5)
    assert sum(r.weights for r in rows) == 2_910_208


def test_exact_terms_of_the_full_precision_count():
    _, totals = count_for_config(compose_config("dataset=mnist", "method=fp"))
    weights, units, batch = 2_910_208, 3_082, 200
    assert totals["total_without_bn"] == 3 * batch * weights + 3 * batch * units
    assert totals["batch_norm"] == 9 * units * (batch + 1)


def test_what_each_method_saves():
    def totals(*o):
        return count_for_config(compose_config("dataset=mnist", *o))[1]

    fp, bc, bc_qbp, bwn = (
        totals("method=fp"),
        totals("method=bc_stoch"),
        totals("method=bc_stoch", "qbp=true"),
        totals("method=bwn"),
    )
    assert bc["forward"] == bc["backward"] == 0 and bc["weight_gradient"] == fp["weight_gradient"]
    assert bc_qbp["weight_gradient"] == 0
    assert 0 < bwn["forward"] < fp["forward"] / 100  # one product by alpha per output


def test_conv_net_counts_every_output_position():
    rows, _ = count_for_config(compose_config("dataset=cifar10", "method=fp", "dataset.batch_size=1"))
    first = rows[0]  # 128C3 on 32x32x3, valid: 30x30 outputs, 3*3*3*128 weights
    assert first.forward == 3 * 3 * 3 * 128 * 30 * 30


def test_cli_prints_the_table(capsys):
    assert main(["dataset=mnist", "method=tc", "qbp=true"]) == 0
    out = capsys.readouterr().out
    assert "7.4245e+06" in out and "1.7535e+09" in out and "fc1" in out


def test_cli_unknown_option(capsys):
    assert main(["method=nope"]) == 2
    assert "Available options in 'method'" in capsys.readouterr().err


def test_training_writes_the_counts(tmp_path):
    from fewmult.run.job import train

    train(
        compose_config("dataset=synthetic", "method=tc", "qbp=true", "trainer.max_epochs=1", "logger=none"),
        tmp_path,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["qbp"] is True
    assert results["multiplications"]["weight_gradient"] == 0
    assert 0 < results["multiplications"]["ratio"] < 0.01


def test_lstm_counts_the_recurrent_and_softmax_products_at_every_step():
    """One-hot inputs are lookups (no products); each step multiplies by the four W_h and the softmax."""
    steps, hidden, batch = 20, 16, 8
    cfg = ["dataset=text", "dataset.max_bytes=40000", "dataset.block_size=2000", f"dataset.seq_len={steps}"]
    cfg += [f"model.hidden_size={hidden}", f"dataset.batch_size={batch}"]
    rows, fp = count_for_config(compose_config(*cfg, "method=fp"))
    vocab = rows[-1].weights // hidden
    recurrent, softmax = steps * hidden * hidden, steps * hidden * vocab
    assert [r.name for r in rows] == [*(f"{k}_{g}" for k in "xh" for g in GATES), "out"]
    assert all(r.forward == r.backward == r.weight_gradient == 0 for r in rows[:4])
    assert fp["forward"] == fp["backward"] == fp["weight_gradient"] == batch * (4 * recurrent + softmax)
    assert fp["per_unit"] == 3 * batch * (4 * steps * hidden + steps * vocab)
    _, lab = count_for_config(compose_config(*cfg, "method=lab"))
    assert lab["forward"] == batch * (4 * steps * hidden + softmax)  # alpha once per gate output
    _, tc = count_for_config(compose_config(*cfg, "method=tc", "qbp=true"))
    assert tc["forward"] == batch * softmax and tc["weight_gradient"] == 0  # only the fp softmax multiplies


@pytest.mark.parametrize("method, bits", [("fp", 32), ("bc_det", 1), ("tc", 2), ("lab", 1)])
def test_bits_and_packed_memory_per_layer(method, bits):
    rows, _ = count_for_config(compose_config("dataset=synthetic", f"method={method}"))
    for row in rows:
        assert row.bits == bits
        # 1 bit per binary weight, 2 per ternary, one float32 scale per layer; float32 otherwise
        expected = 4 * row.weights if bits == 32 else (row.weights * bits + 7) // 8 + 4
        assert row.weight_bytes == expected


def test_cli_prints_bits_and_memory(capsys):
    assert main(["dataset=synthetic", "method=tc"]) == 0
    out = capsys.readouterr().out
    assert "bits" in out.splitlines()[3] and "memory" in out.splitlines()[3]
    assert "weights: 710.5 KiB packed, 11.1 MiB as float32 (16.0x smaller)" in out  # 784-1024x3-10


def resnet18_operations(method: str, shape: tuple[int, ...] = (3, 224, 224), classes: int = 1000) -> list:
    dims = [f"dataset.shape=[{','.join(map(str, shape))}]", f"dataset.num_classes={classes}"]
    cfg = compose_config("dataset=synthetic", "model=resnet18", *dims, f"method={method}")
    return count_operations(build_model(cfg, shape, classes), shape)


def conv_macs(cin: int, cout: int, k: int, side: int) -> int:
    return cin * cout * k * k * side * side


# He et al.'s ResNet-18 on 224-pixel images, written out: the 7x7 stem, four stages of four 3x3
# convolutions (the first of stages 2-4 strided, from the previous width), three 1x1 shortcuts
BINARY_3X3 = 4 * conv_macs(64, 64, 3, 56) + sum(
    conv_macs(c // 2, c, 3, s) + 3 * conv_macs(c, c, 3, s) for c, s in ((128, 28), (256, 14), (512, 7))
)
REAL = (
    conv_macs(3, 64, 7, 112)
    + sum(conv_macs(c // 2, c, 1, s) for c, s in ((128, 28), (256, 14), (512, 7)))
    + 512 * 1000
)


def test_binary_operations_of_the_imagenet_resnet18_as_bi_real_counts():
    """Bi-Real's ResNet-18 (1/1): the 16 binary 3x3 convolutions are BOPs; the real-valued stem, 1x1
    shortcuts and classifier are FLOPs (docs/papers.md G.4)."""
    rows = resnet18_operations("bireal")
    bops, flops = sum(r.bops for r in rows), sum(r.flops for r in rows)
    assert (bops, flops) == (BINARY_3X3, REAL) == (1_676_279_808, 137_793_536)
    assert sum(r.ops for r in rows) == bops / 64 + flops == pytest.approx(1.640e8, rel=1e-3)
    assert [r.name for r in rows if r.bops] == [r.name for r in rows if r.flops == 0]


@pytest.mark.parametrize("method", ["bireal", "reactnet"])
def test_the_printed_ops_of_bi_real_and_reactnet_resnet18_without_the_classifier(method):
    """The ReActNet authors' table prints OPs 1.63 x 10^8 for Bi-Real Net and for ReActNet (Bi-Real
    based) on ImageNet (docs/papers.md G.4): fewmult's count to the printed digits once the
    classifier's 512,000 FLOPs are left out (with them: 1.64e8)."""
    rows = resnet18_operations(method)
    without_classifier = sum(r.ops for r in rows[:-1])
    assert rows[-1].flops == 512 * 1000 and f"{without_classifier:.2e}" == "1.63e+08"
    assert f"{sum(r.ops for r in rows):.2e}" == "1.64e+08"


CIFAR_RESNET18 = ["dataset=synthetic", "dataset.shape=[3,32,32]", "model=resnet18"]


def cifar_resnet18_operations(method: str) -> list:
    return resnet18_operations(method, (3, 32, 32), 10)


def test_real_valued_activations_make_every_product_a_flop():
    # binary weights alone (bwn, 1/32) are not XNOR + popcount: every product of the 1/1 net is a FLOP
    binary, weights_only = cifar_resnet18_operations("bireal"), cifar_resnet18_operations("bwn")
    assert sum(r.bops for r in weights_only) == 0
    assert sum(r.flops for r in weights_only) == sum(r.bops + r.flops for r in binary)


@pytest.mark.slow
def test_full_precision_imagenet_resnet18_has_he_et_als_multiply_accumulates():
    rows = resnet18_operations("fp")  # He et al. 2015, Table 1: 1.8e9
    assert sum(r.bops for r in rows) == 0 and sum(r.flops for r in rows) == BINARY_3X3 + REAL == 1_814_073_344


def test_cli_prints_the_operations(capsys):
    # the CIFAR ResNet-18 (3x3 stem, 32 pixels): the totals of count_operations, checked above
    assert main([*CIFAR_RESNET18, "method=reactnet"]) == 0
    total = capsys.readouterr().out.splitlines()[-3].split()
    rows = cifar_resnet18_operations("reactnet")
    bops, flops = sum(r.bops for r in rows), sum(r.flops for r in rows)
    assert bops > 50 * flops > 0  # all but the stem, shortcuts and classifier are binary
    assert total == ["total", f"{bops:.3e}", f"{flops:.3e}", f"{bops / 64 + flops:.3e}"]
