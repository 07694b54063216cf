"""torchrun with two CPU processes (gloo) trains what one process trains on the same global batch: the mathematics
to rounding on a small network, the batches and augmented images exactly at the demo's settings."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rank_batches import demo_config, trained_batches

from utilities.distributed import DistInfo

REPO = Path(__file__).resolve().parents[2]


def run_args(tmp: Path, name: str) -> list[str]:
    # disc_lr is tiny because the discriminators' Linear biases sit right before a BatchNorm: their exact
    # gradient is zero, so what they receive is rounding noise, which Adam's first steps blow up to ±lr in
    # either process. Everything else (backbone, head, proxies, discriminator weights and BatchNorm
    # statistics) is compared at 1e-5 after real updates.
    return [
        "--dataset", "synthetic", "--source_path", str(tmp / "data"), "--save_path", str(tmp / "runs"),
        "--save_name", name, "--synthetic_classes", "8", "--synthetic_images_per_class", "10",
        "--synthetic_image_size", "32", "--arch", "test_resnet", "--pretrained", "false", "--frozen_bn", "true",
        "--resolution", "32", "--batch_size", "16", "--iterations_per_epoch", "3", "--epochs", "2",
        "--kernels", "0", "--device", "cpu", "--embed_dim", "16", "--lr", "0.003", "--warmup", "0",
        "--d_warmup", "1", "--pos_class_mix", "true", "--domain_hidden", "16", "--class_hidden1", "16",
        "--class_hidden2", "8", "--domain_out_bn", "true", "--class_out_bn", "true",
        "--dropout", "0.5", "--disc_lr", "1e-6",
        "--evaluation_metrics", "recall@1", "map@r", "--plots", "false", "--eval_backend", "torch",
    ]  # fmt: skip


def launch(command: list[str], tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def metric_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(handle)]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is installed with torch")
def test_two_ranks_equal_one_process(tmp_path: Path):
    launch([sys.executable, "main.py", *run_args(tmp_path, "single")], tmp_path)
    launch(
        ["torchrun", "--standalone", "--nproc_per_node", "2", "main.py", *run_args(tmp_path, "ddp")],
        tmp_path,
    )
    single = torch.load(tmp_path / "runs/synthetic/single/checkpoints/last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "runs/synthetic/ddp/checkpoints/last.pt", weights_only=True)
    assert not (tmp_path / "runs/synthetic/ddp_1").exists()  # only rank 0 created a run folder
    for part in ("model", "criterion"):
        assert single[part].keys() == ddp[part].keys()
        for key, value in single[part].items():
            torch.testing.assert_close(ddp[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
    for name, state in single["optimizers"].items():
        assert len(state["state"]) == len(ddp["optimizers"][name]["state"]), name
    single_rows, ddp_rows = (
        metric_rows(tmp_path / "runs/synthetic/single"),
        metric_rows(tmp_path / "runs/synthetic/ddp"),
    )
    assert len(single_rows) == len(ddp_rows) == 3
    for a, b in zip(single_rows, ddp_rows):
        assert a.keys() == b.keys()
        for key in a:
            if a[key] and key != "epoch":
                assert float(b[key]) == pytest.approx(float(a[key]), abs=1e-5), key

    # a run resumes under another number of ranks: one more epoch on 2 ranks = one more epoch on 1 process
    runs = tmp_path / "runs" / "synthetic"
    for name in ("resumed_on_1", "resumed_on_2"):
        shutil.copytree(runs / "single", runs / name)
    launch([sys.executable, "main.py", "--resume", str(runs / "resumed_on_1"), "--epochs", "3"], tmp_path)
    launch(["torchrun", "--standalone", "--nproc_per_node", "2", "main.py", "--resume", str(runs / "resumed_on_2"),
            "--epochs", "3"], tmp_path)  # fmt: skip
    one = torch.load(runs / "resumed_on_1" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(runs / "resumed_on_2" / "checkpoints" / "last.pt", weights_only=True)
    assert one["epoch"] == two["epoch"] == 3
    for part in ("model", "criterion"):
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=0, atol=1e-5, msg=f"resumed {part}.{key}")
    assert metric_rows(runs / "resumed_on_1")[-1]["recall@1"] == metric_rows(runs / "resumed_on_2")[-1]["recall@1"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is installed with torch")
def test_sync_bn_on_cpu_ranks_keeps_plain_batchnorm_and_says_so_once(tmp_path: Path):
    """SyncBatchNorm works only on CUDA: CPU ranks train with their own BatchNorm, and rank 0 says so once."""
    args = [*run_args(tmp_path, "sync"), "--frozen_bn", "false", "--sync_bn", "true", "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", "main.py", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("sync_bn: SyncBatchNorm needs CUDA devices") == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "runs/synthetic/sync/checkpoints/last.pt").is_file()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is installed with torch")
def test_ranks_train_on_the_slices_of_the_batches_and_images_of_one_process(tmp_path: Path):
    """At the demo's settings (two loader workers per rank), the augmented images, labels and indices that
    two torchrun ranks train on, gathered, are bit for bit those of one process: every draw is the same."""
    cfg = demo_config(tmp_path / "data")
    assert cfg.kernels == 2 and cfg.augmentation == "base" and cfg.batch_size == 32
    single = trained_batches(cfg, DistInfo())  # generates the images before the ranks read them
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", str(REPO / "tests" / "rank_batches.py"),
               str(tmp_path / "data"), str(tmp_path / "gathered.pt")]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = torch.load(tmp_path / "gathered.pt", weights_only=True)
    assert len(single) == len(gathered) == cfg.epochs * cfg.iterations_per_epoch
    for number, (one, two) in enumerate(zip(single, gathered)):
        for part, name in enumerate(("images", "labels", "indices")):
            same = torch.equal(one[part], two[part])
            assert same, f"iteration {number}: the gathered {name} differ from one process's"
    assert len({batch[0].numpy().tobytes() for batch in single}) == len(single)  # real, distinct draws
