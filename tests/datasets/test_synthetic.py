"""Synthetic benchmark: deterministic bytes, caching, regeneration, atomicity, layout, class design."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datasets import config as dataset_config

import datasets.synthetic as synthetic
from datasets import build_datasets, describe, ensure_synthetic
from utilities.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(n_classes=4, images_per_class=3, image_size=32)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = ensure_synthetic(tmp_path / "a", **SMALL, seed=3, workers=1)
    two = ensure_synthetic(tmp_path / "b", **SMALL, seed=3, workers=2)
    assert one == tmp_path / "a" / "synthetic" / "seed3-4x3-32px"
    assert tree_bytes(one) == tree_bytes(two)
    other = ensure_synthetic(tmp_path / "c", **SMALL, seed=4, workers=1)
    differing = set(tree_bytes(one).items()) ^ set(tree_bytes(other).items())
    assert len(differing) > 10


def test_layout_and_splits(tmp_path: Path) -> None:
    folder = ensure_synthetic(tmp_path, n_classes=6, images_per_class=3, image_size=40, seed=0, workers=1)
    class_folders = sorted(p.name for p in (folder / "images").iterdir())
    assert [name[:4] for name in class_folders] == ["001.", "002.", "003.", "004.", "005.", "006."]
    for name in class_folders:
        files = sorted(p.name for p in (folder / "images" / name).iterdir())
        assert files == ["img_0000.jpg", "img_0001.jpg", "img_0002.jpg"]
    with Image.open(folder / "images" / class_folders[0] / "img_0000.jpg") as image:
        assert image.size == (40, 40) and image.mode == "RGB"
    metadata = json.loads((folder / "synthetic.json").read_text())
    assert metadata["parameters"]["n_classes"] == 6 and len(metadata["classes"]) == 6
    cfg = dataset_config(tmp_path, "synthetic", synthetic_classes=6, synthetic_image_size=40)
    splits = build_datasets(cfg)
    assert describe(splits, "synthetic")["splits"] == {
        "train": {"classes": 3, "images": 9},
        "test": {"classes": 3, "images": 9},
    }
    assert all("/004." in p or "/005." in p or "/006." in p for p in splits["test"].paths)


def test_second_call_reuses_and_other_parameters_have_their_own_folder(tmp_path: Path, monkeypatch) -> None:
    folder = ensure_synthetic(tmp_path, **SMALL, seed=0, workers=1)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("must not regenerate")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "generate", fail)
        assert ensure_synthetic(tmp_path, **SMALL, seed=0) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before

    # other parameters (here: a seed and an image count) are generated beside it and leave it untouched
    other_seed = ensure_synthetic(tmp_path, **SMALL, seed=1, workers=1)
    more = ensure_synthetic(tmp_path, n_classes=4, images_per_class=5, image_size=32, seed=0, workers=1)
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == [
        "seed0-4x3-32px",
        "seed0-4x5-32px",
        "seed1-4x3-32px",
    ]
    assert other_seed.name == "seed1-4x3-32px" and more.name == "seed0-4x5-32px"
    assert len(list((more / "images").rglob("*.jpg"))) == 20
    assert json.loads((more / "synthetic.json").read_text())["parameters"]["images_per_class"] == 5
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before

    # a generation of another generator version is replaced in place
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert ensure_synthetic(tmp_path, **SMALL, seed=0, workers=1) == folder
    parameters = json.loads((folder / "synthetic.json").read_text())["parameters"]
    assert parameters["generator_version"] == synthetic.GENERATOR_VERSION


def test_earlier_layout_is_replaced(tmp_path: Path) -> None:
    """A benchmark in the earlier layout (images/ and synthetic.json directly in synthetic/) is generated data."""
    earlier = ensure_synthetic(tmp_path / "old", **SMALL, seed=0, workers=1)
    container = tmp_path / "new" / "synthetic"
    shutil.copytree(earlier / "images", container / "images")
    shutil.copy(earlier / "synthetic.json", container)
    folder = ensure_synthetic(tmp_path / "new", **SMALL, seed=0, workers=1)
    assert sorted(p.name for p in container.iterdir()) == ["seed0-4x3-32px"]
    assert tree_bytes(folder) == tree_bytes(earlier)


def test_interrupted_generation_is_not_taken_as_complete(tmp_path: Path, monkeypatch) -> None:
    calls = itertools.count()
    real = synthetic._render_class

    def crash_on_third(task):
        if next(calls) == 2:
            raise KeyboardInterrupt
        real(task)

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "_render_class", crash_on_third)
        with pytest.raises(KeyboardInterrupt):
            ensure_synthetic(tmp_path, **SMALL, seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a leftover temporary one

    # a folder without metadata (e.g. copied half-way) is regenerated, not trusted
    (synthetic.generation_folder(tmp_path, **SMALL, seed=0) / "images" / "001.x").mkdir(parents=True)
    folder = ensure_synthetic(tmp_path, **SMALL, seed=0, workers=1)
    assert len(list((folder / "images").iterdir())) == 4
    assert not (folder / "images" / "001.x").exists()


def test_foreign_folder_is_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "my_thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="synthetic: .*synthetic exists but does not look like a generated benchmark"):
        ensure_synthetic(tmp_path, **SMALL, seed=0, workers=1)
    assert (tmp_path / "synthetic" / "my_thesis.tex").read_text() == "precious"

    # nor anything unexpected inside a generation folder
    folder = ensure_synthetic(tmp_path / "b", **SMALL, seed=0, workers=1)
    (folder / "synthetic.json").unlink()  # unfinished: would be regenerated, were it not for the note
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="seed0-4x3-32px exists but does not look like a generated benchmark"):
        ensure_synthetic(tmp_path / "b", **SMALL, seed=0, workers=1)
    assert (folder / "notes.txt").read_text() == "precious" and (folder / "images").is_dir()


def test_bad_parameters() -> None:
    with pytest.raises(UserError, match=r"synthetic_classes: expected an integer in \[2, 1000\], got 1"):
        ensure_synthetic(Path("/nonexistent"), n_classes=1, images_per_class=3, image_size=32, seed=0)
    with pytest.raises(UserError, match="synthetic_image_size"):
        ensure_synthetic(Path("/nonexistent"), n_classes=4, images_per_class=3, image_size=8, seed=0)


def test_class_design_shares_colours_and_separates_classes() -> None:
    classes = synthetic.design_classes(100, seed=0)
    visible = [np.array(c.visible()) for c in classes]
    assert all(np.count_nonzero(a != b) >= 2 for a, b in itertools.combinations(visible, 2))
    schemes = Counter((c.body, c.wing, c.accent) for c in classes)
    assert len(schemes) == 25 and set(schemes.values()) == {4}  # every colour scheme serves 4 classes
    for key, values in synthetic.ATTRIBUTES.items():
        assert {getattr(c, key) for c in classes} == set(values)  # every part value is in use
    assert synthetic.design_classes(100, seed=0) == classes


def test_generation_inside_a_process_group_does_not_fork(tmp_path: Path) -> None:
    """A rank of torchrun or a SLURM task runs communication threads; a forked pool child can wait forever on a
    lock one of them held. Generation there uses spawned workers, with the same bytes as forked ones."""
    import torch.distributed as dist

    assert synthetic._start_method() == "fork"
    forked = ensure_synthetic(tmp_path / "forked", 4, 3, 32, seed=3, workers=2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert synthetic._start_method() == "spawn"
        spawned = ensure_synthetic(tmp_path / "spawned", 4, 3, 32, seed=3, workers=2)
    finally:
        dist.destroy_process_group()
    assert tree_bytes(forked) and tree_bytes(forked) == tree_bytes(spawned)


def test_generation_ends_in_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    """submitit's job process ignores SIGTERM (it only logs it); forked pool workers inherit that handler, and the
    pool, which ends its workers with SIGTERM, waited for them forever (a 1-task SLURM job hung)."""
    code = (
        "import signal, sys; from pathlib import Path; from datasets import ensure_synthetic; "
        "signal.signal(signal.SIGTERM, lambda *args: None); "
        "ensure_synthetic(Path(sys.argv[1]), 4, 3, 32, seed=0, workers=2)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(synthetic.generation_folder(tmp_path, 4, 3, 32, 0).rglob("*.jpg"))) == 12
