"""Shared by the sweep tests: a tiny setting every sweep run uses, and how to start sweep.py."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_keys(data: Path, epochs: int = 3) -> list[str]:
    """A tiny network on a tiny synthetic benchmark: a run takes about a second on a CPU."""
    return [
        "--dataset", "synthetic", "--source_path", str(data), "--synthetic_classes", "8",
        "--synthetic_images_per_class", "6", "--synthetic_image_size", "32", "--arch", "test_resnet",
        "--pretrained", "false", "--frozen_bn", "false", "--resolution", "32", "--batch_size", "12",
        "--samples_per_class", "3", "--iterations_per_epoch", "3", "--epochs", str(epochs), "--kernels", "0",
        "--device", "cpu", "--embed_dim", "16", "--lr", "0.01", "--warmup", "0", "--d_warmup", "0",
        "--domain_hidden", "16", "--class_hidden1", "16", "--class_hidden2", "8", "--proxy_loss_weight", "1",
        "--adv_weight", "0.1", "--evaluation_metrics", "recall@1", "map@r", "--eval_batch_size", "64",
        "--plots", "false",
    ]  # fmt: skip


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "sweep.py"), *args]


def run_sweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
