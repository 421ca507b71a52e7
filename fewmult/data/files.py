"""Finding, downloading and verifying dataset files, with messages that say what to do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from torchvision.datasets.utils import check_integrity

from fewmult.errors import UserError

T = TypeVar("T")


def resolve_root(root: str | Path) -> Path:
    return Path(root).expanduser().resolve()


def missing_files(folder: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def verify_md5(folder: Path, files_md5: Sequence[tuple[str, str]], dataset: str) -> None:
    """Name the first file whose checksum is wrong (a partial download or a damaged copy)."""
    for name, md5 in files_md5:
        if not check_integrity(str(folder / name), md5):
            raise UserError(
                f"{dataset}: the file {folder / name} is corrupt (its MD5 is not {md5}). "
                "Delete it and run again with dataset.download=true, or copy a good one there."
            )


def open_dataset(
    dataset: str,
    folder: Path,
    files: Sequence[str],
    download: bool,
    how_to_get: str,
    make: Callable[[bool], T],
) -> T:
    """Build a torchvision dataset, turning its failures into one clear :class:`UserError`.

    Args:
        dataset: the name shown to the user.
        folder: where the files must be.
        files: the file names expected in ``folder``.
        download: whether downloading missing files is allowed (``dataset.download``).
        how_to_get: a sentence telling where the files come from.
        make: builds the torchvision object; receives whether it should download.
    """
    missing = missing_files(folder, files)
    if missing and not download:
        raise UserError(
            f"{dataset}: missing {', '.join(missing)} in {folder}. {how_to_get} "
            "Or run with dataset.download=true, or point dataset.root (or FEWMULT_DATA) at a folder "
            "that has them."
        )
    try:
        return make(bool(missing))
    except UserError:
        raise
    except Exception as exc:
        if missing:
            raise UserError(
                f"{dataset}: could not download {', '.join(missing)} into {folder} ({exc}). "
                f"Without network access, copy the files there yourself: {how_to_get}"
            ) from exc
        raise UserError(
            f"{dataset}: could not read the files in {folder} ({type(exc).__name__}: {exc}). "
            "They are probably corrupt or truncated: delete them and run with dataset.download=true, "
            "or copy good ones there."
        ) from exc
