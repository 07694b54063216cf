"""Your own images listed in a CSV manifest (`dataset: csv`; `source_path` is the CSV file itself).

The manifest follows the convention of open-metric-learning. A header line names the columns; columns other
than these are ignored:

* `label` (required): the class, an integer or any text.
* `path` (required): the image file, relative to the folder of the CSV file, or absolute.
* `split` (required): `train` (the training split) or `validation` (evaluation).
* `is_query`, `is_gallery` (optional, both or neither): booleans of the validation rows (true/false, 1/0,
  yes/no, in any case); train rows may leave them empty.

Train rows form the `train` split. The validation rows form the `test` split (every image queries all the
others), unless `is_query`/`is_gallery` are given and not both true on every validation row: then they form a
`query` split (rows with is_query true) and a `gallery` split (is_gallery true), evaluated query -> gallery as
In-Shop. A row true in both is in both splits; query and gallery must hold the same labels. Labels are
0..K-1 per split in sorted label order (numeric order when every label of the file is an integer); query and
gallery share one indexing. A path may appear only once, and every listed image must exist.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets.base import SplitFiles, relabel
from utilities.errors import UserError

REQUIRED_COLUMNS = ("label", "path", "split")
FLAG_COLUMNS = ("is_query", "is_gallery")
SPLIT_VALUES = ("train", "validation")
TRUE_WORDS = frozenset({"true", "1", "1.0", "yes", "t", "y"})
FALSE_WORDS = frozenset({"false", "0", "0.0", "no", "f", "n"})


@dataclass(frozen=True)
class ManifestRow:
    """One image of the manifest: its line in the file, class, resolved path, split and query/gallery flags."""

    line: int
    label: str
    path: str
    split: str
    is_query: bool = True
    is_gallery: bool = True


def parse_flag(text: str, column: str, where: str) -> bool:
    """`True`/`False` from the words of `TRUE_WORDS`/`FALSE_WORDS` (any case); anything else is a `UserError`."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise UserError(f"csv: {where}: {column} {text!r} must be true or false (True/False, 1/0, yes/no)")


def read_table(manifest: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the `(line number, row)` pairs of a CSV file; an absent or unreadable file is a
    `UserError` naming it."""
    if not manifest.exists():
        raise UserError(f"csv: manifest {manifest} not found (source_path)")
    if not manifest.is_file():
        raise UserError(f"csv: source_path {manifest} is not a file (dataset folder reads a folder of images)")
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"csv: cannot read {manifest} as a UTF-8 CSV file: {error}") from None
    return header, rows


def check_columns(manifest: Path, header: list[str]) -> bool:
    """Whether the query/gallery columns are present; a missing required column is a `UserError`."""
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise UserError(
            f"csv: {manifest} lacks the column(s) {', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)}; "
            f"header: {', '.join(header) or 'none'})"
        )
    flags = [name for name in FLAG_COLUMNS if name in header]
    if len(flags) == 1:
        other = FLAG_COLUMNS[1 - FLAG_COLUMNS.index(flags[0])]
        raise UserError(f"csv: {manifest} has the column {flags[0]} but not {other}; give both or neither")
    return bool(flags)


def read_manifest(manifest: Path) -> list[ManifestRow]:
    """Every row of the manifest, validated (columns, values, duplicate paths); image files are not checked."""
    header, table = read_table(manifest)
    has_flags = check_columns(manifest, header)
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, row in table:
        where = f"{manifest} line {line}"
        values = {name: (row.get(name) or "").strip() for name in (*REQUIRED_COLUMNS, *FLAG_COLUMNS)}
        for name in REQUIRED_COLUMNS:
            if not values[name]:
                raise UserError(f"csv: {where}: empty {name}")
        if values["split"] not in SPLIT_VALUES:
            raise UserError(f"csv: {where}: split {values['split']!r} must be train or validation")
        path = os.path.normpath(os.path.join(manifest.parent, values["path"]))
        if path in seen:
            raise UserError(f"csv: {manifest} lists {path} twice (lines {seen[path]} and {line})")
        seen[path] = line
        flags = {}
        if has_flags and values["split"] == "validation":
            flags = {name: parse_flag(values[name], name, where) for name in FLAG_COLUMNS}
            if not any(flags.values()):
                raise UserError(f"csv: {where}: a validation row must have is_query or is_gallery true")
        rows.append(ManifestRow(line, values["label"], path, values["split"], **flags))
    return rows


def label_key(labels: list[str]) -> Callable[[str], int | str]:
    """Sort key of the labels: numeric when every label is an integer, else the text itself."""
    try:
        for label in labels:
            int(label)
    except ValueError:
        return str
    return int


def manifest_has_query_gallery(manifest: Path) -> bool:
    """Whether the manifest's validation rows form query and gallery splits (False where it is not readable)."""
    try:
        rows = read_manifest(manifest)
    except (UserError, OSError):
        return False
    return uses_query_gallery(rows)


def uses_query_gallery(rows: list[ManifestRow]) -> bool:
    """Query/gallery evaluation: some validation row is not both a query and a gallery image."""
    return any(not (row.is_query and row.is_gallery) for row in rows if row.split == "validation")


def load_csv(manifest: Path) -> dict[str, SplitFiles]:
    """Train/test (or train/query/gallery) files listed in the CSV file `manifest`, `source_path` itself."""
    rows = read_manifest(manifest)
    check_images_exist(manifest, rows)
    key = label_key([row.label for row in rows])
    train = [row for row in rows if row.split == "train"]
    validation = [row for row in rows if row.split == "validation"]
    for name, members in (("train", train), ("validation", validation)):
        if not members:
            raise UserError(f"csv: {manifest} has no {name} rows (column split: train or validation)")
    splits = {"train": to_split(train, key)}
    if not uses_query_gallery(rows):
        splits["test"] = to_split(validation, key)
        return splits
    query = [row for row in validation if row.is_query]
    gallery = [row for row in validation if row.is_gallery]
    check_same_labels(manifest, query, gallery, key)
    splits["query"], splits["gallery"] = to_split(query, key), to_split(gallery, key)
    return splits


def to_split(rows: list[ManifestRow], key: Callable[[str], int | str]) -> SplitFiles:
    """Paths and labels 0..K-1 (labels sorted by `key`) of `rows`, in file order."""
    return SplitFiles([row.path for row in rows], relabel([key(row.label) for row in rows]))


def check_images_exist(manifest: Path, rows: list[ManifestRow]) -> None:
    """A `UserError` naming the first listed image that is not a file (and how many are missing)."""
    missing = [row for row in rows if not os.path.isfile(row.path)]
    if missing:
        first = missing[0]
        raise UserError(
            f"csv: {first.path} (line {first.line} of {manifest}) not found; {len(missing)} listed image(s) missing"
        )


def check_same_labels(
    manifest: Path, query: list[ManifestRow], gallery: list[ManifestRow], key: Callable[[str], int | str]
) -> None:
    """Query and gallery must hold the same labels: a `UserError` names the first label found in only one."""
    query_labels, gallery_labels = {key(row.label) for row in query}, {key(row.label) for row in gallery}
    only_query, only_gallery = sorted(query_labels - gallery_labels), sorted(gallery_labels - query_labels)
    if only_query or only_gallery:
        here, there = ("query", "gallery") if only_query else ("gallery", "query")
        first = (only_query or only_gallery)[0]
        label = next(row.label for row in (query if only_query else gallery) if key(row.label) == first)
        raise UserError(
            f"csv: label {label!r} of {manifest} has {here} rows but no {there} rows; query and gallery must "
            f"hold the same labels ({len(only_query)} only in query, {len(only_gallery)} only in gallery)"
        )
