"""Image sets given on the command line: one image, a folder of images, or a CSV manifest.

* A folder is searched recursively for images (the suffixes of `datasets.layout.IMAGE_EXTENSIONS`, any case;
  hidden files and folders skipped), in sorted path order. When every image sits inside a first-level
  subfolder, that subfolder's name is its label; otherwise the labels are unknown.
* A CSV follows the open-metric-learning manifest convention: a `path` column (relative paths are relative
  to the CSV's folder) and an optional `label` column. With an `is_gallery` (for a gallery) or `is_query`
  (for queries) column, only the rows where it is true (true/false, 1/0, yes/no; empty = false) are used;
  otherwise every row is (a `split` column does not filter).

Labels are kept as strings (None when unknown); two items are of the same class when their labels are equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets.folder import class_images, is_image
from datasets.manifest import parse_flag
from utilities.errors import UserError


@dataclass
class ImageSet:
    """Absolute image paths and their labels (None where unknown)."""

    paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return any(label is not None for label in self.labels)


def _from_folder(folder: Path, option: str) -> ImageSet:
    files = [Path(path) for path in class_images(folder)]  # recursive, hidden entries skipped, sorted
    if not files:
        raise UserError(f"{option}: no images (.jpg, .png, ...) found under {folder}")
    relative = [p.relative_to(folder).parts for p in files]
    labelled = all(len(parts) >= 2 for parts in relative)
    labels = [parts[0] if labelled else None for parts in relative]
    return ImageSet([str(p.resolve()) for p in files], labels)


def _truthy(value: str, column: str, csv_path: Path, row: int) -> bool:
    return bool(value.strip()) and parse_flag(value, column, f"{csv_path}, line {row + 2}")


def _from_csv(csv_path: Path, option: str, role: str) -> ImageSet:
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{option}: cannot read CSV {csv_path}: {str(error).splitlines()[0]}") from None
    if "path" not in table.columns:
        raise UserError(f"{option}: {csv_path} has no 'path' column (columns: {', '.join(table.columns)})")
    flag = f"is_{role}"
    if flag in table.columns:
        keep = [_truthy(v, flag, csv_path, i) for i, v in enumerate(table[flag])]
        table = table[keep]
    if table.empty:
        raise UserError(f"{option}: {csv_path} lists no {role} images")
    base = csv_path.parent
    paths, labels = [], []
    for raw, label in zip(table["path"], table["label"] if "label" in table.columns else [None] * len(table)):
        path = Path(raw) if Path(raw).is_absolute() else base / raw
        if not path.is_file():
            raise UserError(f"{option}: image {path} listed in {csv_path} does not exist")
        paths.append(str(path.resolve()))
        labels.append(label if label not in (None, "") else None)
    return ImageSet(paths, labels)


def read_image_set(source: str | Path, option: str, role: str = "gallery") -> ImageSet:
    """The images of `source` (a folder, a CSV manifest, or one image); `option` names the flag in errors."""
    path = Path(source)
    if path.is_dir():
        return _from_folder(path, option)
    if not path.is_file():
        raise UserError(f"{option}: {path} does not exist")
    if path.suffix.lower() == ".csv":
        return _from_csv(path, option, role)
    if not is_image(path.name):
        raise UserError(f"{option}: {path} is neither a folder, a .csv manifest nor an image file")
    return ImageSet([str(path.resolve())], [None])
