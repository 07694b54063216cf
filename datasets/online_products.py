"""Stanford Online Products (`dataset: online_products`).

Accepted layouts, `DIR` being `source_path`:

1. the reference implementation's:
   `DIR/online_products/Info_Files/Ebay_train.txt`, `DIR/online_products/Info_Files/Ebay_test.txt` and
   `DIR/online_products/images/bicycle_final/111085122871_0.JPG` ...
2. the official archive `Stanford_Online_Products.zip` unpacked as `DIR/online_products/`:
   `DIR/online_products/Ebay_train.txt`, `DIR/online_products/Ebay_test.txt`,
   `DIR/online_products/bicycle_final/111085122871_0.JPG` ...

The annotation files are looked up in `Info_Files/` first, then in `online_products/` itself; image
paths (the `path` column) are relative to `online_products/images/` if that folder exists, else to
`online_products/`. Each file is space-separated with the header line `image_id class_id
super_class_id path`. `Ebay_train.txt` is the `train` split (59,551 images, 11,318 classes),
`Ebay_test.txt` the `test` split (60,502 images, 11,316 classes); images in file order, labels 0..K-1 by
sorted `class_id` within each split.
"""

from __future__ import annotations

from pathlib import Path

from datasets.base import SplitFiles, relabel
from datasets.layout import check_files_exist, read_lines
from utilities.errors import UserError

HEADER = ["image_id", "class_id", "super_class_id", "path"]
SPLIT_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


def load_online_products(folder: Path) -> dict[str, SplitFiles]:
    """Train/test files of Stanford Online Products found under `folder` (= `source_path/online_products`)."""
    info_dir = folder / "Info_Files" if (folder / "Info_Files").is_dir() else folder
    image_root = folder / "images" if (folder / "images").is_dir() else folder
    splits: dict[str, SplitFiles] = {}
    for split, name in SPLIT_FILES.items():
        annotation = info_dir / name
        if not annotation.is_file():
            raise UserError(f"online_products: annotation file {name} not found in {folder / 'Info_Files'} or {folder}")
        splits[split] = read_ebay_file(annotation, image_root)
        check_files_exist(splits[split].paths, "online_products", annotation)
    return splits


def read_ebay_file(annotation: Path, image_root: Path) -> SplitFiles:
    """Parse one `Ebay_*.txt` file: image paths under `image_root` and labels re-indexed by `class_id`."""
    lines = read_lines(annotation, "online_products")
    if not lines or lines[0].split() != HEADER:
        raise UserError(f"online_products: {annotation} must start with the header line '{' '.join(HEADER)}'")
    paths: list[str] = []
    class_ids: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit():
            raise UserError(
                f"online_products: {annotation} line {number} must be 'image_id class_id super_class_id path'"
            )
        class_ids.append(int(fields[1]))
        paths.append(str(image_root / fields[3]))
    if not paths:
        raise UserError(f"online_products: {annotation} lists no images")
    return SplitFiles(paths, relabel(class_ids))
