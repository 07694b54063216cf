"""The worked examples in the docstrings run: every module of the packages that contains one."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("architectures", "criteria", "datasets", "engine", "metrics", "utilities")
MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for package in PACKAGES
    for path in (REPO / package).rglob("*.py")
    if ">>>" in path.read_text()
)


def test_some_modules_have_examples() -> None:
    assert "metrics.names" in MODULES and "metrics.compute" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
