"""Finding the images of an ImageFolder tree (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``) and
saying exactly what is wrong with one that does not have that layout.

ImageNet is never downloaded (its licence asks every user to fetch it from image-net.org), so
every message says how to get from what is on disk to the expected layout.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from fewmult.data.cache import cache_path, cached
from fewmult.errors import UserError

LAYOUT = (
    "<folder>/train/<class>/*.JPEG and <folder>/val/<class>/*.JPEG (one folder per class, e.g. n01440764)"
)
HOW_TO_GET = (
    "ImageNet is never downloaded: get ILSVRC2012 (train and validation images) from image-net.org, "
    "extract the training archive's per-class archives into train/<wnid>/, and sort the 50,000 "
    "validation images into val/<wnid>/ by the devkit's ground truth (the widely used valprep.sh "
    "does this)."
)


@dataclass(frozen=True)
class FolderSplit:
    """One split of an image folder: files and class indices (classes sorted by folder name)."""

    samples: list[tuple[str, int]]
    classes: list[str]


def _loose_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def class_folders(folder: Path, split: str, dataset: str) -> list[str]:
    """The class folder names of ``folder/split``, after checking it has the layout."""
    where = folder / split
    if not folder.is_dir():
        raise UserError(
            f"{dataset}: no folder {folder}. Expected {LAYOUT}. {HOW_TO_GET} Then point dataset.root "
            f"(or FEWMULT_DATA) at the folder that holds '{folder.name}', or dataset.folder at it."
        )
    if not where.is_dir():
        raise UserError(f"{dataset}: {folder} has no '{split}' folder. Expected {LAYOUT}. {HOW_TO_GET}")
    classes, _ = find_classes(where) if any(p.is_dir() for p in where.iterdir()) else ([], {})
    if not classes:
        loose = _loose_images(where)
        if loose:
            raise UserError(
                f"{dataset}: {where} holds {loose} images directly, not in class folders: the validation "
                f"archive extracts flat. Sort them into {where}/<wnid>/ by the ILSVRC2012 devkit's ground "
                "truth (e.g. valprep.sh), then run again."
            )
        raise UserError(f"{dataset}: {where} has no class folders. Expected {LAYOUT}. {HOW_TO_GET}")
    return classes


def scan_split(folder: Path, split: str, dataset: str, classes: list[str] | None = None) -> FolderSplit:
    """The images of ``folder/split``; with ``classes`` (the training split's), its class folders
    must be the same ones, so that a label means the same class in every split."""
    found = class_folders(folder, split, dataset)
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise UserError(
            f"{dataset}: the class folders of {folder / split} are not those of {folder / 'train'} "
            f"(missing: {', '.join(missing[:5]) or 'none'}{' ...' if len(missing) > 5 else ''}; extra: "
            f"{', '.join(extra[:5]) or 'none'}{' ...' if len(extra) > 5 else ''}). Both need one folder per "
            "class with the same names."
        )
    index = {name: i for i, name in enumerate(found)}
    try:
        samples = make_dataset(folder / split, index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:  # torchvision: a class folder without images
        raise UserError(f"{dataset}: {exc} Every class folder of {folder / split} needs images.") from exc
    return FolderSplit(samples=samples, classes=found)


def _listing_key(where: Path, classes: list[str]) -> list[tuple[str, int]]:
    """What the file list depends on: every class folder's name and modification time (a file added
    to or removed from a folder changes its time), one ``stat`` per class instead of a listing of
    every file."""
    return [(name, os.stat(where / name).st_mtime_ns) for name in classes]


def indexed_split(folder: Path, split: str, dataset: str, classes: list[str] | None = None) -> FolderSplit:
    """:func:`scan_split` through a cache of the file list in ``<folder's parent>/fewmult-cache/``.

    Listing ImageNet's 1.28 M training files takes minutes on a network file system, and every
    launch, rank and sweep job would do it; the cache is keyed by the class folders' modification
    times, so a changed folder is listed again (on a file system that keeps whole seconds, a change
    in the second the list was made can go unseen: delete the cache file). Where the cache cannot be
    written (a read-only data folder) the folder is listed on every launch, and a line says so.
    """
    found = class_folders(folder, split, dataset)
    if classes is not None and found != classes:
        scan_split(folder, split, dataset, classes)  # says how the class folders differ
    key = {"dataset": dataset, "tree": str(folder / split), "listing": _listing_key(folder / split, found)}
    path = cache_path(folder.parent, f"{dataset}-files-{split}", key)

    def listed() -> dict[str, torch.Tensor]:
        scanned = scan_split(folder, split, dataset, classes)
        names = "\n".join(os.path.relpath(p, folder / split) for p, _ in scanned.samples).encode()
        return {
            "names": torch.frombuffer(bytearray(names), dtype=torch.uint8),
            "labels": torch.tensor([label for _, label in scanned.samples], dtype=torch.int64),
        }

    try:
        stored = cached(path, listed, what="the file list")
    except OSError as exc:
        print(
            f"{dataset}: cannot keep the file list in {path.parent} ({exc}); listing {folder / split} "
            "on every launch",
            file=sys.stderr,
            flush=True,
        )
        stored = listed()
    names = bytes(stored["names"].numpy()).decode().split("\n") if len(stored["names"]) else []
    samples = [
        (str(folder / split / n), int(c)) for n, c in zip(names, stored["labels"].tolist(), strict=True)
    ]
    return FolderSplit(samples=samples, classes=found)
