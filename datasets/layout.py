"""Small helpers shared by the benchmark loaders: listing class folders and image files, checking files.

Every failure is a `UserError` whose message names the dataset and the folder or file that was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from utilities.errors import UserError

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".pcx", ".sgi",
)  # fmt: skip
"""File suffixes (compared in lower case) read as images: formats Pillow decodes without extra plugins."""


def is_hidden_fork(name: str) -> bool:
    """macOS resource forks (`._name`) and similar junk that must never be read as images."""
    return "._" in name


def list_class_folders(images_dir: Path) -> list[str]:
    """Names of the sub-folders of `images_dir` (unsorted), skipping macOS forks and hidden folders."""
    with os.scandir(images_dir) as entries:
        return [
            entry.name
            for entry in entries
            if entry.is_dir() and not is_hidden_fork(entry.name) and not entry.name.startswith(".")
        ]


def list_images(folder: Path) -> list[str]:
    """Image file names in `folder`, sorted by name; skips `._` forks and non-image files."""
    with os.scandir(folder) as entries:
        names = [
            entry.name
            for entry in entries
            if entry.is_file() and not is_hidden_fork(entry.name) and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(names)


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
