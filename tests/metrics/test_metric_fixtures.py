"""Parity with the reference fixtures: every <case>.json/<case>.npz pair, every expected key, both backends."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import fixture_dir, record_parity, reference_cases, require_cases

from metrics import compute_metrics, f1_from_assignment, nmi_from_assignment

FIXTURES = fixture_dir("METRIC_REFERENCE_DIR", "metrics")
CASES = reference_cases(FIXTURES)

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


def _load(case: str) -> tuple[dict, dict]:
    require_cases(case, FIXTURES)
    expected = json.loads((FIXTURES / f"{case}.json").read_text())["expected"]
    with np.load(FIXTURES / f"{case}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return expected, arrays


def test_fixture_folder_has_cases() -> None:
    require_cases(CASES[0], FIXTURES)
    for case in CASES:
        assert (FIXTURES / f"{case}.npz").is_file(), f"{case}.json has no .npz twin"


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("case", CASES)
def test_retrieval_metrics_match_reference(case: str, backend: str) -> None:
    expected, arrays = _load(case)
    keys = [key for key in expected if key not in ASSIGNMENT_KEYS]
    names = sorted({_metric_for(key) for key in keys})
    values = compute_metrics(arrays["embeddings"], arrays["labels"], names, backend=backend)
    for key in keys:
        assert values[_metric_for(key)] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    record_parity(FIXTURES, case)


@pytest.mark.parametrize("case", CASES)
def test_clustering_metrics_of_given_assignment(case: str) -> None:
    expected, arrays = _load(case)
    present = [key for key in ASSIGNMENT_KEYS if key in expected]
    assert present, "every metrics fixture carries f1/nmi of its given cluster assignment"
    for key in present:
        value = ASSIGNMENT_KEYS[key](arrays["labels"], arrays["cluster_assignment"])
        assert value == pytest.approx(expected[key], rel=1e-9), key
