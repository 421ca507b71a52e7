"""Finding, downloading and verifying dataset files, with messages that say what to do.

Downloads are safe to start from many jobs at once on a shared disk: one job downloads (through
torchvision, into a private staging folder) while the others wait on a lock; finished files are
then moved into place with an atomic rename, so a file under its final name is always complete.
A job killed while downloading leaves only its staging folder, which the next download removes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from torchvision.datasets.utils import check_integrity

from fewmult.errors import UserError
from fewmult.locks import FileLock

T = TypeVar("T")

STAGING_PREFIX = ".fewmult-download-"


def resolve_root(root: str | Path) -> Path:
    return Path(root).expanduser().resolve()


def missing_files(folder: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def verify_md5(folder: Path, files_md5: Sequence[tuple[str, str | None]], dataset: str) -> None:
    """Name the first file whose checksum is wrong (a damaged copy); files without an MD5 pass."""
    for name, md5 in files_md5:
        if md5 and not check_integrity(str(folder / name), md5):
            raise UserError(
                f"{dataset}: the file {folder / name} is corrupt (its MD5 is not {md5}). "
                "Delete it and run again with dataset.download=true, or copy a good one there."
            )


def fetch_missing(
    dataset: str, root: Path, folder: Path, files: Sequence[str], fetch: Callable[[Path], object]
) -> None:
    """Download the missing ``files`` of ``folder`` (under ``root``) once, whoever else is asking.

    ``fetch(staging_root)`` makes torchvision download into ``staging_root``, laid out like ``root``.
    """

    def waiting(holder: str) -> None:
        print(f"{dataset}: waiting for {holder} to finish downloading into {root}", flush=True)

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".fewmult-download.lock", on_wait=waiting):
        missing = missing_files(folder, files)  # the process we waited for may have fetched them
        if not missing:
            return
        for stale in root.glob(STAGING_PREFIX + "*"):  # left by killed downloads
            shutil.rmtree(stale, ignore_errors=True)
        staging = root / f"{STAGING_PREFIX}{os.getpid()}"
        try:
            fetch(staging)
            staged = staging / folder.relative_to(root)
            folder.mkdir(parents=True, exist_ok=True)
            for name in missing:
                with open(staged / name, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(staged / name, folder / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def open_dataset(
    dataset: str,
    root: Path,
    folder: Path,
    files_md5: Sequence[tuple[str, str | None]],
    download: bool,
    how_to_get: str,
    make: Callable[[Path, bool], T],
) -> T:
    """Build a torchvision dataset, turning its failures into one clear :class:`UserError`.

    Args:
        dataset: the name shown to the user.
        root: the data folder (``dataset.root``), given to torchvision.
        folder: where the files must be (``root`` or a folder under it).
        files_md5: the file names expected in ``folder``, each with its MD5 (None: not checked).
        download: whether downloading missing files is allowed (``dataset.download``).
        how_to_get: a sentence telling where the files come from.
        make: builds the torchvision object from a root folder; its flag says whether to download.
    """
    files = [name for name, _ in files_md5]
    missing = missing_files(folder, files)
    if missing and not download:
        raise UserError(
            f"{dataset}: missing {', '.join(missing)} in {folder}. {how_to_get} "
            "Or run with dataset.download=true, or point dataset.root (or FEWMULT_DATA) at a folder "
            "that has them."
        )
    if missing:
        try:
            fetch_missing(dataset, root, folder, files, lambda staging: make(staging, True))
        except Exception as exc:
            raise UserError(
                f"{dataset}: could not download {', '.join(missing)} into {folder} ({exc}). "
                f"Without network access, copy the files there yourself: {how_to_get}"
            ) from exc
    verify_md5(folder, files_md5, dataset)
    try:
        return make(root, False)
    except Exception as exc:
        raise UserError(
            f"{dataset}: could not read the files in {folder} ({type(exc).__name__}: {exc}). "
            "They are probably corrupt or truncated: delete them and run with dataset.download=true, "
            "or copy good ones there."
        ) from exc
