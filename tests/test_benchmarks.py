"""Benchmarks and the GPU check run and report what they promise; the torchvision decoding path they chose
keeps the PIL pipeline's semantics (same pixels decoded, same crop/flip draws, same normalisation)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import data_speed, train_step
from config import config_from_dict
from datasets import ImageDataset, build_datasets
from datasets.base import load_rgb, load_rgb_uint8
from datasets.cub200 import load_cub200
from datasets.transforms import IMAGENET, build_transform
from engine.data import SeededAugmentation
from utilities.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------- benchmarks/train_step.py


def test_train_step_benchmark_writes_medians_and_prints_the_table(tmp_path, capsys) -> None:
    output = tmp_path / "step.json"
    argv = ["--arch", "test_resnet", "--resolution", "32", "--batch_size", "8", "--iterations", "2"]
    assert train_step.main([*argv, "--threads", "1", "--output", str(output)]) == 0
    medians = json.loads(output.read_text())
    assert set(medians) == {"fused", "two_forward", "proxy_anchor"}
    assert all(isinstance(v, float) and 0 < v < 60 for v in medians.values())
    table = capsys.readouterr().out
    assert "test_resnet 32 px, batch 8, cpu, fp32" in table
    assert "| variant | median s/iter | min s/iter | images/s | speed-up vs two_forward |" in table
    for name in medians:
        assert f"| {name} | {medians[name]:.4f} |" in table
    assert "| two_forward | " in table and "| 1.00x |" in table


def test_train_step_benchmark_uses_the_cub_criterion_and_one_batch() -> None:
    cfg = train_step.benchmark_config("test_resnet", 32, 8)
    assert (cfg.pos_alpha, cfg.neg_alpha, cfg.mix_alpha, cfg.mix_beta) == (40, 100, 3, 0.5)
    assert cfg.dada and cfg.pos_class_mix and not cfg.pretrained
    assert not train_step.benchmark_config("test_resnet", 32, 8, dada=False).dada
    images, labels = train_step.random_batch(8, 2, 32, 100)
    assert images.shape == (8, 3, 32, 32)
    assert torch.equal(labels[0::2], labels[1::2]) and labels[0::2].unique().numel() == 4


def test_train_step_benchmark_rejects_bad_sizes() -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_step.parse_args(["--batch_size", "7"])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------------- benchmarks/gpu_check.sh


def test_gpu_check_small_runs_every_part_on_the_cpu(tmp_path) -> None:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--small"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| part | item | value | note |") :]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["small"] is True
    assert len(result["rows"]) == table.count("\n| ") and "| 1 tests | pytest -m gpu |" in table
    if not torch.cuda.is_available():
        assert result["tests"]["counts"] == {"skipped": 4}  # the gpu tests, skipped with a reason
    assert set(result["step_seconds"]) == {"two_forward fp32", "fused fp32", "fused bf16 channels_last"}
    assert set(result["evaluation"]) == {"CUB-sized", "SOP-sized"}
    assert set(result["evaluation"]["CUB-sized"]["metrics"]) == {
        "recall@1", "recall@2", "recall@4", "f1", "map@r", "map@r_legacy"
    }  # fmt: skip
    assert set(result["data"]["rates"]) == {"pil", "torchvision"}
    e2e = result["end_to_end"]
    assert e2e["returncode"] == 0 and [row["epoch"] for row in e2e["metrics"]] == ["-1", "0", "1"]
    assert "| 5 e2e | epoch 1 (train + eval) |" in table and "| all | total wall time |" in table
    assert (tmp_path / "end_to_end.log").is_file() and (tmp_path / "gpu_tests.log").is_file()


# ------------------------------------------------------------------------ benchmarks/data_speed.py + decoder


def test_cub_layout_paths_follow_the_cub_split(tmp_path) -> None:
    paths = data_speed.cub_layout_paths(tmp_path, 200, 5864, 5924)
    assert len(paths) == 5864 + 5924
    assert paths[0].parent.name == "001.class_001" and paths[-1].parent.name == "200.class_200"
    small = data_speed.cub_layout_paths(tmp_path, 6, 7, 5)
    data_speed.write_jpegs(small, 40, 30)
    splits = load_cub200(tmp_path / "cub200")
    assert len(splits["train"].paths) == 7 and len(splits["test"].paths) == 5
    assert np.bincount(splits["train"].labels).tolist() == [3, 2, 2]
    with Image.open(small[0]) as image:
        assert image.format == "JPEG" and image.size == (40, 30)


def test_data_speed_measures_every_pipeline_and_draft_never_fits_cub_sizes(tmp_path) -> None:
    result = data_speed.run_data_speed(tmp_path, images=2, rounds=1, resolution=224, gpu_rates=(3000.0,))
    assert set(result["rates"]) == {"pil", "pil_draft", "pil+uint8", "torchvision", "pil_eval", "torchvision_eval"}
    assert all(rate > 0 for rate in result["rates"].values())
    # a 500 x 375 image cannot be decoded at 1/2 scale and still cover a 224 crop from its full-size box
    assert result["draft_used"] == 0.0
    table = data_speed.markdown_table(result)
    assert "| pipeline | images/s per core | ms/image | vs pil | cores for 3,000 img/s |" in table
    assert "| pil | " in table and "| 1.00x |" in table


def test_draft_pipeline_downscales_large_photos_with_the_same_crop(tmp_path) -> None:
    path = tmp_path / "large.jpg"
    data_speed.write_jpeg(path, 0, 1600, 1200)
    draft = data_speed.DraftPipeline(64)
    plain = build_transform("base", True, 64, IMAGENET, "pil")
    same = 0
    for seed in range(8):
        torch.manual_seed(seed)
        drafted = draft(str(path))
        torch.manual_seed(seed)
        reference = plain(load_rgb(str(path)))
        same += int((drafted - reference).abs().mean() < 0.1)
    assert draft.drafted > 0 and same == 8


def write_photo(path: Path, mode: str = "RGB", size: tuple[int, int] = (120, 90)) -> Path:
    pixels = data_speed.photo_like(3, *size)
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, quality=92) if path.suffix == ".jpg" else image.save(path)
    return path


@pytest.mark.parametrize(
    ("name", "mode"), [("rgb.jpg", "RGB"), ("grey.jpg", "L"), ("cmyk.jpg", "CMYK"), ("a.png", "P")]
)
def test_torchvision_decoding_gives_the_pil_pixels(tmp_path, name: str, mode: str) -> None:
    path = str(write_photo(tmp_path / name, mode))
    decoded = load_rgb_uint8(path)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 90, 120)
    assert torch.equal(decoded, torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1))


def test_torchvision_decoding_errors_name_the_file(tmp_path) -> None:
    path = write_photo(tmp_path / "cut.jpg")
    path.write_bytes(path.read_bytes()[:300])  # truncated inside the scan
    with pytest.raises(UserError, match=f"cannot read image {path}"):
        load_rgb_uint8(str(path))
    with pytest.raises(UserError, match="cannot read image .*gone.jpg"):
        load_rgb_uint8(str(tmp_path / "gone.jpg"))
    dataset = ImageDataset([str(path)], [0], build_transform("base", True, 32, IMAGENET, "torchvision"))
    with pytest.raises(UserError, match=f"cannot read image {path}"):
        dataset[0]


@pytest.mark.parametrize("train", [True, False])
def test_torchvision_pipeline_draws_the_same_crops_and_flips_as_pil(tmp_path, train: bool) -> None:
    path = str(write_photo(tmp_path / "photo.jpg", size=(500, 375)))
    fast = build_transform("base", train, 224, IMAGENET, "torchvision")
    plain = build_transform("base", train, 224, IMAGENET, "pil")
    assert fast.decoder == "torchvision" and plain.decoder == "pil"
    for seed in range(6):
        torch.manual_seed(seed)
        a = fast(load_rgb_uint8(path))
        after_fast = torch.rand(1)
        torch.manual_seed(seed)
        b = plain(load_rgb(path))
        assert torch.equal(after_fast, torch.rand(1))  # the same number of generator draws
        assert a.shape == b.shape == (3, 224, 224) and a.dtype == torch.float32 and a.is_contiguous()
        # same box and flip; only the resampling rounding differs (<= a few levels of 255)
        assert (a - b).abs().mean() < 0.03, seed
        if train:
            torch.manual_seed(seed + 100)
            assert (fast(load_rgb_uint8(path)) - b).abs().mean() > 0.1  # another seed: another crop


def test_image_decoder_key_selects_the_loader(tmp_path) -> None:
    paths = data_speed.cub_layout_paths(tmp_path, 4, 4, 4)
    data_speed.write_jpegs(paths, 100, 75)
    common = dict(dataset="cub200", source_path=str(tmp_path), resolution=32, batch_size=4)
    assert config_from_dict(common).image_decoder == "torchvision"
    by_decoder = {}
    for decoder in ("torchvision", "pil"):
        splits = build_datasets(config_from_dict({**common, "image_decoder": decoder}))
        assert splits["train"].transform.decoder == splits["test"].transform.decoder == decoder
        by_decoder[decoder] = splits["test"][1]
    (fast, label, index), (plain, plain_label, plain_index) = by_decoder["torchvision"], by_decoder["pil"]
    assert (label, index) == (plain_label, plain_index) == (0, 1)
    assert fast.shape == plain.shape == (3, 32, 32) and (fast - plain).abs().mean() < 0.05
    with pytest.raises(UserError, match="key 'image_decoder' must be one of torchvision, pil; got 'cv2'"):
        config_from_dict({**common, "image_decoder": "cv2"})
    with pytest.raises(UserError, match="image_decoder: unknown name 'cv2'"):
        build_transform("base", True, 32, IMAGENET, "cv2")


def test_seeded_augmentation_is_deterministic_with_the_torchvision_decoder(tmp_path) -> None:
    path = str(write_photo(tmp_path / "photo.jpg", size=(200, 150)))
    dataset = SeededAugmentation(ImageDataset([path], [0], build_transform("base", True, 64, IMAGENET)))
    random.seed(123)
    state = torch.get_rng_state()
    first, again, other = dataset[(0, 11)], dataset[(0, 11)], dataset[(0, 12)]
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert torch.equal(state, torch.get_rng_state()) and random.random() == random.Random(123).random()


# ---------------------------------------------------------------------------- benchmarks/retrieval_speed.py


def test_retrieval_speed_benchmark_runs_with_tiny_sizes(tmp_path, capsys) -> None:
    from benchmarks import retrieval_speed

    output = tmp_path / "retrieval.json"
    argv = ["--arch", "test_resnet", "--resolution", "32", "--batch_size", "4", "--batches", "1",
            "--gallery_size", "2000", "--dim", "32", "--queries", "50", "--device", "cpu",
            "--output", str(output)]  # fmt: skip
    assert retrieval_speed.main(argv) == 0
    report = json.loads(output.read_text())
    for key in ("embed_images_per_s", "index_build_s", "cpu_queries_per_s", "cpu_single_query_ms", "peak_rss_total_mb"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["settings"]["gallery_size"] == 2000 and report["versions"]["faiss"]
    table = capsys.readouterr().out
    expected = (
        "| index build, 2,000 x 32 (IndexFlatIP)",
        "| batch queries, top-10, CPU",
        "| embedding, test_resnet 32 px",
    )
    for row in expected:
        assert row in table, table


# --------------------------------------------------------------------------------- benchmarks/eval_speed.py


def test_eval_speed_benchmark_runs_eval_py_and_reports_the_load(tmp_path, capsys) -> None:
    from benchmarks import eval_speed

    output = tmp_path / "eval_speed.json"
    argv = ["--items", "400", "--classes", "70", "--skip_pml", "--skip_full", "--searches", "--output", str(output)]
    assert eval_speed.main(argv) == 0
    report = json.loads(output.read_text())
    assert len(report["load_average"]) == 2
    (run,) = report["runs"]
    assert run["run"] == "eval.py (3 metrics)" and run["wall_s"] > 0 and run["peak_rss_mb"] > 0
    x, y = eval_speed.synthetic_embeddings(400, 70)
    from metrics import compute_metrics

    assert run["values"] == pytest.approx(compute_metrics(x, y, eval_speed.THREE), abs=0)
    table = capsys.readouterr().out
    assert "1-minute load average before / after:" in table and "| eval.py (3 metrics) |" in table
    assert [row["run"] for row in report["searches"]] == [
        "search only, symmetric",
        "search only, symmetric, one worker",
        "search only, per-query",
    ]
    assert "| search only, symmetric |" in table


def test_kmeans_speed_benchmark_reports_the_time_per_iteration(tmp_path, capsys) -> None:
    from benchmarks import kmeans_speed

    output = tmp_path / "kmeans.json"
    argv = ["--items", "300", "--classes", "40", "--iterations", "2", "--output", str(output)]
    assert kmeans_speed.main(argv) == 0
    report = json.loads(output.read_text())
    assert report["clusters"] == 40 and report["iteration_s"] >= 0 and 0 <= report["search_share"] <= 1
    assert report["estimated_kmeans_s"] >= report["final_assignment_s"]
    assert "k-means of 300 x 512 into 40 clusters" in capsys.readouterr().out
