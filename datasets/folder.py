"""Your own images in class folders (`dataset: folder`; `source_path` is the folder `DIR` itself).

Accepted layouts, recognised by the sub-folders of `DIR`:

1. `DIR/train/<class>/...` + `DIR/test/<class>/...`: the two splits may hold different classes (the zero-shot
   protocol of the benchmarks) or the same ones.
2. `DIR/train/<class>/...` + `DIR/query/<class>/...` + `DIR/gallery/<class>/...`: evaluated query -> gallery
   as In-Shop; query and gallery must hold the same classes.
3. only class folders `DIR/<class>/...`: class names in sorted (Python string) order, the first
   `1 - test_classes` fraction of them (rounded down) train, the rest test; at least one class each side.

A class folder holds images at any depth (`DIR/train/cat/2024/a.png` belongs to class `cat`). An image is a
file whose suffix, in any case, is one of `IMAGE_EXTENSIONS`; other files are ignored, and so are hidden files
and folders (names starting with '.', among them the macOS `._` forks) and `__MACOSX` folders. Images are
sorted by their path inside the class folder. Symbolic links to folders and files, at any depth (`DIR`
itself, the class folders), are followed as `datasets.walk` describes; a link cycle is an error naming it.
Labels are 0..K-1 in sorted class-name order per split; query and gallery share one indexing.
"""

from __future__ import annotations

import math
from pathlib import Path

from datasets.base import SplitFiles, relabel
from datasets.walk import IMAGE_EXTENSIONS, has_image_suffix, images_below, list_folder
from utilities.errors import UserError

SPLIT_LAYOUTS = {
    frozenset({"train", "test"}): ("train", "test"),
    frozenset({"train", "query", "gallery"}): ("train", "query", "gallery"),
}
"""The sub-folder sets of `DIR` that name splits, and the splits they give."""

SPLIT_NAMES = frozenset({"train", "test", "query", "gallery"})

LAYOUTS = "train/ + test/, train/ + query/ + gallery/, or only class folders (none named train, test, query, gallery)"


def is_skipped(name: str) -> bool:
    """Hidden files and folders (macOS `._` forks among them) and zip archives' `__MACOSX` folders."""
    return name.startswith(".") or name == "__MACOSX"


def is_image(name: str) -> bool:
    """A visible file name with an image suffix, in any case."""
    return not is_skipped(name) and has_image_suffix(name)


def visible_entries(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted names of the visible sub-folders and of the image files directly inside `folder`, links followed."""
    return list_folder(folder, is_skipped)


def class_images(class_dir: Path) -> list[str]:
    """Paths of every image inside `class_dir`, at any depth, sorted by their path inside it, links followed."""
    return [str(class_dir / name) for name in images_below(class_dir, is_skipped)]


def read_classes(split_dir: Path) -> dict[str, list[str]]:
    """`{class name: image paths}` of the class folders of `split_dir`, in sorted class order.

    A folder without class folders, loose images beside the class folders and a class folder without any
    image are `UserError`s naming the folder.
    """
    folders, loose = visible_entries(split_dir)
    if loose:
        raise UserError(
            f"folder: {split_dir / loose[0]} lies outside a class folder; put every image in {split_dir}/<class>/ "
            f"({len(loose)} such image(s))"
        )
    if not folders:
        raise UserError(f"folder: {split_dir} holds no class folders (expected {split_dir}/<class>/<image>)")
    classes = {name: class_images(split_dir / name) for name in folders}
    for name, paths in classes.items():
        if not paths:
            suffixes = ", ".join(suffix[1:] for suffix in IMAGE_EXTENSIONS)
            raise UserError(f"folder: class folder {split_dir / name} holds no images ({suffixes})")
    return classes


def to_split(classes: dict[str, list[str]]) -> SplitFiles:
    """Images of `classes` labelled 0..K-1 in sorted class-name order."""
    paths = [path for images in classes.values() for path in images]
    return SplitFiles(paths, relabel([name for name, images in classes.items() for _ in images]))


def folder_layout(folder: Path) -> tuple[str, ...]:
    """The splits that `folder`'s sub-folders name, or `()` when they are all class folders."""
    if not folder.exists():
        raise UserError(f"folder: data folder {folder} not found (source_path)")
    if not folder.is_dir():
        raise UserError(f"folder: source_path {folder} is not a folder (dataset csv reads a CSV manifest)")
    folders, loose = visible_entries(folder)
    if not folders and not loose:
        raise UserError(f"folder: {folder} holds no sub-folders; expected {LAYOUTS}")
    subfolders = set(folders)
    if not subfolders & SPLIT_NAMES:
        return ()
    layout = SPLIT_LAYOUTS.get(frozenset(subfolders))
    if layout is None:
        raise UserError(f"folder: {folder} holds the sub-folders {', '.join(folders)}; expected {LAYOUTS}")
    return layout


def folder_has_query_gallery(folder: Path) -> bool:
    """Whether `folder` uses the train/query/gallery layout (answers False where it is not readable)."""
    return (folder / "query").is_dir() and (folder / "gallery").is_dir()


def load_folder(folder: Path, test_classes: float = 0.5) -> dict[str, SplitFiles]:
    """Train/test (or train/query/gallery) files of the class folders under `folder`, `source_path` itself."""
    layout = folder_layout(folder)
    if not layout:
        return split_by_classes(folder, read_classes(folder), test_classes)
    splits = {name: read_classes(folder / name) for name in layout}
    if "query" in splits:
        check_same_classes(folder, splits["query"], splits["gallery"])
    return {name: to_split(classes) for name, classes in splits.items()}


def check_same_classes(folder: Path, query: dict[str, list[str]], gallery: dict[str, list[str]]) -> None:
    """Query and gallery must hold the same classes: a `UserError` names the first class folder without twin."""
    only_query = sorted(set(query) - set(gallery))
    only_gallery = sorted(set(gallery) - set(query))
    if only_query or only_gallery:
        here, there = ("query", "gallery") if only_query else ("gallery", "query")
        name = (only_query or only_gallery)[0]
        raise UserError(
            f"folder: class folder {folder / here / name} has no counterpart {folder / there / name}; query and "
            f"gallery must hold the same classes ({len(only_query)} only in query, {len(only_gallery)} only in "
            "gallery)"
        )


def split_by_classes(folder: Path, classes: dict[str, list[str]], test_classes: float) -> dict[str, SplitFiles]:
    """The first `1 - test_classes` of the (sorted) classes train, rounded down; the others test."""
    if isinstance(test_classes, bool) or not 0.0 < test_classes < 1.0:
        raise UserError(f"test_classes: expected a fraction in (0, 1), got {test_classes!r}")
    n_train = math.floor((1.0 - test_classes) * len(classes) + 1e-9)
    if not 1 <= n_train < len(classes):
        raise UserError(
            f"test_classes: {test_classes} of the {len(classes)} class folder(s) of {folder} leaves "
            f"{n_train} class(es) for training and {len(classes) - n_train} for testing; each side needs one"
        )
    names = list(classes)
    return {
        "train": to_split({name: classes[name] for name in names[:n_train]}),
        "test": to_split({name: classes[name] for name in names[n_train:]}),
    }
