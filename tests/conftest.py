"""Shared pytest set-up: the repository root on sys.path, fixture folders, the `gpu` marker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def fixture_dir(env_var: str, default_subdir: str) -> Path:
    """Folder of reference fixtures, overridable by an environment variable."""
    return Path(os.environ.get(env_var, SHARED_FIXTURES / default_subdir))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
