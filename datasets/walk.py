"""The one way images are listed on disk: class folders of the benchmarks, user folders, retrieval galleries.

Symbolic links count as what they lead to, at any depth: a linked folder is walked like a folder, a linked file
is read like a file (data linked in from shared storage works as a copy would). A link that leads back to a
folder it sits in (or to a folder above the walk's root) would be walked forever: it is a `UserError` naming the
link and that folder. A dangling link with an image suffix is a `UserError` too (the image is missing); other
names a caller's `skip` rule rejects (hidden files, macOS forks) are never looked at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from utilities.errors import UserError

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".pcx", ".sgi",
)  # fmt: skip
"""File suffixes (compared in lower case) read as images: formats Pillow decodes without extra plugins."""

Skip = Callable[[str], bool]
"""A caller's rule for names (of folders and files) that are not data: hidden entries, macOS forks."""


def has_image_suffix(name: str) -> bool:
    """Whether `name` ends, in any case, with one of `IMAGE_EXTENSIONS`."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder(folder: Path, skip: Skip) -> tuple[list[str], list[str]]:
    """Sorted names of the sub-folders and of the image files directly inside `folder`, links followed."""
    folders, images = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if skip(entry.name):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file():
                if has_image_suffix(entry.name):
                    images.append(entry.name)
            elif entry.is_symlink() and has_image_suffix(entry.name):
                target = os.readlink(entry.path)
                raise UserError(f"{entry.path} is a broken link: its target {target} does not exist")
    return sorted(folders), sorted(images)


def _identity(path: Path | str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _last_link(start: Path, folder: Path) -> Path:
    """The last symbolic link on the way from `start` down to `folder` (`folder` itself when there is none)."""
    path, link = start, folder
    for part in folder.relative_to(start).parts:
        path = path / part
        if path.is_symlink():
            link = path
    return link


def images_below(root: Path, skip: Skip) -> list[str]:
    """Paths (relative to `root`, '/'-separated) of every image at any depth under `root`, sorted, links followed.

    A folder reached again below itself, or a folder above `root` reached, through a link is a `UserError`
    naming the link and that folder.
    """
    above = {_identity(folder): folder for folder in Path(os.path.realpath(root)).parents}
    found: list[str] = []

    def walk(folder: Path, relative: str, open_folders: dict[tuple[int, int], Path]) -> None:
        identity = _identity(folder)
        if identity in open_folders or identity in above:
            loop = open_folders.get(identity) or above[identity]
            link = _last_link(open_folders.get(identity, root), folder)
            target = os.readlink(link) if link.is_symlink() else link
            raise UserError(
                f"link cycle: {link} -> {target} leads back to {loop}, which contains it; remove the link or "
                "point it elsewhere"
            )
        folders, images = list_folder(folder, skip)
        found.extend(f"{relative}{name}" for name in images)
        inside = {**open_folders, identity: folder}
        for name in folders:
            walk(folder / name, f"{relative}{name}/", inside)

    walk(root, "", {})
    return sorted(found)
