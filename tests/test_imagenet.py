"""dataset=imagenet: the ImageFolder layout and its messages, the decoding against torchvision's
transforms, the stream's order, sharding and resumption, and training through the real entry point
on a tiny tree of real JPEG files."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fewmult.data.imagenet import ImageFolderData
from fewmult.data.imagenet.decode import draw_key, eval_image, lighting, random_resized_box, train_image
from fewmult.data.imagenet.on_device import EncodedBatch, check_decoder, collate, decode_batch
from fewmult.data.imagenet.stream import Decoding, FolderImages, ImageStream
from fewmult.errors import UserError
from tests import fakedata
from tests.conftest import only_run_dir

TINY = ["dataset.image_size=16", "dataset.resize=18", "dataset.val_size=6", "dataset.eval_batch_size=5"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """6 classes, 6 training and 2 validation JPEGs each, 40-95 pixels wide."""
    return fakedata.write_image_folder(tmp_path_factory.mktemp("inet"))


def data(root, **kwargs) -> ImageFolderData:
    args = {"name": "imagenet", "root": str(root), "folder": "imagenet", "batch_size": 4, "val_size": 6}
    return ImageFolderData(**{**args, **kwargs, "image_size": 16, "resize": 18})


def test_the_splits_hold_every_file_once_and_the_held_out_images_are_the_same_for_every_seed(tree):
    splits = data(tree.parent, seed=0).load()
    assert splits.sizes() == {"train": 30, "val": 6, "test": 12} and splits.num_classes == 6
    files = [path for path, _ in splits.train + splits.val]
    assert len(set(files)) == 36
    assert data(tree.parent, seed=5).load().val == splits.val  # a fixed draw, not the run's seed
    assert {label for _, label in splits.test} == set(range(6))


@pytest.mark.parametrize(
    "damage, says",
    [
        ("no_tree", "no folder"),
        ("no_val", "has no 'val' folder"),
        ("flat_val", "holds 12 images directly, not in class folders"),
        ("other_classes", "are not those of"),
        ("empty_class", "needs images"),
    ],
)
def test_a_malformed_tree_is_named_with_the_layout_and_the_fix(tmp_path, damage, says):
    folder = fakedata.write_image_folder(tmp_path, flat_val=damage == "flat_val")
    if damage == "no_tree":
        folder = folder.rename(tmp_path / "elsewhere")
    elif damage == "no_val":
        for f in sorted((folder / "val").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (folder / "val").rmdir()
    elif damage == "other_classes":
        (folder / "val" / "n00000005").rename(folder / "val" / "n99999999")
    elif damage == "empty_class":
        for f in (folder / "val" / "n00000001").iterdir():
            f.unlink()
    with pytest.raises(UserError, match=says) as caught:
        data(tmp_path).load()
    assert "imagenet" in str(caught.value)


def test_a_damaged_jpeg_is_named_by_the_training_process(tmp_path):
    folder = fakedata.write_image_folder(tmp_path)
    bad = sorted((folder / "train" / "n00000002").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    module = data(tmp_path, workers=1)
    stream = module.train_dataloader()
    with pytest.raises(UserError, match=rf"cannot decode {bad}.*replace it with a good copy") as caught:
        list(stream)
    assert "Traceback" not in str(caught.value)


def test_crop_boxes_follow_torchvisions_distribution_and_flip_half_the_time():
    """4,000 boxes of a 500 x 375 image against 4,000 from torchvision's RandomResizedCrop.get_params:
    the same bounds, and means of area and aspect ratio within 5 standard deviations (sd of a
    difference of means: 0.006 for the area, 0.004 for the log ratio); flips 1/2 within 5 sd (0.008)."""
    image = Image.new("RGB", (500, 375))
    torch.manual_seed(0)
    theirs = [v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    ours, flips = [], 0
    for index in range(4000):
        rng = random.Random(draw_key(0, 0, index))
        left, top, w, h = random_resized_box(500, 375, rng)
        assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
        ours.append((top, left, h, w))
        flips += rng.random() < 0.5

    def stats(boxes):
        areas = [h * w / (500 * 375) for _, _, h, w in boxes]
        logs = [math.log(w / h) for _, _, h, w in boxes]
        return min(areas), max(areas), sum(areas) / len(areas), min(logs), max(logs), sum(logs) / len(logs)

    a, b = stats(ours), stats(theirs)
    assert a[0] >= 0.075 and a[1] <= 1 and a[3] >= math.log(3 / 4) - 0.02 and a[4] <= math.log(4 / 3) + 0.02
    assert abs(a[2] - b[2]) < 0.03 and abs(a[5] - b[5]) < 0.02
    assert abs(flips / 4000 - 0.5) < 0.04


def test_decoding_without_draft_gives_torchvisions_pixels(tree):
    """Evaluation: Resize(256) + CenterCrop(224) in miniature; training: the same box through
    torchvision's resized_crop, mirrored when the draw says so."""
    path = str(sorted((tree / "val" / "n00000003").iterdir())[0])
    image = Image.open(path).convert("RGB")
    expected = v2.CenterCrop(16)(v2.Resize(18)(image))
    assert (
        eval_image(path, 16, 18, draft=False)
        == torch.tensor(list(expected.getdata())).numpy().reshape(16, 16, 3)
    ).all()
    flipped = 0
    for index in range(20):
        key = draw_key(0, 3, index)
        rng = random.Random(key)
        left, top, w, h = random_resized_box(*image.size, rng)
        crop = v2.functional.resized_crop(image, top, left, h, w, [16, 16])
        if rng.random() < 0.5:
            crop, flipped = v2.functional.horizontal_flip(crop), flipped + 1
        got = train_image(path, 16, key, draft=False)
        assert (got == torch.tensor(list(crop.getdata())).numpy().reshape(16, 16, 3)).all()
    assert 0 < flipped < 20


def test_lighting_noise_is_bi_reals_shift_along_the_principal_components_truncated_to_uint8():
    """One component at a time, exaggerated so that the shift is whole pixels: component 0 (the
    brightness axis, eigenvalue 0.2175) times 1000 shifts R, G, B by 1000 * 0.2175 * (-0.5675,
    -0.5808, -0.5836) = (-123.4, -126.3, -126.9); added to uint8 values, clipped and cast back
    (truncated toward zero) as Bi-Real's ``Lighting`` does."""
    pixels = np.array([[[200, 100, 5], [0, 255, 127]]], dtype=np.uint8)
    shifted = lighting(pixels, np.array([1000.0, 0, 0]))
    assert shifted.tolist() == [[[76, 0, 0], [0, 128, 0]]]
    shifted = lighting(pixels, np.array([0, 0, -1000.0]))  # -1000 * 0.0045 * (0.4009, -0.8140, 0.4203)
    assert shifted.tolist() == [[[198, 103, 3], [0, 255, 125]]]  # (-1.80, +3.66, -1.89), clipped at 0, 255


def test_lighting_is_drawn_between_the_crop_and_the_flip_and_at_std_0_1_moves_a_channel_by_one(tree):
    """``dataset.lighting=0.1`` (Bi-Real's code): three normal draws per image after the crop's, before
    the flip's, from the image's own key. At 0.1 the shift stays below one unit of 0-255, so the cast
    to uint8 lowers a channel by 1 where its shift is negative (about half the time) and leaves it
    otherwise (pixels at 0 stay)."""
    path = str(sorted((tree / "train" / "n00000001").iterdir())[0])
    image = Image.open(path).convert("RGB")
    lowered = 0
    for index in range(40):
        key = draw_key(0, 1, index)
        rng = random.Random(key)
        left, top, w, h = random_resized_box(*image.size, rng)
        crop = v2.functional.resized_crop(image, top, left, h, w, [16, 16])
        alpha = np.array([rng.gauss(0, 0.1) for _ in range(3)])
        if rng.random() < 0.5:
            crop = v2.functional.horizontal_flip(crop)
        plain = np.asarray(crop)
        got = train_image(path, 16, key, draft=False, lighting_std=0.1)
        assert np.array_equal(got, lighting(plain, alpha))
        change = got.astype(int) - plain
        assert set(np.unique(change)) <= {-1, 0}
        per_channel = [set(np.unique(change[..., c][plain[..., c] > 0])) for c in range(3)]
        assert all(len(moved) == 1 for moved in per_channel)  # a channel moves as a whole
        lowered += sum(moved == {-1} for moved in per_channel)
    assert 30 <= lowered <= 90  # of 120 channels; P(negative shift) = 1/2, sd 5.5
    with pytest.raises(UserError, match=r"dataset\.lighting must be a number >= 0"):
        data(tree.parent, lighting=-0.1)


def test_draft_decoding_is_close_to_the_full_decode(tree):
    path = str(max((tree / "train").rglob("*.JPEG"), key=lambda p: Image.open(p).size[0]))
    full = torch.tensor(eval_image(path, 16, 18, draft=False)).float()
    fast = torch.tensor(eval_image(path, 16, 18, draft=True)).float()
    assert (full - fast).abs().mean() < 12  # both low-pass reductions of the same image (0-255 scale)


def stream(tree, rank=0, world=1, train=True, workers=0, batch=4) -> ImageStream:
    splits = data(tree.parent).load()
    images = FolderImages(
        splits.train if train else splits.test, Decoding(16, 18, train, 0, True), "imagenet"
    )
    return ImageStream(
        images, batch, shuffle=train, drop_last=train, seed=0, rank=rank, world_size=world, workers=workers
    )


def labels_and_pixels(s: ImageStream, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    s.set_epoch(epoch) if hasattr(s, "set_epoch") else s.sampler.set_epoch(epoch)
    return list(s)


def test_ranks_share_an_epoch_without_overlap_and_evaluation_sees_every_image_once(tree):
    """Training: 30 images on 2 ranks of batch 4 = 3 batches each, 24 distinct images; evaluation:
    12 test images as 6 + 6 with no padding."""
    whole = stream(tree, batch=1)
    whole.sampler.set_epoch(1)
    one = torch.cat([x for x, _ in whole])
    seen = []
    for rank in range(2):
        s = stream(tree, rank=rank, world=2, batch=4)
        s.sampler.set_epoch(1)
        batches = list(s)
        assert len(batches) == len(s) == 3
        seen += [x for batch, _ in batches for x in batch]
    # every image a rank trained on is the one the single process trained on at that place of the order
    assert sum(any(torch.equal(x, y) for y in one) for x in seen) == 24
    counts = [sum(len(y) for _, y in stream(tree, rank=r, world=2, train=False, batch=5)) for r in range(2)]
    assert counts == [6, 6]


def test_workers_decode_what_the_training_process_would(tree):
    first = [x for x, _ in labels_and_pixels(stream(tree, workers=0), 2)]
    second = [x for x, _ in labels_and_pixels(stream(tree, workers=2), 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], labels_and_pixels(stream(tree), 3)[0][0])  # a new epoch, new crops


def test_a_stream_resumed_inside_an_epoch_gives_the_batches_not_yet_trained(tree):
    uninterrupted = labels_and_pixels(stream(tree), 4)
    s = stream(tree)
    s.sampler.set_epoch(4)
    it = iter(s)
    for _ in range(3):
        next(it)
    state = s.state_dict()
    assert state == {"epoch": 4, "batches": 3}
    resumed = stream(tree)
    resumed.load_state_dict(state)
    rest = labels_and_pixels(resumed, 4)
    assert len(rest) == len(uninterrupted) - 3
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(rest, uninterrupted[3:], strict=True)
    )
    assert len(labels_and_pixels(resumed, 5)) == len(uninterrupted)  # the next epoch starts at its start


def _encoded_and_worker_batches(root, split: str, device: torch.device, **kwargs):
    """The first batch of ``split`` decoded on ``device`` (``dataset.decode=device``), its files, and
    the same batch decoded by the workers."""
    args = {"batch_size": 30, "workers": 0, "jpeg_draft": False, "lighting": 0.1, **kwargs}
    on_device, in_workers = data(root, decode="device", **args), data(root, decode="workers", **args)
    batch = next(iter(getattr(on_device, f"{split}_dataloader")()))
    assert isinstance(batch, EncodedBatch)
    decoded = on_device.transfer_batch_to_device(batch, device, 0)
    return decoded, batch.paths, next(iter(getattr(in_workers, f"{split}_dataloader")()))


def test_decoding_on_the_device_crops_shifts_and_mirrors_as_the_workers_do(tmp_path):
    """dataset.decode=device on the CPU (the decoder's CPU path; a GPU runs the same code with
    nvJPEG): every image of the batch cropped, shifted and mirrored as the workers' full decode does,
    pixels within one grey level. A CMYK JPEG and a PNG named .JPEG are decoded by the worker, so
    those two are exactly the workers' pixels. A JPEG damaged after its header is named."""
    fakedata.write_image_folder(tmp_path)
    cmyk, png, damaged = (path for path, _ in data(tmp_path).load().train[:3])  # all in the training batch
    Image.open(cmyk).convert("CMYK").save(cmyk, format="JPEG")
    Image.open(png).save(png, format="PNG")
    cpu = torch.device("cpu")
    batches = {split: _encoded_and_worker_batches(tmp_path, split, cpu) for split in ("train", "test")}
    for (x, y), _, (expected, labels) in batches.values():
        assert x.dtype == torch.uint8 and x.shape == expected.shape and torch.equal(y, labels)
        difference = (x.int() - expected.int()).abs()
        assert int(difference.max()) <= 1 and float(difference.float().mean()) < 0.05
    (x, _), paths, (expected, _) = batches["train"]
    for path in (cmyk, png):
        assert torch.equal(x[paths.index(path)], expected[paths.index(path)])
    with open(damaged, "r+b") as file:
        file.truncate(file.seek(0, 2) // 2)
    with pytest.raises(UserError, match=rf"cannot decode {damaged} on cpu.*replace it with a good copy"):
        _encoded_and_worker_batches(tmp_path, "train", cpu)
    with pytest.raises(UserError, match=r"dataset\.decode must be workers .* or device .*, got 'gpu'"):
        data(tmp_path, decode="gpu")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="nvJPEG decodes here: the refusal needs a machine without"
)
def test_a_device_that_cannot_decode_jpegs_is_named_with_the_fix_before_training():
    check_decoder(torch.device("cpu"))
    with pytest.raises(UserError, match=r"cannot be decoded on cuda here .*dataset\.decode=workers"):
        check_decoder(torch.device("cuda"))  # this torchvision has nvJPEG, but the machine no GPU


def test_a_batch_the_workers_decoded_whole_passes_the_device_unchanged():
    """Every image a CMYK JPEG or a PNG: nothing left to decode on the device."""
    pixels = [torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8) for _ in range(3)]
    batch = collate([(p, 1, f"{i}.JPEG") for i, p in enumerate(pixels)], train=True, size=16)
    x, y = decode_batch(batch, torch.device("cpu"))
    assert torch.equal(x, torch.stack(pixels)) and y.tolist() == [1, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: nvJPEG decodes on a GPU")
def test_nvjpeg_decodes_as_the_cpu_does(tree):
    """The GPU's batch (nvJPEG, torchvision's resize on the device) against the workers' pixels."""
    for split in ("train", "test"):
        (x, y), _, (expected, labels) = _encoded_and_worker_batches(tree.parent, split, torch.device("cuda"))
        assert x.device.type == "cuda" and torch.equal(y.cpu(), labels)
        difference = (x.cpu().int() - expected.int()).abs()
        assert float(difference.float().mean()) < 1.0, "nvJPEG's inverse DCT may round otherwise, not more"


def test_batches_are_normalized_on_the_device_as_float_nchw(tree):
    module = data(tree.parent)
    x, y = next(iter(module.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 16, 16, 3)
    z, _ = module.on_after_batch_transfer((x, y), 0)
    mean = torch.tensor(module.mean).view(1, 3, 1, 1)
    std = torch.tensor(module.std).view(1, 3, 1, 1)
    assert z.shape == (4, 3, 16, 16) and z.dtype == torch.float32 and z.is_contiguous()
    assert torch.allclose(z, (x.permute(0, 3, 1, 2).float() / 255 - mean) / std, atol=1e-5)


def test_imagenet_trains_through_the_entry_point_with_top5_and_the_data_wait(run_cli, tree, tmp_path):
    """With dataset.decode=device (the workers' decoding runs through the entry point in the DDP and
    kill tests): a worker reads the files, the training process decodes them, the export decodes
    the test images as the run evaluated them."""
    proc = run_cli(
        "dataset=imagenet",
        "paper=liu2018",
        "method=bireal",
        f"dataset.root={tree.parent}",
        *TINY,
        "dataset.decode=device",
        "dataset.batch_size=8",
        "trainer.max_epochs=2",
        "logger=csv",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path / "outputs")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["train_samples"] == 30
    assert 0 <= results["test_top5_error"] <= results["test_error"] <= 1
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"val/top5_error", "test/top5_error", "train/data_wait"} <= set(header)
    column = {name: [float(r.split(",")[header.index(name)]) for r in rows[1:]] for name in header}
    # the rate each epoch trained at: Bi-Real's schedule stepped before every epoch, 1e-3 (1 - (e + 1) / 2)
    assert column["lr"] == [0.0005, 0.0]
    waits = column["train/data_wait"]
    assert all(0 <= w < 1 for w in waits) and not any(math.isnan(w) for w in waits)
    # the export is checked on the first --examples images of val/, decoded as the run evaluated them
    export = run_cli(str(run), "--examples", "7", module="fewmult.export")
    assert export.returncode == 0, export.stderr[-3000:]
    summary = json.loads((run / "export" / "export.json").read_text())
    assert (summary["test_examples"], summary["test_split_examples"]) == (7, 12)
    assert summary["predictions_identical"] == summary["runtime_predictions_identical"] == 7
    assert (
        "7 of 7 test predictions identical" in export.stdout and "(on the first 7 of its 12)" in export.stdout
    )


def test_a_flat_validation_folder_is_refused_before_a_run_folder_is_made(run_cli, tmp_path):
    fakedata.write_image_folder(tmp_path / "data", flat_val=True)
    proc = run_cli("dataset=imagenet", "paper=liu2018", f"dataset.root={tmp_path / 'data'}", *TINY)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fewmult: error: imagenet:" in proc.stderr and "valprep.sh" in proc.stderr
    assert not list((tmp_path / "outputs").rglob("*")) if (tmp_path / "outputs").exists() else True


# No batch norm (each rank would normalize over its own half batch); 7 held-out validation images,
# so the two ranks evaluate 4 and 3; a worker per rank decodes
DDP_IMAGENET = [
    "dataset=imagenet",
    "paper=liu2018",
    "model=mlp",
    "model.arch=64FC",
    "model.batch_norm=false",
    "dataset.image_size=16",
    "dataset.resize=18",
    "dataset.val_size=7",
    "dataset.eval_batch_size=2",
    "dataset.workers=1",
    "trainer.max_epochs=2",
    "logger=csv",
]


@pytest.mark.slow
def test_two_ddp_processes_train_and_evaluate_as_one_with_their_batches_together(run_cli, tree, tmp_path):
    """trainer=ddp on 2 CPU processes (gloo) with batches of 4 against one process with batches of 8:
    the same images in every step (each rank takes every other image of the epoch's order, with the
    same crops), the gradients averaged, and every validation and test image scored once."""
    root = f"dataset.root={tree.parent}"
    ddp = run_cli(
        *DDP_IMAGENET,
        root,
        "dataset.batch_size=4",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "hydra.run.dir=ddp",
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = run_cli(
        *DDP_IMAGENET, root, "dataset.batch_size=8", "trainer=cpu", "hydra.run.dir=one", timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    rows = {name: list(csv.DictReader((tmp_path / name / "metrics.csv").open())) for name in ("ddp", "one")}
    assert len(rows["ddp"]) == len(rows["one"]) == 2
    for d, o in zip(rows["ddp"], rows["one"], strict=True):
        for key in ("train/loss", "val/loss", "test/loss", "val/error", "test/error", "test/top5_error"):
            assert float(d[key]) == pytest.approx(float(o[key]), rel=1e-4, abs=1e-6), key


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A state dict file of torchvision's resnet18 for the tiny tree's 6 classes (random weights: no
    download here; ImageNet's would have 1000)."""
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=6).state_dict(), path)
    return path


def test_a_torchvision_teacher_needs_its_weights_file_and_imagenet_inputs(tree, resnet18_weights, tmp_path):
    from fewmult.build import checked_datamodule
    from fewmult.config import compose_config
    from fewmult.stages.teacher import load_teacher

    base = ["dataset=imagenet", "paper=liu2020", "method=reactnet", f"dataset.root={tree.parent}", *TINY]
    teacher = load_teacher(
        compose_config(*base, "teacher=torchvision:resnet18", f"teacher_weights={resnet18_weights}"),
        "images",
        6,
    )
    x = torch.randn(2, 3, 16, 16)
    assert teacher.divergence(x, torch.randn(2, 6)).item() > 0
    with pytest.raises(UserError, match=r"needs teacher_weights=FILE.*downloads nothing"):
        checked_datamodule(compose_config(*base, "teacher=torchvision:resnet18"))
    with pytest.raises(UserError, match="are not the weights of torchvision's resnet18 with 1000 classes"):
        load_teacher(
            compose_config(*base, "teacher=torchvision:resnet18", f"teacher_weights={resnet18_weights}"),
            "images",
        )
    with pytest.raises(UserError, match="are not the weights of torchvision's resnet34"):
        load_teacher(
            compose_config(*base, "teacher=torchvision:resnet34", f"teacher_weights={resnet18_weights}"),
            "images",
        )
    with pytest.raises(UserError, match="has no classification model 'resnet7'"):
        load_teacher(
            compose_config(*base, "teacher=torchvision:resnet7", f"teacher_weights={resnet18_weights}"),
            "images",
        )
    cifar = ["dataset=synthetic", "paper=liu2020", "method=reactnet", "model=resnet20"]
    with pytest.raises(UserError, match="is an ImageNet network"):
        load_teacher(
            compose_config(*cifar, "teacher=torchvision:resnet18", f"teacher_weights={resnet18_weights}"),
            "images",
        )


@pytest.mark.slow
def test_imagenet_distills_from_a_torchvision_teacher_through_the_entry_point(
    run_cli, tree, resnet18_weights, tmp_path
):
    proc = run_cli(
        "dataset=imagenet",
        "paper=liu2020",
        "method=reactnet",
        "model=resnet20",
        f"dataset.root={tree.parent}",
        *TINY,
        "dataset.batch_size=8",
        "trainer.max_epochs=2",
        "teacher=torchvision:resnet18",
        f"teacher_weights={resnet18_weights}",
        "logger=csv",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "taught by torchvision:resnet18" in proc.stdout
    run = only_run_dir(tmp_path / "outputs")
    results = json.loads((run / "results.json").read_text())
    assert (results["teacher"], results["teacher_weights"]) == ("torchvision:resnet18", str(resnet18_weights))
    distill = [float(r["train/distill"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert len(distill) == 2 and all(d > 0 for d in distill)


def test_the_file_list_is_listed_once_and_again_when_a_class_folder_changes(tmp_path, monkeypatch, capsys):
    from fewmult.data.imagenet import layout

    folder = fakedata.write_image_folder(tmp_path)
    first = data(tmp_path).load()
    assert "computing the file list once into" in capsys.readouterr().out

    def no_listing(*args, **kwargs):
        raise AssertionError("listed again")

    with monkeypatch.context() as m:  # unchanged folders: the files come from the cache
        m.setattr(layout, "scan_split", no_listing)
        assert data(tmp_path).load() == first
    added = folder / "train" / "n00000004" / "added.JPEG"
    added.write_bytes(next((folder / "train" / "n00000004").iterdir()).read_bytes())
    again = data(tmp_path).load()
    assert str(added) in [path for path, _ in again.train + again.val]
    assert again.sizes()["train"] + again.sizes()["val"] == 37

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(layout, "cached", read_only)  # a data folder the job may not write: said, listed
    assert data(tmp_path).load() == again
    assert "cannot keep the file list" in capsys.readouterr().err
