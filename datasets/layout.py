"""Small helpers shared by the benchmark loaders: listing class folders and image files (through
`datasets.walk`, links followed), checking files.

Every failure is a `UserError` whose message names the dataset and the folder or file that was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from datasets.walk import list_folder
from utilities.errors import UserError


def is_hidden_fork(name: str) -> bool:
    """macOS resource forks (`._name`) and similar junk that must never be read as images."""
    return "._" in name


def is_skipped(name: str) -> bool:
    """What the benchmark layouts skip: hidden files and folders and macOS forks."""
    return name.startswith(".") or is_hidden_fork(name)


def list_class_folders(images_dir: Path) -> list[str]:
    """Names of the sub-folders of `images_dir`, sorted, links followed, skipping macOS forks and hidden folders."""
    return list_folder(images_dir, is_skipped)[0]


def list_images(folder: Path) -> list[str]:
    """Image file names in `folder`, sorted by name, links followed; skips hidden files, forks, other files."""
    return list_folder(folder, is_skipped)[1]


def read_lines(path: Path, dataset: str) -> list[str]:
    """Non-empty lines of a text annotation file; a missing file is a `UserError`."""
    if not path.is_file():
        raise UserError(f"{dataset}: annotation file {path} not found")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def check_files_exist(paths: Iterable[str], dataset: str, listed_in: Path) -> None:
    """Raise a `UserError` naming the first missing images (and how many) listed in an annotation file."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        examples = ", ".join(missing[:3])
        raise UserError(f"{dataset}: {len(missing)} image(s) listed in {listed_in} are missing, e.g. {examples}")


def first_existing(candidates: list[Path]) -> Path | None:
    """The first of `candidates` that is a folder, or None."""
    return next((path for path in candidates if path.is_dir()), None)
