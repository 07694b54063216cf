"""Parity with the reference fixtures: every <case>.json/<case>.npz pair, every expected key, both backends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_dir

from metrics import compute_metrics, f1_from_assignment, nmi_from_assignment

FIXTURES = fixture_dir("METRIC_REFERENCE_DIR", "metrics")
CASES = sorted(FIXTURES.glob("*.json"))

# fixture key -> canonical metric computed by compute_metrics
RETRIEVAL_KEYS = {
    "map@r": "map@r",
    "r_precision": "r_precision",
    "mAP_R_legacy": "map@r_legacy",
    "precision_at_1_pml": "recall@1",
}
ASSIGNMENT_KEYS = {"f1_given_assignment": f1_from_assignment, "nmi_given_assignment": nmi_from_assignment}


def _metric_for(key: str) -> str:
    if re.fullmatch(r"recall@\d+", key):
        return key
    if key in RETRIEVAL_KEYS:
        return RETRIEVAL_KEYS[key]
    raise AssertionError(f"fixture key {key!r} is not handled by this test (add it)")


def _load(case: Path) -> tuple[dict, dict]:
    expected = json.loads(case.read_text())["expected"]
    with np.load(case.with_suffix(".npz")) as data:
        arrays = {key: data[key] for key in data.files}
    return expected, arrays


def test_fixture_folder_has_cases() -> None:
    assert CASES, f"no *.json fixture in {FIXTURES}"
    for case in CASES:
        assert case.with_suffix(".npz").is_file(), f"{case} has no .npz twin"


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_retrieval_metrics_match_reference(case: Path, backend: str) -> None:
    expected, arrays = _load(case)
    keys = [key for key in expected if key not in ASSIGNMENT_KEYS]
    names = sorted({_metric_for(key) for key in keys})
    values = compute_metrics(arrays["embeddings"], arrays["labels"], names, backend=backend)
    for key in keys:
        assert values[_metric_for(key)] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_clustering_metrics_of_given_assignment(case: Path) -> None:
    expected, arrays = _load(case)
    present = [key for key in ASSIGNMENT_KEYS if key in expected]
    assert present, "every metrics fixture carries f1/nmi of its given cluster assignment"
    for key in present:
        value = ASSIGNMENT_KEYS[key](arrays["labels"], arrays["cluster_assignment"])
        assert value == pytest.approx(expected[key], rel=1e-9), key
