"""Benchmark loaders on miniature copies of every accepted layout, build_datasets, describe, check_images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from config import FIELDS, field_choices
from datasets import DATASETS, ImageDataset, build_datasets, check_images, describe
from datasets.cars196 import load_cars196
from datasets.cub200 import load_cub200
from datasets.inshop import load_inshop
from datasets.online_products import load_online_products
from utilities.errors import UserError


def write_jpeg(path: Path, shade: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (shade, 255 - shade, 60)).save(path)


def make_class_folders(images_dir: Path, classes: dict[str, int]) -> None:
    for folder, count in classes.items():
        for k in range(count):
            write_jpeg(images_dir / folder / f"img_{k:02d}.jpg", shade=20 * k)
        # junk that must be skipped: a macOS fork and a non-image file
        (images_dir / folder / "._img_00.jpg").write_bytes(b"\x00\x05\x16\x07")
        (images_dir / folder / "notes.txt").write_text("not an image")


def config(root: Path, dataset: str, **overrides) -> SimpleNamespace:
    values = dict(
        dataset=dataset,
        source_path=str(root),
        augmentation="base",
        resolution=32,
        val_classes=0.0,
        seed=0,
        synthetic_classes=4,
        synthetic_images_per_class=3,
        synthetic_image_size=32,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def names(files) -> list[str]:
    return [str(Path(p).relative_to(Path(p).parents[1])) for p in files.paths]


# ------------------------------------------------------------------------------------------------ CUB


CUB_CLASSES = {"9.Nine": 2, "10.Ten": 3, "2.Two": 1, "1.One": 2}


@pytest.mark.parametrize("subdir", ["images", "CUB_200_2011/images"])
def test_cub_layouts_split_by_class_number(tmp_path: Path, subdir: str) -> None:
    make_class_folders(tmp_path / "cub200" / subdir, CUB_CLASSES)
    splits = load_cub200(tmp_path / "cub200")
    # integer order 1, 2 | 9, 10 (string order would put 10 second)
    assert names(splits["train"]) == ["1.One/img_00.jpg", "1.One/img_01.jpg", "2.Two/img_00.jpg"]
    assert splits["train"].labels.tolist() == [0, 0, 1]
    assert names(splits["test"])[:2] == ["9.Nine/img_00.jpg", "9.Nine/img_01.jpg"]
    assert splits["test"].labels.tolist() == [0, 0, 1, 1, 1]


def test_cub_class_folders_and_images_that_are_links_read_like_copies(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "store", CUB_CLASSES)
    images = tmp_path / "cub200" / "images"
    images.mkdir(parents=True)
    for name in CUB_CLASSES:
        (images / name).symlink_to(tmp_path / "store" / name)  # linked class folders
    (tmp_path / "store" / "2.Two" / "img_01.jpg").symlink_to(tmp_path / "store" / "1.One" / "img_00.jpg")
    (tmp_path / "store" / "2.Two" / ".hidden.jpg").write_bytes(b"skipped, as the forks")
    splits = load_cub200(tmp_path / "cub200")
    assert names(splits["train"]) == ["1.One/img_00.jpg", "1.One/img_01.jpg", "2.Two/img_00.jpg", "2.Two/img_01.jpg"]
    assert len(splits["test"].paths) == 5
    (tmp_path / "store" / "9.Nine" / "gone.jpg").symlink_to(tmp_path / "absent.jpg")
    with pytest.raises(UserError, match=f"^{images / '9.Nine' / 'gone.jpg'} is a broken link"):
        load_cub200(tmp_path / "cub200")


def test_cub_missing_layout_names_both_folders(tmp_path: Path) -> None:
    (tmp_path / "cub200" / "CUB_200_2011").mkdir(parents=True)
    folder = tmp_path / "cub200"
    with pytest.raises(UserError) as error:
        load_cub200(folder)
    assert str(error.value) == (
        f"cub200: expected class folders under {folder / 'images'} or {folder / 'CUB_200_2011' / 'images'} "
        "(e.g. 001.Black_footed_Albatross/*.jpg)"
    )


def test_cub_badly_named_class_folder(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "cub200" / "images", {"001.A": 1, "Albatross": 1})
    with pytest.raises(UserError, match=r"Albatross must be named NNN\.<name>"):
        load_cub200(tmp_path / "cub200")


# ----------------------------------------------------------------------------------------------- Cars


def test_cars_class_folders_split_lexicographically(tmp_path: Path) -> None:
    classes = {"audi Q 2003": 1, "Acura A 2001": 2, "Zeta Z 2004": 1, "BMW X 2002": 3}
    make_class_folders(tmp_path / "cars196" / "images", classes)
    splits = load_cars196(tmp_path / "cars196")
    # Python string order is case-sensitive: uppercase names sort before lowercase ones
    assert [Path(p).parent.name for p in splits["train"].paths] == ["Acura A 2001"] * 2 + ["BMW X 2002"] * 3
    assert [Path(p).parent.name for p in splits["test"].paths] == ["Zeta Z 2004", "audi Q 2003"]
    assert splits["train"].labels.tolist() == [0, 0, 1, 1, 1]
    assert splits["test"].labels.tolist() == [0, 1]


def write_cars_devkit(folder: Path, class_ids: list[int]) -> None:
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(class_ids)), dtype=[(name, "O") for name in fields])
    for i, class_id in enumerate(class_ids):
        relative = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(folder / relative)
        annotations[0, i] = (
            relative,
            np.uint8(1),
            np.uint8(2),
            np.uint8(30),
            np.uint8(20),
            np.uint8(class_id),
            np.uint8(i % 2),
        )
    class_names = np.array([[f"Make Model {k}" for k in range(1, 197)]], dtype=object)
    scipy.io.savemat(str(folder / "cars_annos.mat"), {"annotations": annotations, "class_names": class_names})


def test_cars_devkit_split_by_official_class_id(tmp_path: Path) -> None:
    folder = tmp_path / "cars196"
    write_cars_devkit(folder, [150, 3, 98, 99, 3, 196, 98])
    splits = load_cars196(folder)
    # train: ids 3, 3, 98, 98 (image order: class id, then path); test: ids 99, 150, 196
    assert [Path(p).name for p in splits["train"].paths] == ["000002.jpg", "000005.jpg", "000003.jpg", "000007.jpg"]
    assert splits["train"].labels.tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p in splits["test"].paths] == ["000004.jpg", "000001.jpg", "000006.jpg"]
    assert splits["test"].labels.tolist() == [0, 1, 2]


def test_cars_devkit_missing_image_and_missing_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cars196"
    write_cars_devkit(folder, [1, 2, 100, 101])
    (folder / "car_ims" / "000003.jpg").unlink()
    with pytest.raises(
        UserError, match=r"cars196: 1 image\(s\) listed in .*cars_annos.mat are missing, e.g. .*000003.jpg"
    ):
        load_cars196(folder)
    (folder / "cars_annos.mat").unlink()
    with pytest.raises(UserError, match=r"cars196: expected class folders under .*images or the devkit form"):
        load_cars196(folder)


def test_cars_devkit_malformed_mat(tmp_path: Path) -> None:
    folder = tmp_path / "cars196"
    (folder / "car_ims").mkdir(parents=True)
    scipy.io.savemat(str(folder / "cars_annos.mat"), {"something_else": np.zeros(3)})
    with pytest.raises(UserError, match="cannot read .*cars_annos.mat: expected a struct array 'annotations'"):
        load_cars196(folder)


# ------------------------------------------------------------------------------------------------ SOP


EBAY_HEADER = "image_id class_id super_class_id path\n"


def write_sop(folder: Path, official: bool) -> None:
    info = folder if official else folder / "Info_Files"
    images = folder if official else folder / "images"
    info.mkdir(parents=True, exist_ok=True)
    train = [
        (1, 5, "bicycle_final/111_0.JPG"),
        (2, 5, "bicycle_final/111_1.JPG"),
        (3, 2, "chair_final/222_0.JPG"),
        (4, 9, "chair_final/333_0.JPG"),
    ]
    test = [(5, 12, "kettle_final/444_0.JPG"), (6, 11, "kettle_final/555_0.JPG"), (7, 12, "kettle_final/444_1.JPG")]
    for name, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines = [f"{i} {c} {c % 3 + 1} {p}\n" for i, c, p in rows]
        (info / name).write_text(EBAY_HEADER + "".join(lines))
        for _, _, path in rows:
            write_jpeg(images / path)


@pytest.mark.parametrize("official", [False, True])
def test_sop_splits_from_ebay_files(tmp_path: Path, official: bool) -> None:
    write_sop(tmp_path / "online_products", official)
    splits = load_online_products(tmp_path / "online_products")
    assert [Path(p).name for p in splits["train"].paths] == ["111_0.JPG", "111_1.JPG", "222_0.JPG", "333_0.JPG"]
    assert splits["train"].labels.tolist() == [1, 1, 0, 2]  # class ids 5, 5, 2, 9 by sorted class id
    assert splits["test"].labels.tolist() == [1, 0, 1]
    assert all(Path(p).is_file() for p in splits["train"].paths + splits["test"].paths)


def test_sop_missing_annotation_and_bad_header(tmp_path: Path) -> None:
    folder = tmp_path / "online_products"
    write_sop(folder, official=False)
    (folder / "Info_Files" / "Ebay_test.txt").unlink()
    with pytest.raises(UserError, match="online_products: annotation file Ebay_test.txt not found in .*Info_Files"):
        load_online_products(folder)
    (folder / "Info_Files" / "Ebay_test.txt").write_text("id class path\n1 2 x.jpg\n")
    with pytest.raises(
        UserError, match="Ebay_test.txt must start with the header line 'image_id class_id super_class_id path'"
    ):
        load_online_products(folder)


# -------------------------------------------------------------------------------------------- In-Shop


def write_inshop(folder: Path, rows: list[tuple[str, str]], count: int | None = None) -> None:
    """rows: (item_id, status); image names are generated per item."""
    lines, per_item = [], {}
    for item, status in rows:
        per_item[item] = per_item.get(item, 0) + 1
        name = f"img/WOMEN/Dresses/{item}/{per_item[item]:02d}_1_front.jpg"
        write_jpeg(folder / name)
        lines.append(f"{name}   {item}   {status}\n")
    header = f"{len(rows) if count is None else count}\nimage_name item_id evaluation_status\n"
    (folder / "list_eval_partition.txt").write_text(header + "".join(lines))


INSHOP_ROWS = [
    ("id_00000005", "train"),
    ("id_00000002", "train"),
    ("id_00000005", "train"),
    ("id_00000012", "query"),
    ("id_00000007", "query"),
    ("id_00000009", "query"),
    ("id_00000009", "gallery"),
    ("id_00000012", "gallery"),
    ("id_00000007", "gallery"),
    ("id_00000007", "gallery"),
]


def test_inshop_splits_and_shared_query_gallery_labels(tmp_path: Path) -> None:
    write_inshop(tmp_path / "inshop", INSHOP_ROWS)
    splits = load_inshop(tmp_path / "inshop")
    assert splits["train"].labels.tolist() == [1, 0, 1]
    assert splits["query"].labels.tolist() == [2, 0, 1]  # items 12, 7, 9 -> one shared indexing 7, 9, 12
    assert splits["gallery"].labels.tolist() == [1, 2, 0, 0]
    assert splits["query"].paths[0].endswith("inshop/img/WOMEN/Dresses/id_00000012/01_1_front.jpg")


def test_inshop_query_gallery_item_mismatch(tmp_path: Path) -> None:
    rows = [r for r in INSHOP_ROWS if r != ("id_00000009", "gallery")]
    write_inshop(tmp_path / "inshop", rows)
    with pytest.raises(
        UserError,
        match=r"query and gallery of .* must hold the same items; 1 items are only in query and "
        r"0 only in gallery \(e.g. item 9\)",
    ):
        load_inshop(tmp_path / "inshop")


def test_inshop_format_errors(tmp_path: Path) -> None:
    folder = tmp_path / "inshop"
    folder.mkdir()
    with pytest.raises(
        UserError,
        match=r"inshop: partition file .*list_eval_partition.txt \(or .*Eval/list_eval_partition.txt\) not found",
    ):
        load_inshop(folder)
    write_inshop(folder, INSHOP_ROWS, count=99)
    with pytest.raises(UserError, match="announces 99 entries on line 1 but lists 10"):
        load_inshop(folder)
    (folder / "list_eval_partition.txt").write_text("image_name item_id evaluation_status\nimg/a.jpg id_1 train\n")
    with pytest.raises(UserError, match="must start with a line holding the number of entries"):
        load_inshop(folder)


# ------------------------------------------------------------------------------- build_datasets & co


def test_build_datasets_transforms_val_split_and_describe(tmp_path: Path) -> None:
    classes = {f"{k:03d}.Bird_{k}": 2 + k % 2 for k in range(1, 11)}
    make_class_folders(tmp_path / "cub200" / "images", classes)
    splits = build_datasets(config(tmp_path, "cub200"))
    assert describe(splits, "cub200") == {
        "dataset": "cub200",
        "splits": {"train": {"classes": 5, "images": 13}, "test": {"classes": 5, "images": 12}},
    }
    image, label, index = splits["test"][4]
    assert tuple(image.shape) == (3, 32, 32) and image.dtype == torch.float32
    assert (label, index) == (int(splits["test"].labels[4]), 4)
    torch.manual_seed(0)
    assert torch.equal(splits["test"][0][0], splits["test"][0][0])  # eval transform is deterministic

    with_val = build_datasets(config(tmp_path, "cub200", val_classes=0.4))
    assert list(with_val) == ["train", "test", "val"]
    assert describe(with_val, "cub200")["splits"]["val"] == {"classes": 2, "images": 5}
    assert with_val["train"].labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert with_val["val"].labels.tolist() == [0, 0, 1, 1, 1]  # classes 4 and 5, re-indexed
    assert all("004.Bird_4" in p or "005.Bird_5" in p for p in with_val["val"].paths)
    assert with_val["val"].transform is with_val["test"].transform is not with_val["train"].transform


def test_build_datasets_inshop_describe(tmp_path: Path) -> None:
    write_inshop(tmp_path / "inshop", INSHOP_ROWS)
    assert describe(build_datasets(config(tmp_path, "inshop")), "inshop") == {
        "dataset": "inshop",
        "splits": {
            "train": {"classes": 2, "images": 3},
            "query": {"classes": 3, "images": 3},
            "gallery": {"classes": 3, "images": 4},
        },
    }


def test_build_datasets_errors(tmp_path: Path) -> None:
    with pytest.raises(
        UserError,
        match="dataset: unknown name 'cub'; valid: cub200, cars196, online_products, inshop, synthetic, folder, csv",
    ):
        build_datasets(config(tmp_path, "cub"))
    with pytest.raises(UserError) as error:
        build_datasets(config(tmp_path, "cars196"))
    assert str(error.value) == f"cars196: data folder {tmp_path / 'cars196'} not found (source_path is {tmp_path})"
    with pytest.raises(UserError, match="augmentation: unknown name 'nope'"):
        build_datasets(config(tmp_path, "cub200", augmentation="nope"))
    with pytest.raises(UserError, match=r"val_classes: expected a fraction in \[0, 1\), got 1.5"):
        build_datasets(config(tmp_path, "cub200", val_classes=1.5))
    assert (
        tuple(DATASETS)
        == field_choices(FIELDS["dataset"])
        == ("cub200", "cars196", "online_products", "inshop", "synthetic", "folder", "csv")
    )


def test_corrupt_image_is_a_user_error_and_reported_by_check_images(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "cub200" / "images", {"001.A": 2, "002.B": 2})
    bad = tmp_path / "cub200" / "images" / "002.B" / "img_01.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    splits = build_datasets(config(tmp_path, "cub200"))
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        splits["test"][1]
    for workers in (0, 2):
        problems = check_images(splits, workers=workers)
        assert len(problems) == 1 and problems[0].startswith(f"{bad}: ")
    missing = ImageDataset([str(tmp_path / "gone.jpg")], [0])
    with pytest.raises(UserError, match="cannot read image .*gone.jpg"):
        missing[0]


def test_configuration_choices_come_from_the_registries() -> None:
    """The `dataset`, `augmentation` and `data_sampler` values are the registries' names, listed nowhere else."""
    from config.command_line import build_parser
    from datasets.samplers import SAMPLERS
    from datasets.transforms import AUGMENTATIONS

    assert field_choices(FIELDS["augmentation"]) == tuple(AUGMENTATIONS)
    assert field_choices(FIELDS["data_sampler"]) == tuple(SAMPLERS)
    help_text = build_parser("x").format_help()
    assert all(name in help_text for name in (*DATASETS, *AUGMENTATIONS, *SAMPLERS))
