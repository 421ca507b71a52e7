"""Finding the images of an ImageFolder tree (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``) and
saying exactly what is wrong with one that does not have that layout.

ImageNet is never downloaded (its licence asks every user to fetch it from image-net.org), so
every message says how to get from what is on disk to the expected layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

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
