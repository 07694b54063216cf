"""Your own images: `dataset: folder` (class folders) and `dataset: csv` (a manifest), from the loaders to
`main.py --dry_run`, the samplers, the metric rules of query -> gallery data and short training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.trainer
import main as main_module
from config import FIELDS, config_from_dict, field_choices
from datasets import build_batch_sampler
from datasets.build import DATASETS, has_query_gallery
from datasets.folder import load_folder
from datasets.manifest import load_csv
from metrics.names import QUERY_GALLERY_METRICS
from utilities.errors import UserError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
           ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}  # fmt: skip


def write_image(path: Path, shade: int = 100) -> Path:
    """A 16 x 16 image in the format its suffix names (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (16, 16), (shade % 256, (3 * shade) % 256, 90))
    if path.suffix.lower() == ".pgm":
        image = image.convert("L")
    image.save(path, format=FORMATS[path.suffix.lower()])
    return path


def make_classes(split_dir: Path, counts: dict[str, int], suffix: str = ".png") -> None:
    """`counts[name]` images per class folder, plus files that must be skipped."""
    for index, (name, count) in enumerate(counts.items()):
        for k in range(count):
            write_image(split_dir / name / f"img_{k:02d}{suffix}", shade=40 * index + 9 * k)
        (split_dir / name / "._img_00.png").write_bytes(b"\x00\x05\x16\x07")  # macOS fork
        (split_dir / name / "notes.txt").write_text("not an image")


def relative(paths: list[str], root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def dry_run(*args: str) -> list[str]:
    return ["--dry_run", "--arch", "test_resnet", "--pretrained", "false", *args]


def exits_2_naming(capsys, argv: list[str], *fragments: str) -> str:
    """`main.main(argv)` returns 2 and prints exactly one line that holds every fragment."""
    assert main_module.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_registry_and_schema_agree() -> None:
    assert field_choices(FIELDS["dataset"]) == tuple(DATASETS) and {"folder", "csv"} <= set(DATASETS)
    assert DATASETS["folder"].source_is_data and DATASETS["csv"].source_is_data


# ----------------------------------------------------------------------------------------------- folder


def test_folder_train_test_layout_reads_every_format_nested_files_and_skips_junk(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"zebra": 2, "ant": 3})
    make_classes(tmp_path / "test", {"cow": 2, "bee": 1, "dog": 2}, suffix=".JPG")  # other classes: zero-shot
    for suffix in (".jpeg", ".bmp", ".GIF", ".webp", ".tif", ".TIFF", ".ppm", ".pgm"):
        write_image(tmp_path / "train" / "ant" / f"more{suffix}")
    write_image(tmp_path / "train" / "ant" / "2024" / "deep" / "nested.png")  # deeper: still class ant
    write_image(tmp_path / "train" / "ant" / ".hidden.png")
    write_image(tmp_path / "train" / "ant" / ".cache" / "thumb.png")
    write_image(tmp_path / "train" / ".hidden_class" / "x.png")
    write_image(tmp_path / "train" / "__MACOSX" / "ant" / "x.png")
    splits = load_folder(tmp_path)
    assert list(splits) == ["train", "test"]
    train = splits["train"]
    assert relative(train.paths, tmp_path / "train") == [
        "ant/2024/deep/nested.png", "ant/img_00.png", "ant/img_01.png", "ant/img_02.png", "ant/more.GIF",
        "ant/more.TIFF", "ant/more.bmp", "ant/more.jpeg", "ant/more.pgm", "ant/more.ppm", "ant/more.tif",
        "ant/more.webp", "zebra/img_00.png", "zebra/img_01.png",
    ]  # fmt: skip
    assert train.labels.tolist() == [0] * 12 + [1] * 2
    assert relative(splits["test"].paths, tmp_path / "test")[:3] == [
        "bee/img_00.JPG",
        "cow/img_00.JPG",
        "cow/img_01.JPG",
    ]
    assert splits["test"].labels.tolist() == [0, 1, 1, 2, 2]
    assert load_folder(tmp_path)["train"].paths == train.paths  # deterministic


def test_folder_query_gallery_layout_shares_one_indexing(tmp_path: Path) -> None:
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "query", {"y": 1, "x": 2})
    make_classes(tmp_path / "gallery", {"x": 1, "y": 3})
    splits = load_folder(tmp_path)
    assert list(splits) == ["train", "query", "gallery"]
    assert splits["query"].labels.tolist() == [0, 0, 1] and splits["gallery"].labels.tolist() == [0, 1, 1, 1]
    assert all("/query/x/" in p for p in splits["query"].paths[:2])
    assert has_query_gallery("folder", tmp_path) and not has_query_gallery("folder", tmp_path / "train")


@pytest.mark.parametrize(("fraction", "n_train"), [(0.5, 2), (0.2, 4), (0.75, 1)])
def test_folder_of_classes_splits_by_sorted_class_names(tmp_path: Path, fraction: float, n_train: int) -> None:
    make_classes(tmp_path, {"e": 1, "c": 2, "a": 1, "d": 2, "b": 1})
    splits = load_folder(tmp_path, test_classes=fraction)
    train_classes = sorted({Path(p).parent.name for p in splits["train"].paths})
    test_classes = sorted({Path(p).parent.name for p in splits["test"].paths})
    assert train_classes == list("abcde")[:n_train] and test_classes == list("abcde")[n_train:]
    assert splits["train"].num_classes == n_train and splits["test"].labels.min() == 0
    with pytest.raises(UserError, match="leaves 0 class"):
        load_folder(tmp_path, test_classes=0.9)


def folder_errors(root: Path) -> list[tuple[Path, Path, str]]:
    """Broken folders: (source_path, the path the one-line error names, words it holds)."""
    cases = [(root / "missing", root / "missing", "not found")]
    make_classes(root / "empty" / "train", {"a": 2})
    make_classes(root / "empty" / "test", {"b": 2})
    (root / "empty" / "test" / "c" / "sub").mkdir(parents=True)
    (root / "empty" / "test" / "c" / "readme.txt").write_text("no image here")
    cases.append((root / "empty", root / "empty" / "test" / "c", "holds no images"))
    make_classes(root / "train_only" / "train", {"a": 2})
    cases.append((root / "train_only", root / "train_only", "expected train/ + test/"))
    for split in ("train", "test", "query"):
        make_classes(root / "mixed" / split, {"a": 2})
    cases.append((root / "mixed", root / "mixed", "expected train/ + test/"))
    write_image(root / "loose" / "lonely.png")
    cases.append((root / "loose", root / "loose" / "lonely.png", "outside a class folder"))
    (root / "bare").mkdir()
    (root / "bare" / "readme.txt").write_text("no folders")
    cases.append((root / "bare", root / "bare", "holds no sub-folders; expected train/ + test/"))
    (root / "void" / "sub").mkdir(parents=True)
    (root / "void" / "sub" / "a.txt").write_text("x")
    cases.append((root / "void", root / "void" / "sub", "holds no images"))
    for kind, extra in (("query", "only_q"), ("gallery", "only_g")):
        base = root / f"{kind}_only"
        for split in ("train", "query", "gallery"):
            make_classes(base / split, {"x": 1})
        make_classes(base / kind, {extra: 1})
        cases.append((base, base / kind / extra, "has no counterpart"))
    return cases


def test_folder_errors_exit_2_with_one_line_naming_the_path(tmp_path: Path, capsys) -> None:
    for source, named, words in folder_errors(tmp_path):
        exits_2_naming(capsys, dry_run("--dataset", "folder", "--source_path", str(source)), str(named), words)
    make_classes(tmp_path / "two", {"a": 1, "b": 1})
    exits_2_naming(
        capsys, dry_run("--dataset", "folder", "--source_path", str(tmp_path / "two"), "--test_classes", "0.6"),
        "test_classes", str(tmp_path / "two"), "leaves 0 class(es) for training and 2 for testing",
    )  # fmt: skip
    make_classes(tmp_path / "one", {"a": 3})
    exits_2_naming(capsys, dry_run("--dataset", "folder", "--source_path", str(tmp_path / "one")), "each side")
    exits_2_naming(capsys, dry_run("--dataset", "folder", "--test_classes", "1"), "test_classes")


def linked_data_folder(tmp_path: Path) -> tuple[Path, Path]:
    """`data` (real images on "shared storage") and `linked`, a folder of symbolic links into it."""
    store = tmp_path / "store"
    make_classes(store / "ant", {"2024": 2})  # store/ant/2024/img_*.png, plus a fork and a .txt to skip
    make_classes(store, {"bee": 2, "cow": 1, "dog": 2})
    write_image(store / "loose" / "extra.png", shade=7)
    linked = tmp_path / "linked"
    for name in ("train", "test"):
        (linked / name).mkdir(parents=True)
    (linked / "train" / "ant").symlink_to(store / "ant")  # a class folder that is a link
    (linked / "train" / "bee").mkdir()
    (linked / "train" / "bee" / "old").symlink_to(store / "bee")  # a linked folder inside a class folder
    (linked / "train" / "bee" / "new.png").symlink_to(store / "loose" / "extra.png")  # a linked image
    (linked / "test" / "cow").symlink_to(store / "cow")
    (linked / "test" / "dog").symlink_to(store / "dog")
    (tmp_path / "root").symlink_to(linked)  # the data folder itself a link
    return store, tmp_path / "root"


def test_symlinked_data_folders_train_like_copies_and_a_link_cycle_is_one_line(tmp_path: Path, capsys) -> None:
    store, root = linked_data_folder(tmp_path)
    splits = load_folder(root)
    assert relative(splits["train"].paths, root / "train") == [
        "ant/2024/img_00.png", "ant/2024/img_01.png", "bee/new.png", "bee/old/img_00.png", "bee/old/img_01.png",
    ]  # fmt: skip
    assert splits["train"].labels.tolist() == [0, 0, 1, 1, 1]
    assert relative(splits["test"].paths, root / "test") == ["cow/img_00.png", "dog/img_00.png", "dog/img_01.png"]
    argv = dry_run("--dataset", "folder", "--source_path", str(root), "--samples_per_class", "1")
    assert main_module.main([*argv, "--check_images"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["splits"] == {
        "train": {"classes": 2, "images": 5},
        "test": {"classes": 2, "images": 3},
    }
    loop = store / "bee" / "again"
    loop.symlink_to(store)  # store/bee/again/bee/again/... never ends
    exits_2_naming(
        capsys, [*argv, "--check_images"], f"link cycle: {root}/train/bee/old/again -> {store}", "leads back"
    )
    loop.unlink()
    (store / "cow" / "gone.png").symlink_to(store / "absent.png")
    exits_2_naming(capsys, argv, f"{root}/test/cow/gone.png is a broken link")


# ------------------------------------------------------------------------------------------------- csv


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def manifest_images(root: Path) -> list[Path]:
    return [write_image(root / "img" / f"{k}.jpg", shade=17 * k) for k in range(8)]


def test_csv_train_and_validation_rows_relabelled_per_split(tmp_path: Path) -> None:
    images = manifest_images(tmp_path)
    absolute = images[7]
    rows = ["10,img/0.jpg,train,x", "9,img/1.jpg,train,x", "10,img/2.jpg,train,x", "2,img/3.jpg,validation,y",
            "30,img/4.jpg,validation,", f"2,{absolute},validation,z"]  # fmt: skip
    manifest = write_csv(tmp_path / "meta" / ".." / "data.csv", "label,path,split,comment", rows)
    splits = load_csv(manifest)
    assert list(splits) == ["train", "test"]
    assert relative(splits["train"].paths, tmp_path) == ["img/0.jpg", "img/1.jpg", "img/2.jpg"]
    assert splits["train"].labels.tolist() == [1, 0, 1]  # integer labels sort numerically: 9 < 10
    assert splits["test"].paths[-1] == str(absolute) and splits["test"].labels.tolist() == [0, 1, 0]
    assert not has_query_gallery("csv", manifest)
    # text labels sort as text; all-true query/gallery flags keep one test split
    rows = ["cat,img/0.jpg,train,,", "ant,img/1.jpg,train,,", "b,img/2.jpg,validation,True,1",
            "a,img/3.jpg,validation,true,yes"]  # fmt: skip
    splits = load_csv(write_csv(tmp_path / "text.csv", "label,path,split,is_query,is_gallery", rows))
    assert splits["train"].labels.tolist() == [1, 0] and list(splits) == ["train", "test"]
    assert splits["test"].labels.tolist() == [1, 0]


def test_csv_query_gallery_rows_and_a_row_in_both(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    rows = ["1,img/0.jpg,train,,", "2,img/1.jpg,train,,", "5,img/2.jpg,validation,True,False",
            "7,img/3.jpg,validation,0,1", "7,img/4.jpg,validation,1,1",
            "5,img/5.jpg,validation,False,True"]  # fmt: skip
    manifest = write_csv(tmp_path / "qg.csv", "label,path,split,is_query,is_gallery", rows)
    splits = load_csv(manifest)
    assert list(splits) == ["train", "query", "gallery"]
    assert relative(splits["query"].paths, tmp_path) == ["img/2.jpg", "img/4.jpg"]
    assert relative(splits["gallery"].paths, tmp_path) == ["img/3.jpg", "img/4.jpg", "img/5.jpg"]
    assert splits["query"].labels.tolist() == [0, 1] and splits["gallery"].labels.tolist() == [1, 1, 0]
    assert has_query_gallery("csv", manifest)
    from engine.evaluation import same_item_indices

    # the row in both splits is its own gallery item 1: the evaluation excludes it from its neighbours
    assert same_item_indices(splits).tolist() == [-1, 1]


def csv_errors(root: Path) -> list[tuple[list[str], str, str]]:
    """Broken manifests: (rows with header, the path the one-line error names, words it holds)."""
    images = manifest_images(root)
    header = "label,path,split"
    return [
        (["label,path", "1,img/0.jpg"], "data.csv", "lacks the column(s) split"),
        ([header, "1,img/0.jpg,train", "1,img/1.jpg,validation", "2,./img/0.jpg,train"], str(images[0]), "twice"),
        ([header, "1,img/0.jpg,train", "1,img/1.jpg,test"], "data.csv line 3", "'test' must be train or validation"),
        ([header, "1,img/0.jpg,train", "1,img/gone.jpg,validation"], str(root / "img" / "gone.jpg"), "not found"),
        ([header, "1,img/0.jpg,train"], "data.csv", "no validation rows"),
        ([f"{header},is_query,is_gallery", "1,img/0.jpg,train,,", "1,img/1.jpg,validation,maybe,1"],
         "data.csv line 3", "is_query 'maybe' must be true or false"),
        ([f"{header},is_query", "1,img/0.jpg,train,"], "data.csv", "has the column is_query but not is_gallery"),
        ([f"{header},is_query,is_gallery", "1,img/0.jpg,train,,", "1,img/1.jpg,validation,1,1",
          "2,img/2.jpg,validation,1,0"], "data.csv", "label '2' of"),
        ([f"{header},is_query,is_gallery", "1,img/0.jpg,train,,", "1,img/1.jpg,validation,1,1",
          "2,img/2.jpg,validation,0,1"], "data.csv", "has gallery rows but no query rows"),
    ]  # fmt: skip


def test_csv_errors_exit_2_with_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "data.csv"
    for lines, named, words in csv_errors(tmp_path):
        manifest.write_text("\n".join(lines) + "\n")
        exits_2_naming(capsys, dry_run("--dataset", "csv", "--source_path", str(manifest)), named, words)
    exits_2_naming(capsys, dry_run("--dataset", "csv", "--source_path", str(tmp_path / "nope.csv")), "nope.csv")
    exits_2_naming(capsys, dry_run("--dataset", "csv", "--source_path", str(tmp_path)), str(tmp_path), "not a file")


# ------------------------------------------------------------------------------ dry run, samplers, metrics


def test_dry_run_summary_counts_small_classes_and_check_images_names_corrupt_files(tmp_path: Path, capsys) -> None:
    make_classes(tmp_path / "train", {"a": 3, "b": 1, "c": 2})
    make_classes(tmp_path / "test", {"d": 2, "e": 2})
    argv = dry_run("--dataset", "folder", "--source_path", str(tmp_path), "--samples_per_class", "2")
    assert main_module.main([*argv, "--check_images"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "dataset": "folder",
        "splits": {"train": {"classes": 3, "images": 6, "small_classes": 1}, "test": {"classes": 2, "images": 4}},
    }
    assert main_module.main([*argv, "--val_classes", "0.34"]) == 0  # the last of the 3 train classes validates
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["splits"] == {
        "train": {"classes": 2, "images": 4, "small_classes": 1},
        "test": {"classes": 2, "images": 4},
        "val": {"classes": 1, "images": 2},
    }
    bad = tmp_path / "test" / "e" / "img_01.png"
    bad.write_bytes(bad.read_bytes()[:30])
    assert main_module.main([*argv, "--check_images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{bad}: ") and err[-1] == "error: 1 image(s) could not be read (listed above)"


@pytest.mark.parametrize("sampler", ["class_random", "m_per_class"])
def test_a_class_smaller_than_samples_per_class_is_sampled_with_replacement(sampler: str) -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 2, 3, 3, 3, 3])  # class 1: one image, samples_per_class 3
    batches = build_batch_sampler(sampler, labels, 6, 3, seed=0, num_batches=40)
    drawn = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        drawn.extend(index for batch in batches for index in batch)
    groups = np.asarray(drawn).reshape(-1, 3)
    small = groups[labels[groups[:, 0]] == 1]
    assert len(small) > 0 and (small == 4).all()  # the one image, three times
    assert (labels[groups] == labels[groups[:, :1]]).all()  # every group stays within one class


def test_query_gallery_data_get_the_in_shop_metric_rules(tmp_path: Path, capsys) -> None:
    make_classes(tmp_path / "qg" / "train", {"a": 2})
    make_classes(tmp_path / "qg" / "query", {"x": 1})
    make_classes(tmp_path / "qg" / "gallery", {"x": 1})
    make_classes(tmp_path / "tt" / "train", {"a": 2})
    make_classes(tmp_path / "tt" / "test", {"x": 2})
    qg = config_from_dict({"dataset": "folder", "source_path": str(tmp_path / "qg")})
    assert qg.evaluation_metrics == list(QUERY_GALLERY_METRICS)
    tt = config_from_dict({"dataset": "folder", "source_path": str(tmp_path / "tt")})
    assert "nmi" in tt.evaluation_metrics
    exits_2_naming(
        capsys, ["--dataset", "folder", "--source_path", str(tmp_path / "qg"), "--evaluation_metrics", "recall@1",
                 "nmi", "--dry_run"], "nmi do not exist for folder data with query and gallery splits",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- training


def tiny_training(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset", "folder", "--source_path", str(data), "--save_path", str(runs), "--save_name", name,
        "--arch", "test_resnet", "--pretrained", "false", "--frozen_bn", "false", "--resolution", "32",
        "--batch_size", "8", "--samples_per_class", "2", "--iterations_per_epoch", "2", "--epochs", "1",
        "--kernels", "0", "--device", "cpu", "--embed_dim", "16", "--warmup", "0", "--d_warmup", "0",
        "--domain_hidden", "16", "--class_hidden1", "16", "--class_hidden2", "8", "--eval_batch_size", "32",
        "--plots", "false", *extra,
    ]  # fmt: skip


def test_training_on_a_folder_of_classes_and_on_query_gallery_folders(tmp_path: Path) -> None:
    make_classes(tmp_path / "classes", {f"c{k}": 2 + k % 3 for k in range(8)})
    assert main_module.main(tiny_training(tmp_path / "classes", tmp_path / "runs", "tt")) == 0
    summary = json.loads((tmp_path / "runs" / "folder" / "tt" / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and {"recall@1", "nmi"} <= set(summary["last"])
    make_classes(tmp_path / "qg" / "train", {f"c{k}": 3 for k in range(4)})
    make_classes(tmp_path / "qg" / "query", {f"q{k}": 1 for k in range(3)})
    make_classes(tmp_path / "qg" / "gallery", {f"q{k}": 2 for k in range(3)})
    assert main_module.main(tiny_training(tmp_path / "qg", tmp_path / "runs", "qg")) == 0
    summary = json.loads((tmp_path / "runs" / "folder" / "qg" / "summary.json").read_text())
    assert set(summary["initial"]) == set(summary["last"]) == set(QUERY_GALLERY_METRICS)


@pytest.mark.parametrize(("kernels", "suffix"), [("0", ".png"), ("2", ".jpg")])
def test_a_corrupt_image_during_training_exits_2_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys, monkeypatch, kernels: str, suffix: str
) -> None:
    """A file that breaks after epoch 0: a PNG (PIL decoder) in the main process, a truncated JPEG (torchvision
    decoder, then PIL) in a loader worker; both stop the run with one line naming the file."""
    make_classes(tmp_path / "data" / "train", {f"c{k}": 2 for k in range(4)}, suffix=suffix)
    make_classes(tmp_path / "data" / "test", {f"t{k}": 2 for k in range(2)})
    corrupted = sorted((tmp_path / "data" / "train").glob(f"*/img_*{suffix}"))
    last = tmp_path / "runs" / "folder" / "bad" / "checkpoints" / "last.pt"
    saved: dict[str, bytes] = {}
    original = engine.trainer._print_epoch

    def corrupt_after_epoch_0(epoch, *args):
        original(epoch, *args)
        saved["last"] = last.read_bytes()
        for path in corrupted:
            path.write_bytes(path.read_bytes()[:40])  # the header survives, the pixels do not

    monkeypatch.setattr(engine.trainer, "_print_epoch", corrupt_after_epoch_0)
    argv = tiny_training(tmp_path / "data", tmp_path / "runs", "bad", "--epochs", "2", "--kernels", kernels)
    assert main_module.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image "), lines
    assert any(str(path) in lines[0] for path in corrupted), lines
    assert last.read_bytes() == saved["last"]
    assert torch.load(last, weights_only=True)["epoch"] == 1
