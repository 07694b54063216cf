"""In-Shop Clothes Retrieval of DeepFashion (`dataset: inshop`).

Accepted layout, `DIR` being `source_path`:

    DIR/inshop/list_eval_partition.txt       (or DIR/inshop/Eval/list_eval_partition.txt, as shipped)
    DIR/inshop/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...

`list_eval_partition.txt`: first line the number of entries (52712), second line the header
`image_name item_id evaluation_status`, then one whitespace-separated line per image, e.g.
`img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`; `image_name` is relative to
`DIR/inshop/`. Status `train` -> `train` split (25,882 images, 3,997 items), `query` -> `query` (14,218),
`gallery` -> `gallery` (12,612). The item label is the integer after the last '_' of `item_id`. Labels
are 0..K-1 in sorted item order: train among the train items; query and gallery share one indexing over
their common item set (3,985 items), and they must hold exactly the same items (checked).
"""

from __future__ import annotations

from pathlib import Path

from datasets.base import SplitFiles, relabel
from datasets.layout import check_files_exist, read_lines
from utilities.errors import UserError

HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")


def load_inshop(folder: Path) -> dict[str, SplitFiles]:
    """Train/query/gallery files of In-Shop found under `folder` (= `source_path/inshop`)."""
    candidates = [folder / "list_eval_partition.txt", folder / "Eval" / "list_eval_partition.txt"]
    partition = next((path for path in candidates if path.is_file()), None)
    if partition is None:
        raise UserError(f"inshop: partition file {candidates[0]} (or {candidates[1]}) not found")
    entries = read_partition(partition)
    query_items = {item for _, item in entries["query"]}
    gallery_items = {item for _, item in entries["gallery"]}
    if query_items != gallery_items:
        only_query = sorted(query_items - gallery_items)
        only_gallery = sorted(gallery_items - query_items)
        example = (only_query or only_gallery)[0]
        raise UserError(
            f"inshop: query and gallery of {partition} must hold the same items; {len(only_query)} items "
            f"are only in query and {len(only_gallery)} only in gallery (e.g. item {example})"
        )
    shared_order = {item: index for index, item in enumerate(sorted(query_items))}
    splits = {"train": _to_split(folder, entries["train"], None)}
    for split in ("query", "gallery"):
        splits[split] = _to_split(folder, entries[split], shared_order)
    for files in splits.values():
        check_files_exist(files.paths, "inshop", partition)
    return splits


def _to_split(folder: Path, entries: list[tuple[str, int]], order: dict[int, int] | None) -> SplitFiles:
    paths = [str(folder / name) for name, _ in entries]
    items = [item for _, item in entries]
    labels = relabel(items) if order is None else [order[item] for item in items]
    return SplitFiles(paths, labels)


def read_partition(partition: Path) -> dict[str, list[tuple[str, int]]]:
    """`(image_name, item number)` per status from `list_eval_partition.txt`, validating its format."""
    lines = read_lines(partition, "inshop")
    if len(lines) < 2 or not lines[0].isdigit() or lines[1].split() != HEADER:
        raise UserError(
            f"inshop: {partition} must start with a line holding the number of entries and the header "
            f"line '{' '.join(HEADER)}'"
        )
    entries: dict[str, list[tuple[str, int]]] = {status: [] for status in STATUSES}
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in entries:
            raise UserError(
                f"inshop: {partition} line {number} must be 'image_name item_id evaluation_status' "
                f"with a status in {list(STATUSES)}"
            )
        entries[fields[2]].append((fields[0], item_number(fields[1], partition, number)))
    count = sum(len(rows) for rows in entries.values())
    if count != int(lines[0]):
        raise UserError(f"inshop: {partition} announces {int(lines[0])} entries on line 1 but lists {count}")
    for status, rows in entries.items():
        if not rows:
            raise UserError(f"inshop: {partition} lists no '{status}' images")
    return entries


def item_number(item_id: str, partition: Path, line: int) -> int:
    """`id_00000002` -> 2 (the integer after the last '_')."""
    suffix = item_id.rsplit("_", 1)[-1]
    if not suffix.isdigit():
        raise UserError(f"inshop: {partition} line {line}: item_id {item_id!r} must look like id_00000002")
    return int(suffix)
