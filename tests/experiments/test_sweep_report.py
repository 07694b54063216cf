"""The report's statistics against scipy on a hand-made results file (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sweep_helpers import read_csv

from experiments.report import REPORT_COLUMNS, summarize, write_report
from experiments.results import read_results

RESULTS = """setting,dada,seed,status,best_epoch,recall@1,map@r,seconds,error
dada=false,false,0,done,3,0.50,0.20,10,
dada=false,false,1,done,4,0.55,0.22,10,
dada=false,false,2,done,2,0.52,0.19,10,
dada=false,false,3,failed,,,,3,RuntimeError: boom
dada=true,true,0,done,3,0.58,0.25,11,
dada=true,true,1,done,4,0.55,0.27,11,
dada=true,true,2,done,5,0.60,0.24,11,
dada=true,true,3,done,5,0.70,0.30,11,
"""
BASE = {"dada=false": [0.50, 0.55, 0.52], "dada=true": [0.58, 0.55, 0.60, 0.70]}


def t_interval(x):
    return stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))


def test_report_numbers_equal_scipys(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    rows = read_results(tmp_path / "results.csv")
    settings = ["dada=false", "dada=true"]
    baselines = {"dada=false": None, "dada=true": "dada=false"}
    report = write_report(tmp_path, rows, ["recall@1", "map@r"], settings, baselines)
    by_key = {(e["setting"], e["metric"]): e for e in report}

    for setting, values in BASE.items():
        entry = by_key[(setting, "recall@1")]
        assert entry["n"] == len(values)  # the failed run is left out
        assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert entry["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        low, high = t_interval(values)
        assert (entry["ci_low"], entry["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))

    # the paired difference: over seeds 0-2 only (seed 3 of the baseline failed)
    diff = by_key[("dada=true", "recall@1")]
    ours, theirs = [0.58, 0.55, 0.60], [0.50, 0.55, 0.52]
    test = stats.ttest_1samp(np.subtract(ours, theirs), 0.0)
    interval = test.confidence_interval(0.95)
    assert diff["diff_mean"] == pytest.approx(np.mean(np.subtract(ours, theirs)), abs=1e-12)
    assert diff["diff_ci_low"] == pytest.approx(interval.low, abs=1e-12)
    assert diff["diff_ci_high"] == pytest.approx(interval.high, abs=1e-12)
    assert diff["p_value"] == pytest.approx(stats.ttest_rel(ours, theirs).pvalue, abs=1e-12)
    assert (diff["wins"], diff["ties"], diff["losses"]) == (2, 1, 0)
    assert "diff_mean" not in by_key[("dada=false", "map@r")]  # the baseline is not compared with itself

    written = read_csv(tmp_path / "report.csv")
    assert list(written[0]) == REPORT_COLUMNS
    row = next(r for r in written if r["setting"] == "dada=true" and r["metric"] == "map@r")
    assert float(row["p_value"]) == pytest.approx(stats.ttest_rel([0.25, 0.27, 0.24], [0.20, 0.22, 0.19]).pvalue, 1e-5)
    assert row["wins"] == "3" and row["n"] == "4"
    text = (tmp_path / "report.md").read_text()
    assert "| dada=true | dada=false | recall@1 | 3 |" in text and "RuntimeError: boom" in text
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_one_seed_has_no_interval():
    rows = [{"setting": "s", "seed": 0.0, "status": "done", "recall@1": 0.5}]
    (entry,) = summarize(rows, ["recall@1"], ["s"], {"s": None})
    assert entry["n"] == 1 and entry["mean"] == 0.5 and math.isnan(entry["std"]) and math.isnan(entry["ci_low"])
