"""The trained model put to use: load_model + embed, retrieve.py (index, --add, queries, outputs, grid, errors),
the worst-queries picture of eval.py --show."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_fixtures import class_folders, tiny_config, write_checkpoint
from PIL import Image
from test_worst_queries import ranked_worst_queries

import eval as eval_module
import retrieve
from architectures import build_model, input_spec_for
from config.checkpoints import load_model
from datasets import build_datasets
from engine.evaluation import embed_dataset
from engine.search_index import sidecar_path

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("retrieve")
    cfg = tiny_config(tmp / "data")
    splits = build_datasets(cfg, input_spec_for(cfg.arch))  # generates the synthetic images
    folders = class_folders(tmp / "data")
    images = sorted(str(p) for p in (tmp / "data" / "synthetic").glob("*/images/*/*.jpg"))

    def manifest(name: str, classes: list[Path]) -> Path:
        path = tmp / name
        rows = [(f.relative_to(tmp) / p.name, f.name) for f in classes for p in sorted(f.glob("*.jpg"))]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "path", "split", "is_gallery"])
            writer.writerows([(label, str(rel), "test", "True") for rel, label in rows])
            writer.writerow(["ignored", str(rows[0][0]), "test", "False"])  # filtered out by is_gallery
        return path

    world = {
        "tmp": tmp,
        "cfg": cfg,
        "splits": splits,
        "folders": folders,
        "images": images,
        "checkpoint": write_checkpoint(tmp / "run" / "checkpoints" / "best.pt", cfg),
        "other_dim": write_checkpoint(tmp / "other_dim.pt", tiny_config(tmp / "data", embed_dim=8), seed=1),
        "other_weights": write_checkpoint(tmp / "other_weights.pt", cfg, seed=1),
        "first_half": manifest("first_half.csv", folders[:3]),
        "second_half": manifest("second_half.csv", folders[3:]),
    }
    query_dir = tmp / "queries" / folders[4].name  # a labelled query folder: copies of gallery images
    query_dir.mkdir(parents=True)
    for source in sorted(folders[4].glob("*.jpg"))[:2]:
        shutil.copy(source, query_dir / f"copy_{source.name}")
    broken = tmp / "broken" / "a"
    broken.mkdir(parents=True)
    shutil.copy(images[0], broken / "good.jpg")
    (broken / "bad.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    return world


def run_retrieve(capsys, *args: object) -> tuple[int, str, str]:
    code = retrieve.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------- load_model


def test_load_model_embeds_like_the_evaluation(world) -> None:
    model = load_model(world["checkpoint"], device="cpu")
    test = world["splits"]["test"]
    reference = build_model(world["cfg"])
    reference.load_state_dict(torch.load(world["checkpoint"], weights_only=True)["model"])
    expected, _ = embed_dataset(reference, test, device=torch.device("cpu"), batch_size=16)
    embedded = model.embed(test.paths, batch_size=5)
    assert embedded.dtype == torch.float32 and embedded.shape == (len(test), 16)
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(len(test)))
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=0)
    pil = [Image.open(path).convert("RGB") for path in test.paths[:3]]
    torch.testing.assert_close(model.embed(pil), expected[:3], atol=1e-5, rtol=0)
    batch = torch.stack([model.preprocess(path) for path in test.paths[:3]])
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(model.embed(batch), expected[:3], atol=1e-5, rtol=0)
    assert model.preprocessing.crop == 32 and model.preprocessing.resize == 37
    assert load_model(world["tmp"] / "run").checkpoint == world["checkpoint"]  # a run folder: its best.pt


def test_load_model_refuses_what_is_not_a_checkpoint(world) -> None:
    from utilities.errors import UserError

    text = world["tmp"] / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="notes.pt is not a readable checkpoint"):
        load_model(text)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_model(world["tmp"] / "absent.pt")


# -------------------------------------------------------------------------------------------- retrieve.py


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_build_add_query_outputs_and_grid(world, capsys) -> None:
    tmp, checkpoint = world["tmp"], world["checkpoint"]
    index = tmp / "gallery.index"
    common = ["--checkpoint", checkpoint, "--workers", 0, "--batch_size", 5]
    code, out, err = run_retrieve(capsys, *common, "--gallery", world["first_half"], "--index", index)
    assert code == 0, err
    meta = json.loads(sidecar_path(index).read_text())
    assert len(meta["paths"]) == 12 and meta["model"]["embed_dim"] == 16
    assert meta["labels"][:4] == [world["folders"][0].name] * 4
    assert meta["model"]["checkpoint"] == str(checkpoint.resolve())
    code, out, err = run_retrieve(capsys, *common, "--index", index, "--add", world["second_half"])
    assert code == 0, err
    assert "12 -> 24 images" in out
    import faiss

    assert faiss.read_index(str(index)).ntotal == 24
    # adding images already in the index changes nothing
    images_dir = world["folders"][0].parent
    code, out, err = run_retrieve(capsys, *common, "--index", index, "--add", images_dir)
    assert code == 0, err
    assert "skipped 24 image(s) already in the index" in out and "24 -> 24 images" in out
    assert faiss.read_index(str(index)).ntotal == 24 and len(json.loads(sidecar_path(index).read_text())["paths"]) == 24

    query = sorted(world["folders"][4].glob("*.jpg"))[1]
    results = tmp / "results.csv"
    grid = tmp / "grid.png"
    code, out, err = run_retrieve(
        capsys, *common, "--index", index, "--query", query, "--top", 4, "--output", results, "--grid", grid
    )
    assert code == 0, err
    rows = _rows(results)
    assert list(rows[0]) == ["query", "query_label", "rank", "gallery", "gallery_label", "similarity"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert rows[0]["gallery"] == str(query.resolve()) and abs(float(rows[0]["similarity"]) - 1) < 1e-5
    assert rows[0]["query_label"] == "" and rows[0]["gallery_label"] == world["folders"][4].name
    assert f"| 1 | 1.0000 | {query.resolve()} | {world['folders'][4].name} |" in out
    with Image.open(grid) as picture:
        picture.verify()
        assert picture.format == "PNG"

    # the same search over a gallery built from scratch (no saved index) gives the same results
    scratch = tmp / "scratch.json"
    code, out, err = run_retrieve(
        capsys, *common, "--gallery", images_dir, "--query", query, "--top", 4, "--output", scratch
    )
    assert code == 0, err
    fresh = json.loads(scratch.read_text())
    assert list(fresh[0]) == ["query", "query_label", "rank", "gallery", "gallery_label", "similarity"]
    assert [r["gallery"] for r in fresh] == [r["gallery"] for r in rows]
    assert [r["gallery_label"] for r in fresh] == [r["gallery_label"] for r in rows]
    np.testing.assert_allclose([r["similarity"] for r in fresh], [float(r["similarity"]) for r in rows], atol=1e-5)


def test_labelled_query_folder_and_json_output(world, capsys) -> None:
    tmp = world["tmp"]
    output, grid = tmp / "labelled.json", tmp / "labelled.png"
    code, out, err = run_retrieve(
        capsys,
        "--checkpoint", world["checkpoint"], "--workers", 0, "--gallery", world["second_half"],
        "--query", tmp / "queries", "--top", 3, "--output", output, "--grid", grid,
    )  # fmt: skip
    assert code == 0, err
    records = json.loads(output.read_text())
    assert len(records) == 2 * 3
    assert {r["query_label"] for r in records} == {world["folders"][4].name}
    for record in records[::3]:  # a copy of a gallery image finds the original first
        assert Path(record["gallery"]).name == Path(record["query"]).name.removeprefix("copy_")
        assert record["similarity"] == pytest.approx(1.0, abs=1e-5)
    with Image.open(grid) as picture:
        assert picture.size[0] > 300 and picture.size[1] > 200


def test_linked_gallery_and_query_folders_read_like_copies(world, capsys) -> None:
    """Class folders, the gallery folder itself and a query image that are symbolic links; a link cycle."""
    tmp, folders = world["tmp"] / "links", world["folders"][:3]
    (tmp / "classes").mkdir(parents=True)
    for folder in folders:
        (tmp / "classes" / folder.name).symlink_to(folder)
    (tmp / "gallery").symlink_to(tmp / "classes")
    (tmp / "query.jpg").symlink_to(sorted(folders[1].glob("*.jpg"))[0])
    index, output = tmp / "linked.index", tmp / "linked.json"
    code, out, err = run_retrieve(
        capsys, "--checkpoint", world["checkpoint"], "--workers", 0, "--gallery", tmp / "gallery", "--index", index,
        "--query", tmp / "query.jpg", "--top", 1, "--output", output,
    )  # fmt: skip
    assert code == 0, err
    meta = json.loads(sidecar_path(index).read_text())
    assert meta["paths"] == [str(p.resolve()) for folder in folders for p in sorted(folder.glob("*.jpg"))]
    assert meta["labels"] == [folder.name for folder in folders for _ in folder.glob("*.jpg")]
    [record] = json.loads(output.read_text())
    assert record["gallery"] == str((tmp / "query.jpg").resolve()) and record["gallery_label"] == folders[1].name
    loop = folders[0] / "loop"
    loop.symlink_to(tmp / "classes")  # classes/<first>/loop/<first>/loop/... never ends
    try:
        code, out, err = run_retrieve(capsys, "--checkpoint", world["checkpoint"], "--gallery", tmp / "classes")
    finally:
        loop.unlink()
    link = tmp / "classes" / folders[0].name / "loop"
    assert code == 2 and err.strip().splitlines() == [
        f"error: link cycle: {link} -> {tmp / 'classes'} leads back to {tmp / 'classes'}, which contains it; "
        "remove the link or point it elsewhere"
    ], err


def test_user_errors_exit_2_with_one_line_naming_the_problem(world, capsys) -> None:
    tmp, checkpoint = world["tmp"], world["checkpoint"]
    index = tmp / "errors.index"
    assert retrieve.main(["--checkpoint", str(checkpoint), "--workers", "0", "--gallery", str(world["first_half"]),
                          "--index", str(index)]) == 0  # fmt: skip
    shutil.copy(index, tmp / "orphan.index")
    notes = tmp / "notes.txt"
    notes.write_text("not a checkpoint")
    query = world["images"][0]
    cases = {
        "missing checkpoint": (["--checkpoint", tmp / "absent.pt", "--gallery", world["first_half"]], "absent.pt"),
        "not a checkpoint": (["--checkpoint", notes, "--gallery", world["first_half"]], "notes.txt"),
        "missing gallery": (["--checkpoint", checkpoint, "--gallery", tmp / "nowhere"], "nowhere does not exist"),
        "missing query": (["--checkpoint", checkpoint, "--index", index, "--query", tmp / "q.jpg"], "q.jpg"),
        "missing index": (["--checkpoint", checkpoint, "--index", tmp / "none.index", "--query", query], "none.index"),
        "no sidecar": (["--checkpoint", checkpoint, "--index", tmp / "orphan.index", "--query", query], "sidecar"),
        "dimension": (["--checkpoint", world["other_dim"], "--index", index, "--query", query], "8 dimensions"),
        "other weights": (["--checkpoint", world["other_weights"], "--index", index, "--query", query], "not the"),
        "top": (["--checkpoint", checkpoint, "--index", index, "--query", query, "--top", 0], "--top"),
        "unreadable image": (
            ["--checkpoint", checkpoint, "--gallery", tmp / "broken", "--workers", 1],
            "cannot read image " + str((tmp / "broken" / "a" / "bad.jpg").resolve()),
        ),
        "index exists": (["--checkpoint", checkpoint, "--gallery", world["first_half"], "--index", index], "exists"),
        "add without index": (["--checkpoint", checkpoint, "--add", world["first_half"]], "--add needs"),
        "output suffix": (
            ["--checkpoint", checkpoint, "--index", index, "--query", query, "--output", tmp / "r.txt"],
            ".csv or .json",
        ),
    }
    for name, (args, message) in cases.items():
        code, out, err = run_retrieve(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (name, out, err)
        assert len(lines) == 1 and message in lines[0], (name, err)


def test_command_line_exit_code(world) -> None:
    done = subprocess.run(
        [sys.executable, "retrieve.py", "--checkpoint", str(world["checkpoint"]), "--gallery", "x", "--top", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --top: K must be at least 1, got 0"


# ------------------------------------------------------------------------------------- worst queries


def test_worst_queries_are_the_lowest_map_at_r() -> None:
    centres = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [-1.0, 0.0]}
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    points = torch.tensor([centres[int(c)] for c in labels]) + 0.01 * torch.arange(10.0)[:, None]
    points[9] = torch.tensor([0.05, 1.0])  # a class-0 item inside class 1: the worst query
    points = torch.nn.functional.normalize(points, dim=1)
    paths = [f"img{i}.jpg" for i in range(10)]
    rows = ranked_worst_queries({"test": (points, labels)}, {"test": paths}, n=2, top=3)
    assert [row.query for row in rows][0] == "img9.jpg"
    assert rows[0].note == "MAP@R 0.00" and rows[0].query_label == "0"
    assert [label for _, _, label in rows[0].results] == ["1", "1", "1"]
    assert all(-1 <= s <= 1 for _, s, _ in rows[0].results)
    assert len(rows) == 2


def test_worst_queries_never_show_a_query_its_own_gallery_copy() -> None:
    """Query -> gallery where a query is also in the gallery (a CSV row that is both): as in the metrics, its
    own copy is not among its results, and its MAP@R counts only the other items of its class."""
    gallery = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0], [1.0, 0.3]]), dim=1)
    gallery_labels = np.array([0, 1, 1, 0])
    queries, query_labels = gallery[:1].clone(), np.array([0])  # query 0 is gallery image 0
    embedded = {"query": (queries, query_labels), "gallery": (gallery, gallery_labels)}
    paths = {"query": ["g0.jpg"], "gallery": ["g0.jpg", "g1.jpg", "g2.jpg", "g3.jpg"]}
    (row,) = ranked_worst_queries(embedded, paths, n=1, top=3)
    assert [image for image, _, _ in row.results] == ["g3.jpg", "g2.jpg", "g1.jpg"]
    assert row.note == "MAP@R 1.00"  # R = 1 (g3 only), found first


def test_eval_show_draws_the_worst_queries(world, capsys) -> None:
    tmp, checkpoint = world["tmp"], world["checkpoint"]
    base = ["--checkpoint", str(checkpoint), "--evaluation_metrics", "recall@1", "--device", "cpu", "--kernels", "0"]
    assert eval_module.main([*base, "--show", "3"]) == 0
    picture = tmp / "run" / "worst_queries.png"  # the checkpoint's run folder
    with Image.open(picture) as image:
        image.verify()
    output = tmp / "eval_out" / "metrics.json"
    assert eval_module.main([*base, "--show", "2", "--output", str(output)]) == 0
    assert (output.parent / "worst_queries.png").is_file() and output.is_file()
    assert "worst queries drawn to" in capsys.readouterr().out
    assert eval_module.main(["--embeddings", "x.npz", "--show", "2"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
