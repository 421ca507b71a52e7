"""Every config composes and instantiates, and the grid picks the papers' setups."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewmult import schedules
from fewmult.build import build_model, check_model_fits_data, checked_datamodule, optimizer_factory
from fewmult.config import CONF_DIR, check_config, compose_config
from fewmult.data import TensorDataModule
from fewmult.errors import UserError
from fewmult.models import QuantModel
from fewmult.nn.layers import quant_layers
from fewmult.published import Published, lookup, published_rows, settings_differing, setup_key
from tests import fakedata


def options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def example_batch(
    datamodule: TensorDataModule, num_classes: int = 10
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Two inputs the dataset's model reads, and the output shape expected for them (text: windows of
    8 characters, not the dataset's 100, which made the grid's LSTMs half of its time)."""
    shape = datamodule.image_shape
    if datamodule.input_kind == "tokens":
        return torch.randint(0, num_classes, (2, 8)), (2, 8, num_classes)
    return torch.randn(2, *shape), (2, num_classes)


def test_groups_have_the_documented_options():
    assert {
        "mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "mnist_mini",
        "synthetic",
        "text",
        "warpeace",
        "linux",
    } <= set(options("dataset"))
    assert {"mlp", "cnn", "lin2016_mlp", "lin2016_cnn", "hou2017_mlp", "hou2017_cnn", "lstm"} <= set(
        options("model")
    )
    assert {"fp"} <= set(options("method"))
    assert {"sgd", "adam"} <= set(options("optim"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


@pytest.mark.parametrize("procedure", options("procedure"))
def test_every_procedure_composes_to_forms_that_exist(procedure):
    """procedure=: the clean forms, or Lin et al.'s code (a new order every 2 epochs except on SVHN,
    whose examples their code never reshuffles)."""
    cfg = compose_config(f"procedure={procedure}")
    lin = procedure.startswith("lin2016_code")
    assert cfg.bn_reestimate is lin and cfg.bn_reestimate_form == ("authors_code" if lin else "batch_stats")
    assert cfg.dataset.eval_whole_batches is lin
    assert cfg.dataset.shuffle_every == (2 if lin and procedure != "lin2016_code_svhn" else 1)
    check_config(cfg)


def builds_and_steps(cfg) -> None:
    """The composed run's model reads a batch of its data; its optimizer, schedule, loss and trainer
    instantiate, with the learning rate the recipe sets in every parameter group."""
    datamodule = instantiate(cfg.dataset)
    assert datamodule.input_kind in ("images", "tokens") and datamodule.image_shape
    model = build_model(cfg, datamodule.image_shape, 10)  # with the method's quantizers and activations
    model.eval()
    x, out_shape = example_batch(datamodule)
    assert model(x).shape == out_shape
    optimizer = optimizer_factory(cfg)(model)
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.optim.lr] * len(optimizer.param_groups)
    assert cfg.optim.lr > 0
    instantiate(cfg.schedule)(optimizer)
    instantiate(cfg.loss)
    instantiate(cfg.trainer, accelerator="cpu", logger=False)


# one dataset of each kind of net a paper gives (MLP on digits, CNN or ResNet on colour images, LSTM);
# every paper's net on every dataset is built by test_a_run_is_recorded_under_the_paper_whose_recipe_runs
BUILT_ON = ("mnist_mini", "cifar10", "text")


def slow_unless(values: list, inner: Callable[[Any], bool], ids: Callable[[Any], str] | None = None) -> list:
    """``values`` with those that fail ``inner`` in the slow tier: the grid's compositions (~0.15 s
    each in Hydra) were a third of the inner loop, which keeps a sample that touches every option
    (CI runs them all)."""
    return [
        pytest.param(v, marks=() if inner(v) else pytest.mark.slow, id=ids(v) if ids else None)
        for v in values
    ]


def grid_datasets(inner: tuple[str, ...]) -> list:
    """Every dataset option; in the inner loop, one dataset per kind of net (``inner``)."""
    return slow_unless(options("dataset"), lambda d: d in inner)


# BUILT_ON in the turn the inner loop gives the methods (sorted): Bi-Real and ReActNet land on digits,
# which their papers' recipes have; bc_stoch on text, where Lin et al.'s has none (the refusal)
IN_TURN = ("cifar10", "text", "mnist_mini")


def _on_one_built_dataset(pair: tuple[str, str]) -> bool:
    """Each method on one of BUILT_ON, taken in turn: every method and every BUILT_ON dataset."""
    method, dataset = pair
    return dataset == IN_TURN[options("method").index(method) % len(IN_TURN)]


@pytest.mark.parametrize(
    "method_dataset",
    slow_unless(
        [(m, d) for m in options("method") for d in options("dataset")], _on_one_built_dataset, "-".join
    ),
)
def test_every_method_composes_on_every_dataset(method_dataset):
    """Each method with the paper its preset picks, checked as a launch checks it; built and stepped
    on BUILT_ON (the grid's other axis, paper x dataset, is below: the full product of both, built,
    took a third of the inner loop)."""
    method, dataset = method_dataset
    cfg = compose_config(f"dataset={dataset}", f"method={method}")
    assert cfg.dataset.name == dataset and cfg.method.name == method
    if cfg.recipe.paper != cfg.paper:  # a paper without this dataset (Lin et al., ReActNet: no LSTM)
        with pytest.raises(UserError, match=f"paper={cfg.paper} has no setup for dataset={dataset}"):
            check_config(cfg)
        return
    check_config(cfg)
    if dataset in BUILT_ON:
        builds_and_steps(cfg)


# model/auto/<paper>_<dataset> only names one of these: each is built on its dataset below
@pytest.mark.parametrize("model", [m for m in options("model") if not m.startswith("auto/")])
def test_every_model_option_builds(model):
    cfg = compose_config(f"model={model}")
    reads_text = cfg.model.name == "lstm"
    datamodule = instantiate(compose_config("dataset=text" if reads_text else "dataset=cifar10").dataset)
    x, out_shape = example_batch(datamodule)
    net = instantiate(cfg.model, input_shape=datamodule.image_shape, num_classes=10).eval()
    assert net(x).shape == out_shape
    assert net.name == cfg.model.name  # the architecture's own name (PaperNet's once became "out")
    assert isinstance(net, QuantModel) and net.input_kind == datamodule.input_kind
    assert net.layer_uses(datamodule.image_shape)  # what fewmult.count reads


@pytest.mark.parametrize("paper", ["lin2016", "hou2017"])
def test_scales_come_from_the_paper_but_bnn_is_unscaled_in_any(paper):
    # the paper's setup gives BinaryConnect its scale (Lin: +-W0); BNN's +-1 is its definition,
    # kept in one place, the registry's alias bnn = bc_det with scale="unit"
    layers = {}
    for method in ("bc_det", "bnn"):
        cfg = compose_config(f"paper={paper}", "dataset=synthetic", f"method={method}")
        layers[method] = list(quant_layers(build_model(cfg, (64,), 10)))
    assert all(layer.weight_quantizer.s == 1.0 for layer in layers["bnn"])
    expected = [layer.w0 if paper == "lin2016" else 1.0 for layer in layers["bc_det"]]
    assert [layer.weight_quantizer.s for layer in layers["bc_det"]] == pytest.approx(expected)


def test_models_depend_on_layers_not_on_the_tools_that_read_them():
    tools = re.compile(r"^(from|import) fewmult\.(count|build|train|report)", re.MULTILINE)
    for path in (CONF_DIR.parent / "fewmult" / "models").glob("*.py"):
        assert not tools.search(path.read_text()), path


@pytest.mark.parametrize(
    ("paper", "pooled_fan_out"), [("lin2016", 128 * 9 // 4), ("hou2017", 128 * 9)], ids=["lin", "hou"]
)
def test_a_pooled_convolution_has_the_fan_out_of_its_papers_code(paper, pooled_fan_out):
    # docs/papers.md A.0 and D.25: Lin et al.'s code divides the fan-out by the pool area, Hou et al.'s not
    cfg = compose_config(f"paper={paper}", "dataset=cifar10")
    net = build_model(cfg, (3, 32, 32), 10)
    first, pooled = net.conv1[0], net.conv2[0]
    assert isinstance(net.conv2[1], torch.nn.MaxPool2d)
    assert (first.fan_in, first.fan_out) == (3 * 9, 128 * 9)
    assert (pooled.fan_in, pooled.fan_out) == (128 * 9, pooled_fan_out)
    bound = 2 * (1.5 / (128 * 9 + pooled_fan_out)) ** 0.5  # fp: Glorot uniform, U(-2 W0, 2 W0)
    bound32 = torch.tensor(bound).item()  # the bound as float32 holds it: uniform_ draws up to that
    assert bound * 0.98 < pooled.weight.abs().max().item() <= bound32


@pytest.mark.parametrize("overrides", [["dataset=text", "model=mlp"], ["dataset=mnist", "model=lstm"]])
def test_a_model_that_cannot_read_the_data_is_refused(overrides):
    cfg = compose_config(*overrides)
    with pytest.raises(UserError, match=f"model={cfg.model.name} reads"):
        check_model_fits_data(cfg, instantiate(cfg.dataset))


def test_a_net_too_deep_for_its_input_says_so():
    cfg = compose_config("model=lin2016_cnn")
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.model, input_shape=(1, 28, 28), num_classes=10)
    assert isinstance(info.value.__cause__, UserError)
    assert "shrinks the (1, 28, 28) input" in str(info.value.__cause__)


PAPER_OPTIMIZER = {
    "lin2016": "sgd",
    "hou2017": "adam",
    "qin2020": "sgd",
    "liu2018": "adam",
    "liu2020": "adam",
}


def _preset(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())


SWEEPS = [e for e in options("experiment") if "sweeper" in _preset(e).get("hydra", {})]
PUBLISHED_ROWS = [e for e in options("experiment") if e not in SWEEPS]  # one preset per published row


def _command_of(row: Published) -> tuple[str, ...]:
    """The overrides that run a published row (README "Reproducing the papers"); the preset names the
    model where its paper prints rows of several models on that dataset (IR-Net's CIFAR-10 table)."""
    qbp = "_qbp" if row.qbp else ""
    steps = f"_ts{row.time_steps}" if row.time_steps not in (None, 100) else ""
    models = {r.model for r in published_rows() if (r.paper, r.dataset) == (row.paper, row.dataset)}
    model = f"_{row.model}" if len(models) > 1 else ""
    overrides = [f"+experiment={row.paper}_{row.dataset}{model}_{row.method}{qbp}{steps}"]
    return tuple(overrides + (["model.width=" + str(row.width)] if row.section == "C.4" else []))


def _check_preset(experiment: str, cfg) -> None:
    """A preset's name says the paper, dataset, method, QBP and time steps it composes to."""
    name, _, steps = experiment.removesuffix("_qbp").partition("_ts")
    paper, dataset, method = name.split("_", 2)
    method = method.removeprefix(f"{cfg.model.name}_")  # where the name says the model too
    assert (cfg.paper, cfg.dataset.name, cfg.method.name) == (paper, dataset, method)
    assert cfg.qbp == experiment.endswith("_qbp")
    assert cfg.optim.name == PAPER_OPTIMIZER[paper]
    if dataset in ("warpeace", "linux"):  # cross-entropy per character, in nats
        assert cfg.model.name == "lstm" and cfg.dataset.seq_len == int(steps or 100)


# each command composed once for every row it runs (two tests, one per row and one per preset,
# composed most commands twice: a sixth of the inner loop's configuration time)
ROW_COMMANDS = sorted({_command_of(row) for row in published_rows()})


def test_every_preset_is_the_command_of_a_published_row():
    assert sorted({command[0].removeprefix("+experiment=") for command in ROW_COMMANDS}) == PUBLISHED_ROWS


def _firsts(values: list, group: Callable[[Any], str]) -> set:
    """The first of the values of each group (a preset's name begins with its paper or kind)."""
    firsts: dict[str, Any] = {}
    for value in values:
        firsts.setdefault(group(value), value)
    return set(firsts.values())


def _preset_group(name: str) -> str:
    return name.removeprefix("+experiment=").split("_")[0]


@pytest.mark.parametrize(
    "command",
    slow_unless(ROW_COMMANDS, _firsts(ROW_COMMANDS, lambda c: _preset_group(c[0])).__contains__, " ".join),
)
def test_every_published_number_has_a_command_that_runs_its_setup(command):
    """... with the settings its number came from (the authors' code where it departs from the
    paper), as the table's settings column lists them; a preset alone composes to its name's row."""
    cfg = compose_config(*command)
    rows = [row for row in published_rows() if _command_of(row) == command]
    for row in rows:
        assert setup_key(cfg) == row.key
        assert row.settings, "every row names the settings its number came from"
    assert settings_differing(cfg) == []
    if len(command) == 1:
        _check_preset(command[0].removeprefix("+experiment="), cfg)
        row = lookup(setup_key(cfg))  # the preset carries settings; its number is in the table
        assert row is not None and row in rows
        if cfg.dataset.name in ("warpeace", "linux"):
            assert row.metric == "loss" and 1 < row.test_value < 4
        else:
            assert row.metric == "error" and 0 < row.test_value < 1


def test_the_readme_gives_every_published_number_its_command():
    readme = (CONF_DIR.parent / "README.md").read_text()
    row_line = re.compile(r"\| `python -m fewmult\.train (.+?)` \| ([\d.]+) \|")
    listed = {command: float(value) for command, value in row_line.findall(readme)}
    for row in published_rows():
        if lookup(row.key) is row:  # a setup printed twice is listed once, with the earlier number
            assert listed.get(" ".join(_command_of(row))) == row.value, row


def test_the_table_of_published_numbers_is_the_papers():
    rows = published_rows()
    per_section = {s: sum(r.section == s for r in rows) for s in ("C.1", "C.3", "C.4", "C.5", "C.6")}
    assert per_section == {"C.1": 12, "C.3": 21, "C.4": 16, "C.5": 14, "C.6": 16}
    assert lookup(("lin2016", "mnist", "lin2016_mlp", "tc", True, None, None)).value == 1.15
    assert lookup(("hou2017", "cifar10", "hou2017_cnn", "lab", False, None, 128)).test_value == 0.105
    assert lookup(("hou2017", "svhn", "hou2017_cnn_svhn", "lab", False, None, 16)).value == 3.05
    # a setup printed twice takes the earlier table's number; they differ only where the paper does
    twice = [(a, b) for a in rows for b in rows if a.key == b.key and a.section < b.section]
    assert len(twice) == 4 + 4  # Table 2 at K=64 (Table 1), Table 4 at 100 steps (Table 3)
    differing = [(a.method, a.value, b.value) for a, b in twice if a.value != b.value]
    assert differing == [("bwn", 1.312, 1.320)]  # docs/papers.md D.20
    assert lookup(("hou2017", "warpeace", "lstm", "bwn", False, 100, None)).value == 1.312
    # IR-Net's CIFAR-10 rows as its authors' README prints them (accuracy 86.5, 90.8, 90.4, 91.5)
    irnet = {(r.model, r.method): r.value for r in rows if r.section == "G.6"}
    assert irnet == {
        ("resnet20", "irnet"): 13.5,
        ("resnet20", "irnet_1w32a"): 9.2,
        ("vgg_small", "irnet"): 9.6,
        ("resnet18", "irnet"): 8.5,
    }


@pytest.mark.parametrize("sweep", slow_unless(SWEEPS, _firsts(SWEEPS, _preset_group).__contains__))
def test_every_sweep_composes_and_each_of_its_jobs_too(sweep, image_folder_root):
    cfg = compose_config(f"+experiment={sweep}")
    params = cfg.hydra.sweeper.params
    assert params
    first_job = [f"{key}={str(values).split(',')[0]}" for key, values in params.items()]
    job = compose_config(f"+experiment={sweep}", *first_job)
    choices = job.hydra.runtime.choices
    for key, value in (o.split("=") for o in first_job):
        chosen = choices[key] if key in choices else OmegaConf.select(job, key)
        assert str(chosen).lower() == value.lower()
    # the last job passes every check made before data is read (e.g. ReActNet needs residual additions)
    last_job = [f"{key}={str(values).split(',')[-1]}" for key, values in params.items()]
    at = [f"dataset.root={image_folder_root}"] if cfg.dataset.name == "imagenet" else []
    checked_datamodule(compose_config(f"+experiment={sweep}", *last_job, *at))


def test_wandb_sweep_drives_the_cli_with_overrides_the_config_has():
    spec = yaml.safe_load((CONF_DIR.parent / "sweeps" / "wandb_lr_bayes.yaml").read_text())
    assert spec["command"][-1] == "${args_no_hyphens}" and spec["program"] == "fewmult.train"
    assert spec["metric"]["name"] == "best/val_error"
    overrides = [f"{k}={v.get('value', v.get('min'))}" for k, v in spec["parameters"].items()]
    cfg = compose_config(*overrides)  # fails on any key W&B could not pass
    assert cfg.method.name == "lab" and cfg.optim.lr == pytest.approx(0.0001)


def test_wandb_timestep_grid_is_table_4():
    spec = yaml.safe_load((CONF_DIR.parent / "sweeps" / "wandb_hou2017_timesteps.yaml").read_text())
    assert spec["command"][-1] == "${args_no_hyphens}" and spec["metric"]["name"] == "best/val_loss"
    grid = {k: v.get("values", [v.get("value")]) for k, v in spec["parameters"].items()}
    assert grid["dataset.seq_len"] == [10, 50, 100, 150] and grid["method"] == ["fp", "bc_det", "bwn", "lab"]
    for steps in grid["dataset.seq_len"]:  # every run W&B would start composes
        cfg = compose_config(
            *(f"{k}={v[0]}" for k, v in grid.items() if k != "dataset.seq_len"), f"dataset.seq_len={steps}"
        )
        assert cfg.dataset.name == "warpeace" and cfg.model.name == "lstm" and cfg.dataset.seq_len == steps


@pytest.mark.parametrize(
    "overrides, arch_name, optimizer, batch, epochs",
    [
        ([], "lin2016_mlp", "sgd", 200, 50),
        (["dataset=mnist"], "lin2016_mlp", "sgd", 200, 1000),
        (["dataset=cifar10"], "lin2016_cnn", "sgd", 100, 300),
        (["dataset=svhn"], "lin2016_cnn", "sgd", 100, 60),
        (["paper=hou2017", "dataset=mnist"], "hou2017_mlp", "adam", 100, 50),
        (["paper=hou2017", "dataset=cifar10"], "hou2017_cnn", "adam", 50, 200),
        (["paper=hou2017", "dataset=svhn"], "hou2017_cnn_svhn", "adam", 50, 50),
        (["dataset=svhn", "model=mlp"], "mlp", "sgd", 100, 60),
        (["paper=hou2017", "dataset=svhn", "optim=sgd"], "hou2017_cnn_svhn", "sgd", 50, 50),
        (["dataset=warpeace", "method=lab"], "lstm", "adam", 100, 200),
        # Lin et al.'s method on Hou et al.'s LSTM setup (without paper=hou2017: refused, see below)
        (["dataset=linux", "method=bc_stoch", "paper=hou2017"], "lstm", "adam", 100, 200),
        (["dataset=text"], "lstm", "adam", 100, 10),
    ],
)
def test_paper_and_dataset_select_the_setup(overrides, arch_name, optimizer, batch, epochs):
    cfg = compose_config(*overrides)
    assert cfg.model.name == arch_name
    assert cfg.optim.name == optimizer
    assert cfg.dataset.batch_size == batch
    assert cfg.trainer.max_epochs == epochs


@pytest.fixture(scope="module")
def image_folder_root(tmp_path_factory) -> str:
    """A tiny ImageNet-layout tree, so that dataset=imagenet instantiates (it checks its folders)."""
    root = tmp_path_factory.mktemp("image_folder")
    fakedata.write_image_folder(root, classes=2, train_per_class=1, val_per_class=1)
    return str(root)


@pytest.mark.parametrize("paper", options("paper"))
@pytest.mark.parametrize("dataset", grid_datasets(("mnist", "cifar10", "text", "imagenet")))
def test_a_run_is_recorded_under_the_paper_whose_recipe_runs(paper, dataset, image_folder_root):
    at = [f"dataset.root={image_folder_root}"] if dataset == "imagenet" else []
    cfg = compose_config(f"paper={paper}", f"dataset={dataset}", *at)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert not OmegaConf.missing_keys(task)  # the recipe fills every ??? the groups leave to it
    if cfg.recipe.paper == paper:
        check_config(cfg)
        builds_and_steps(compose_config(f"paper={paper}", f"dataset={dataset}", "method=bnn", *at))
        return
    # only Hou et al. have an LSTM; only Bi-Real and ReActNet an ImageNet recipe (Bi-Real's is offered)
    fix = "liu2018" if dataset == "imagenet" else "hou2017"
    assert (dataset == "imagenet" and paper not in ("liu2018", "liu2020")) or (
        paper != "hou2017" and dataset in ("text", "warpeace", "linux")
    )
    with pytest.raises(UserError, match=rf"paper={paper} has no setup for dataset=.*Add paper={fix}"):
        check_config(cfg)


def learning_rates(*overrides: str) -> list[float]:
    """The learning rate of every epoch of a composed setup, from its own optimizer and schedule."""
    cfg = compose_config(*overrides)
    optimizer = instantiate(cfg.optim.optimizer)([torch.zeros(1, requires_grad=True)])
    schedule = instantiate(cfg.schedule)(optimizer)
    lrs = []
    for _ in range(cfg.trainer.max_epochs + 1):  # the last one: after the final epoch
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_schedules_follow_the_papers():
    lin = learning_rates("dataset=cifar10")
    assert len(lin) == 301 and lin[-1] == pytest.approx(0.001, rel=1e-6)  # 0.3 -> 0.001 over 300 epochs

    hou = learning_rates("paper=hou2017", "dataset=svhn")  # x0.1 at epochs 15 and 25
    assert (hou[14], hou[15], hou[25]) == (pytest.approx(1e-3), pytest.approx(1e-4), pytest.approx(1e-5))

    cifar = learning_rates("paper=hou2017", "dataset=cifar10")  # x0.5 every 15 epochs, 200 epochs
    assert cifar[:200] == [pytest.approx(0.03 * 0.5 ** (epoch // 15)) for epoch in range(200)]

    lstm = learning_rates("dataset=warpeace", "method=lab")
    # 0.002, times 0.98 after every epoch past the 10th (counted from 1): epoch 12 is the first lower
    assert lstm[:11] == [pytest.approx(0.002)] * 11 and lstm[11] == pytest.approx(0.002 * 0.98)
    assert lstm[199] == pytest.approx(0.002 * 0.98**189)


def test_cosine_and_linear_decay_reach_zero_after_their_warm_up():
    """IR-Net's cosine (``CosineAnnealingLR(T_max=epochs)``), the linear decay and ReActNet's shift by
    one (its code steps the schedule before every epoch), each through ``schedule=`` and the recipe."""
    common = ("dataset=synthetic", "optim.lr=0.1", "trainer.max_epochs=10")
    cosine = learning_rates(*common, "schedule=cosine")
    assert cosine == [pytest.approx(0.05 * (1 + math.cos(math.pi * e / 10)), abs=1e-12) for e in range(11)]
    torch_cosine = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch_cosine, T_max=10, eta_min=0)
    for lr in cosine[1:]:
        torch_cosine.step(), reference.step()
        assert torch_cosine.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
    warm = learning_rates(*common, "schedule=cosine", "+recipe.warmup_epochs=3")
    assert warm[:4] == [pytest.approx(0.1 * k / 4) for k in (1, 2, 3)] + [pytest.approx(0.1)]
    assert warm[-1] == pytest.approx(0.0, abs=1e-12) and warm[4] > warm[5] > warm[9]
    linear = learning_rates(*common, "schedule=linear_to_zero")
    assert linear == [pytest.approx(0.1 * (1 - e / 10), abs=1e-12) for e in range(11)]
    shifted = learning_rates(*common, "schedule=linear_to_zero", "+recipe.step_before_epoch=true")
    assert shifted[:10] == [pytest.approx(0.1 * (1 - (e + 1) / 10), abs=1e-12) for e in range(10)]
    with pytest.raises(UserError, match=r"recipe\.warmup_epochs must be in \[0, max_epochs\)"):
        schedules.cosine(torch_cosine, epochs=5, warmup=5)


@pytest.mark.parametrize("recipe", [{"gamma": 0.5}, {"gamma": 0.5, "milestones": [3], "every": 5}])
def test_the_step_schedule_needs_milestones_or_a_period(recipe):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(UserError, match=r"exactly one of recipe\.milestones"):
        schedules.step_decay(optimizer, **recipe)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "svhn", "text", "warpeace", "linux"])
def test_data_root_defaults_to_fewmult_data(monkeypatch, tmp_path, dataset):
    monkeypatch.setenv("FEWMULT_DATA", str(tmp_path / "somewhere"))
    assert compose_config(f"dataset={dataset}").dataset.root == str(tmp_path / "somewhere")
    monkeypatch.delenv("FEWMULT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compose_config(f"dataset={dataset}").dataset.root == str(tmp_path / "home/.cache/fewmult/data")


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint.every_steps=0", "checkpoint.every_steps must be a positive integer"),
        ("checkpoint.every_steps=2.5", "checkpoint.every_steps must be a positive integer"),
        ("checkpoint.every_minutes=-1", "checkpoint.every_minutes must be a positive number"),
    ],
)
def test_a_bad_checkpoint_interval_is_refused_with_its_key(override, message):
    with pytest.raises(UserError, match=message):
        check_config(compose_config(override))
