"""The quantized character LSTM: equal to torch's LSTM, gate by gate scales, LAB2, clipping, training."""

from __future__ import annotations

import csv
import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from fewmult.config import compose_config
from fewmult.data.text import TextData
from fewmult.models.charlstm import CharLSTM
from fewmult.module import ClassifierModule
from fewmult.nn.recurrent import GATES, QuantLSTM, clip_gradient
from fewmult.quant import SignActivation, create_quantizer, list_quantizers
from fewmult.run.job import train
from tests.conftest import only_run_dir
from tests.stats import assert_mean_is

VOCAB, HIDDEN, STEPS, BATCH = 11, 8, 7, 5


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, STEPS), generator=torch.Generator().manual_seed(seed))


def make(method: str | None = None, **kwargs) -> CharLSTM:
    torch.manual_seed(0)
    quantizer = partial(create_quantizer, method) if method else None
    return CharLSTM((STEPS,), VOCAB, hidden_size=HIDDEN, weight_quantizer=quantizer, **kwargs)


def torch_lstm_twin(model: CharLSTM) -> torch.nn.LSTM:
    """torch.nn.LSTM (same gate order i, f, g, o) holding the model's effective weights."""
    twin = torch.nn.LSTM(VOCAB, HIDDEN, batch_first=True)
    lstm = model.lstm
    with torch.no_grad():
        twin.weight_ih_l0.copy_(torch.cat([lstm.input_weights[g].effective_weight() for g in GATES]))
        twin.weight_hh_l0.copy_(torch.cat([lstm.hidden_weights[g].effective_weight() for g in GATES]))
        twin.bias_ih_l0.copy_(torch.cat([lstm.input_weights[g].bias for g in GATES]))
        twin.bias_hh_l0.zero_()
    return twin


@pytest.mark.parametrize("method", [None, "bwn", "bc_det"])
def test_equals_torch_lstm_on_one_hot_inputs_with_the_effective_weights(method):
    model = make(method).eval()
    x = tokens()
    expected, _ = torch_lstm_twin(model)(F.one_hot(x, VOCAB).float())
    assert torch.allclose(model.lstm(x), expected, atol=1e-6)


def test_each_gate_matrix_has_its_own_scale():
    model = make("bwn")
    lstm = model.lstm
    with torch.no_grad():  # give the eight matrices eight different magnitudes
        for k, layer in enumerate([*lstm.input_weights.values(), *lstm.hidden_weights.values()]):
            layer.weight.mul_(1 + k / 8)
    alphas = []
    for layer in [*lstm.input_weights.values(), *lstm.hidden_weights.values()]:
        w = layer.weight.detach()
        alpha = w.abs().mean()
        assert torch.allclose(layer.effective_weight(), alpha * torch.where(w >= 0, 1.0, -1.0))
        alphas.append(float(alpha))
    assert len(set(alphas)) == 8
    assert model.out.weight_quantizer is None  # the softmax layer stays full precision


def test_lab_reads_the_second_moment_of_each_gate_matrix_separately():
    model = make("lab")
    module = ClassifierModule(
        model,
        torch.nn.CrossEntropyLoss(),
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
        None,
        num_classes=VOCAB,
    )
    optimizer = module.configure_optimizers()
    gates = [*model.lstm.input_weights.values(), *model.lstm.hidden_weights.values()]
    for step in range(3):
        optimizer.zero_grad()
        logits = model(tokens(step))
        F.cross_entropy(logits.reshape(-1, VOCAB), tokens(step + 1).reshape(-1)).backward()
        optimizer.step()
    model(tokens())
    for layer in gates:  # alpha = ||d w||_1 / ||d||_1 with d from this matrix's own exp_avg_sq
        d = optimizer.state[layer.weight]["exp_avg_sq"].sqrt() + 1e-8
        alpha = (d * layer.weight.detach().abs()).sum() / d.sum()
        assert layer.weight_quantizer.alpha_last == pytest.approx(float(alpha), rel=1e-5)
    assert len({round(float(g.weight_quantizer.alpha_last), 7) for g in gates}) == 8


def test_lab2_cell_output_is_o_times_sign_c():
    model = make("lab", activation=SignActivation).eval()
    x = tokens()
    lstm = model.lstm
    w_x = torch.cat([lstm.input_weights[g].effective_weight() for g in GATES])
    w_h = torch.cat([lstm.hidden_weights[g].effective_weight() for g in GATES])
    b = torch.cat([lstm.input_weights[g].bias for g in GATES])
    h = c = torch.zeros(BATCH, HIDDEN)
    for t in range(STEPS):  # a plain reference cell
        i, f, g, o = (F.one_hot(x[:, t], VOCAB).float() @ w_x.T + b + h @ w_h.T).chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * torch.where(c >= 0, 1.0, -1.0)
    out = lstm(x)
    assert torch.allclose(out[:, -1], h, atol=1e-6)
    assert not torch.all(out.abs() == 1)  # o is a sigmoid: h is not binary (docs/papers.md D.21)


def test_gate_gradients_are_clipped_at_every_step():
    x = torch.tensor([0.5, -2.0, 3.0], requires_grad=True)
    (clip_gradient(x, 5.0) * torch.tensor([10.0, -7.0, 1.0])).sum().backward()
    assert x.grad.tolist() == [5.0, -5.0, 1.0]

    def bias_grad(grad_clip):
        model = make(grad_clip=grad_clip)
        loss = 1e7 * F.cross_entropy(model(tokens()).reshape(-1, VOCAB), tokens(1).reshape(-1))
        loss.backward()
        return model.lstm.input_weights["cell"].bias.grad.abs().max()

    # the bias gradient is a sum of BATCH * STEPS gate gradients, each at most 5 once clipped
    assert bias_grad(5.0) <= 5.0 * BATCH * STEPS < bias_grad(None)


def test_the_fused_step_has_the_gradients_of_torch_lstm():
    model = make(grad_clip=1e9)  # the fused step, its clipping never active
    twin = torch_lstm_twin(model)
    x = tokens()
    model.lstm(x).square().sum().backward()
    twin(F.one_hot(x, VOCAB).float())[0].square().sum().backward()
    lstm = model.lstm
    ours = [
        torch.cat([lstm.hidden_weights[g].weight.grad for g in GATES]),
        torch.cat([lstm.input_weights[g].weight.grad for g in GATES]),
        torch.cat([lstm.input_weights[g].bias.grad for g in GATES]),
    ]
    theirs = (twin.weight_hh_l0.grad, twin.weight_ih_l0.grad, twin.bias_ih_l0.grad)
    for got, expected in zip(ours, theirs, strict=True):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [None, SignActivation], ids=["tanh", "sign"])
def test_the_fused_step_equals_the_step_written_out(monkeypatch, activation):
    # with active clipping (a large loss) and the sign cell of LAB2; torch.compile's fused kernels
    # round differently from eager ones: equal to float32 rounding
    def run(fused: bool):
        monkeypatch.setattr(QuantLSTM, "_fusable", lambda self: fused)
        model = make("bc_det", activation=activation)
        out = model(tokens())
        (1e7 * F.cross_entropy(out.reshape(-1, VOCAB), tokens(1).reshape(-1))).backward()
        return out.detach(), [p.grad for p in model.parameters()]

    (out, grads), (fused_out, fused_grads) = run(False), run(True)
    assert torch.allclose(fused_out, out, atol=1e-6)
    for got, expected in zip(fused_grads, grads, strict=True):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_initialization_is_the_authors():
    model = make("lab")
    lstm = model.lstm
    for layer in [*lstm.input_weights.values(), *lstm.hidden_weights.values()]:
        assert layer.weight.abs().max() <= 0.08 and layer.weight.abs().max() > 0.07
    assert torch.all(lstm.input_weights["forget"].bias == 1.0)
    assert all(torch.all(lstm.input_weights[g].bias == 0.0) for g in ("input", "cell", "output"))
    torch.manual_seed(0)
    big = CharLSTM((STEPS,), 100, hidden_size=200)
    assert float(big.out.weight.detach().std()) == pytest.approx(0.01, rel=0.05) and torch.all(
        big.out.bias == 0
    )


def test_sequence_outputs_are_scored_per_character():
    model = make()
    assert model(tokens()).shape == (BATCH, STEPS, VOCAB)


TINY_TEXT = [
    "dataset=text",
    "paper=hou2017",  # the LSTM setup is Hou et al.'s, whichever paper the method comes from
    "dataset.max_bytes=40000",
    "dataset.block_size=2000",
    "dataset.seq_len=20",
    "dataset.batch_size=32",
    "model.hidden_size=48",
    "logger=none",
]


# IR-Net's Libra-PB is trained on ResNets (tests/test_resume.py) and MLPs (tests/test_methods_train.py),
# not here (its preset's hard tanh follows residual additions, and no IR-Net setup is a language model;
# left out for the suite's time budget); its values and gradient are tests/test_quantizers.py's
VARIANTS = [(m, False) for m in list_quantizers() if m != "irnet"] + [("bc_stoch", True), ("tc", True)]
# the fast tier trains stochastic weights with QBP (the recurrent machinery every variant shares;
# LAB's per-gate curvature is test_lab_reads_the_second_moment_of_each_gate_matrix_separately's, the
# sign cell's step test_the_fused_step_equals_the_step_written_out's); the slow tier trains every other
FAST_LSTM = {"tc+qbp"}
LSTM_IDS = [f"{m}{'+qbp' if q else ''}" for m, q in VARIANTS]
LSTM_VARIANTS = [
    pytest.param(m, q, id=i, marks=[] if i in FAST_LSTM else [pytest.mark.slow])
    for (m, q), i in zip(VARIANTS, LSTM_IDS, strict=True)
]


@pytest.mark.parametrize("method, qbp", LSTM_VARIANTS)
def test_every_method_trains_the_lstm(tmp_path, method, qbp):
    """Three epochs (seed 0): validation cross-entropy 2.37 (fp) and 2.44 (lab) nats per character;
    untrained (optim.lr=1e-12) 4.454, the uniform guess ln 86, which the bound misses by a nat."""
    cfg = compose_config(
        *TINY_TEXT,
        f"method={method}",
        f"qbp={qbp}",
        "trainer.max_epochs=3",
        "optim.lr=0.01",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = train(cfg, run_dir)
    with (run_dir / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f)]
    assert results["status"] == "completed" and results["selected_by"] == "val_loss"
    assert losses[-1] < losses[0]
    vocabulary = TextData(max_bytes=40_000, block_size=2_000, seq_len=20, batch_size=32).load().num_classes
    assert results["val_loss"] < math.log(vocabulary) - 1  # a nat better than a uniform guess


def test_end_to_end_on_python_sources_with_bits_per_character(run_cli, tmp_path):
    proc = run_cli(*TINY_TEXT, "method=lab", "trainer.max_epochs=4", "optim.lr=0.01", "logger=csv")
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    best = min(rows, key=lambda r: (float(r["val/loss"]), -int(r["epoch"])))  # ties to the later epoch
    assert results["best_epoch"] == int(best["epoch"])
    assert results["test_loss"] == pytest.approx(float(best["test/loss"]))
    assert results["test_bpc"] == pytest.approx(results["test_loss"] / math.log(2))
    # it learned: the training loss falls by more than 0.3 nats (untrained, optim.lr=1e-12: 4.454 throughout)
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"]) - 0.3
    assert f"val loss {results['val_loss']:.4f}" in proc.stdout
    assert results["multiplications"]["forward"] > 0 and results["seq_len"] == 20


@pytest.mark.slow  # a CLI error path; the fast tier has others
def test_a_bad_text_path_is_one_clear_message(run_cli, tmp_path):
    proc = run_cli("dataset=text", f"dataset.path={tmp_path}/nothing.txt", "logger=none")
    assert proc.returncode == 2
    assert f"no text file at dataset.path={tmp_path}/nothing.txt" in proc.stderr
    assert "Traceback" not in proc.stderr
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert (
        results["status"] == "failed" and results["selected_by"] == "val_loss"
    )  # the report keeps its row in nats


@pytest.mark.slow
def test_report_of_a_language_model_sweep_is_in_nats(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", f"hydra.sweep.dir={sweep}", *TINY_TEXT, "method=lab", "trainer.max_epochs=1", "seed=0,1"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(str(sweep), module="fewmult.report")
    assert proc.returncode == 0, proc.stderr
    losses = [json.loads((sweep / job / "results.json").read_text())["test_loss"] for job in ("0", "1")]
    mean = sum(losses) / 2
    row = f"| hou2017 | text (20 steps) | lstm | lab | 1/32 | 0.002 | test nats/char | {mean:.3f} ± "
    assert row in proc.stdout
    for name in ("val_loss_curves.png", "loss_vs_lr.png"):
        assert (sweep / name).stat().st_size > 0
    assert not (sweep / "val_error_curves.png").exists()


def test_qbp_recurrent_weight_gradient_is_exact_in_expectation():
    """Unclipped power-of-two rounding of h is unbiased; only W_h's gradient uses it (docs/papers.md A.5)."""
    from fewmult.qbp import QBPSettings

    exact_model = make(output_init_std=0.5)
    qbp_model = make(output_init_std=0.5, qbp_dense=QBPSettings(None, None))
    qbp_model.load_state_dict(exact_model.state_dict(), strict=False)  # without the QBP random streams
    x, y = tokens(), tokens(1)

    def grads(model):
        model.zero_grad()
        F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).backward()
        hidden = torch.cat([model.lstm.hidden_weights[g].weight.grad for g in GATES])
        return hidden.clone(), model.lstm.input_weights["cell"].weight.grad.clone()

    w_exact, x_exact = grads(exact_model)
    samples = [grads(qbp_model) for _ in range(300)]
    for _, x_grad in samples:  # the error signals, hence the input-matrix gradients, stay exact
        assert torch.allclose(x_grad, x_exact, atol=1e-6)
    w = torch.stack([s[0] for s in samples])
    assert (w[0] - w_exact).abs().max() > 0.05 * w_exact.abs().max()  # a single draw is quantized
    assert_mean_is(w, w_exact)  # h_0 = 0 gives exactly-zero terms, which it leaves out
