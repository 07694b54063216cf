"""Image sets given on the command line: one image, a folder of images, or a CSV manifest.

* A folder is searched recursively for images (the suffixes of `datasets.walk.IMAGE_EXTENSIONS`, any case;
  hidden files and folders skipped, symbolic links followed), in sorted path order. When every image sits
  inside a first-level subfolder, that subfolder's name is its label; otherwise the labels are unknown.
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
from datasets.manifest import parse_flag, read_table
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


def _from_csv(csv_path: Path, option: str, role: str) -> ImageSet:
    header, table = read_table(csv_path)
    if "path" not in header:
        raise UserError(f"{option}: {csv_path} has no 'path' column (columns: {', '.join(header)})")
    flag = f"is_{role}"
    if flag in header:
        table = [
            (line, row)
            for line, row in table
            if (row.get(flag) or "").strip() and parse_flag(row[flag], flag, f"{csv_path}, line {line}")
        ]
    if not table:
        raise UserError(f"{option}: {csv_path} lists no {role} images")
    paths, labels = [], []
    for _, row in table:
        raw = (row.get("path") or "").strip()
        path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
        if not raw or not path.is_file():
            raise UserError(f"{option}: image {path} listed in {csv_path} does not exist")
        paths.append(str(path.resolve()))
        labels.append((row.get("label") or "").strip() or None)
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
