"""Shared pytest set-up: the repository root on sys.path, the reference fixture folders, the `gpu` marker,
and a closing line that says how many reference cases ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FIXTURES = REPO_ROOT / "tests" / "fixtures"
MISSING_CASES = "no-reference-cases"
"""Stands in for the case list of an empty or missing fixture folder, so that the parity tests fail."""


def fixture_dir(env_var: str, default_subdir: str) -> Path:
    """Folder of reference fixtures: `tests/fixtures/<default_subdir>`, or the folder named by `env_var`."""
    return Path(os.environ.get(env_var) or FIXTURES / default_subdir)


def reference_cases(folder: Path) -> list[str]:
    """Names of the `<case>.json` files in `folder`; `[MISSING_CASES]` when there is none.

    An empty folder must fail the parity tests (never skip them): each test calls `require_cases` first.
    """
    names = sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []
    return names or [MISSING_CASES]


def require_cases(name: str, folder: Path) -> None:
    """Fail, naming the folder, when `name` is the stand-in of an empty or missing fixture folder."""
    if name == MISSING_CASES:
        state = "is empty (no *.json case)" if folder.is_dir() else "does not exist"
        pytest.fail(f"reference fixture folder {folder} {state}", pytrace=False)


PARITY_PASSED: dict[Path, set[str]] = {}
"""Reference cases whose parity test passed, by fixture folder (filled by the parity tests)."""


def record_parity(folder: Path, name: str) -> None:
    """Note that reference case `name` of `folder` matched (called at the end of a parity test)."""
    PARITY_PASSED.setdefault(folder, set()).add(name)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line per fixture folder: how many of its reference cases matched, so a run shows that they ran."""
    for folder, names in sorted(PARITY_PASSED.items()):
        cases = len(reference_cases(folder))
        terminalreporter.write_line(f"reference parity: {len(names)} of {cases} case(s) matched in {folder}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
