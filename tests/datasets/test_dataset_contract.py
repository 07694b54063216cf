"""The contract every registered dataset meets, run over the registry: a new dataset fails here until it has a
miniature in MINIATURES, and then must give splits that the samplers, the evaluation and the dry run accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_datasets import INSHOP_ROWS, config, make_class_folders, write_inshop, write_sop
from test_user_datasets import manifest_images, write_csv

from datasets import DATASETS, build_datasets, describe
from datasets.build import has_query_gallery


def _folder(root: Path) -> Path:
    for split in ("train", "test"):
        make_class_folders(root / "mine" / split, {f"{split}_{c}": 2 for c in "abc"})
    return root / "mine"


def _csv(root: Path) -> Path:
    manifest_images(root)
    rows = [f"{k % 2},img/{k}.jpg,train" for k in range(4)] + [f"{k % 2},img/{k}.jpg,validation" for k in range(4, 8)]
    return write_csv(root / "data.csv", "label,path,split", rows)


# Each dataset's miniature: writes the data under a root, returns the source_path to use.
MINIATURES = {
    "cub200": lambda root: make_class_folders(root / "cub200" / "images", {f"00{c}.C{c}": 2 for c in "1234"}) or root,
    "cars196": lambda root: make_class_folders(root / "cars196" / "images", {f"Car {c}": 2 for c in "ABCD"}) or root,
    "online_products": lambda root: write_sop(root / "online_products", official=False) or root,
    "inshop": lambda root: write_inshop(root / "inshop", INSHOP_ROWS) or root,
    "synthetic": lambda root: root,
    "folder": _folder,
    "csv": _csv,
}


def test_every_registered_dataset_has_a_miniature() -> None:
    assert set(MINIATURES) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_contract(name: str, tmp_path: Path) -> None:
    source = MINIATURES[name](tmp_path)
    splits = build_datasets(config(tmp_path, name, source_path=str(source), test_classes=0.5))
    query_gallery = has_query_gallery(name, str(source))
    assert set(splits) == ({"train", "query", "gallery"} if query_gallery else {"train", "test"})
    for split, dataset in splits.items():
        labels = np.asarray(dataset.labels)
        assert len(dataset) == len(labels) > 0, split
        assert sorted(set(labels.tolist())) == list(range(labels.max() + 1)), f"{split}: labels are not 0..K-1"
        assert all(Path(path).is_file() for path in dataset.paths), split
    image, label, index = splits["train"][0]
    assert tuple(image.shape) == (3, 32, 32) and index == 0 and label == splits["train"].labels[0]
    summary = describe(splits, name)
    assert summary["dataset"] == name and set(summary["splits"]) == set(splits)
