"""The report of a sweep: per setting and metric n, mean, sample standard deviation and a 95% Student-t confidence
interval; per setting the paired difference against its baseline over the seeds both finished (mean, 95% CI,
paired t-test p-value, wins/ties/losses). Written as report.csv, report.md and report.png."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from utilities.files import atomic_write

CONFIDENCE = 0.95
REPORT_COLUMNS = [
    "setting", "metric", "n", "mean", "std", "ci_low", "ci_high",
    "diff_mean", "diff_ci_low", "diff_ci_high", "p_value", "wins", "ties", "losses",
]  # fmt: skip


def mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean (NaN where n < 2)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def done_values(rows: list[dict[str, Any]], setting: str, metric: str) -> dict[int, float]:
    """seed -> value of the finished runs of a setting."""
    values = {}
    for row in rows:
        value = row.get(metric)
        if row.get("setting") == setting and row.get("status") == "done" and isinstance(value, int | float):
            values[int(row["seed"])] = float(value)
    return values


def summarize(
    rows: list[dict[str, Any]], metrics: list[str], settings: list[str], baselines: dict[str, str | None]
) -> list[dict[str, Any]]:
    """The report's rows (REPORT_COLUMNS) from results rows: a pure function of its arguments."""
    report = []
    for setting in settings:
        for metric in metrics:
            values = done_values(rows, setting, metric)
            mean, std, low, high = mean_ci(list(values.values()))
            entry: dict[str, Any] = dict(setting=setting, metric=metric, n=len(values), mean=mean, std=std,
                                         ci_low=low, ci_high=high)  # fmt: skip
            baseline = baselines.get(setting)
            if baseline:
                entry.update(paired(values, done_values(rows, baseline, metric)))
            report.append(entry)
    return report


def paired(values: dict[int, float], base: dict[int, float]) -> dict[str, Any]:
    """The paired difference values - base over the seeds both have."""
    seeds = sorted(set(values) & set(base))
    diffs = [values[s] - base[s] for s in seeds]
    mean, _, low, high = mean_ci(diffs)
    p_value = math.nan
    if len(seeds) >= 2:
        p_value = float(stats.ttest_rel([values[s] for s in seeds], [base[s] for s in seeds]).pvalue)
    wins, ties, losses = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"diff_mean": mean, "diff_ci_low": low, "diff_ci_high": high, "p_value": p_value} | {
        "wins": wins,
        "ties": ties,
        "losses": losses,
    }


def _cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    metrics: list[str],
    settings: list[str],
    baselines: dict[str, str | None],
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Write report.csv, report.md and report.png into `out`; returns the report's rows."""
    report = summarize(rows, metrics, settings, baselines)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows({k: _cell(v, 6) for k, v in entry.items()} for entry in report)

    atomic_write(out / "report.csv", write_csv)
    text = markdown(report, rows, settings, baselines, notes or [])
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
    if rows:
        plot_report(rows, report, metrics, settings, out / "report.png")
    return report


def markdown(
    report: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    settings: list[str],
    baselines: dict[str, str | None],
    notes: list[str],
) -> str:
    counts = {s: sum(r.get("setting") == s for r in rows) for s in settings}
    done = {s: sum(r.get("setting") == s and r.get("status") == "done" for r in rows) for s in settings}
    lines = ["# Sweep report", "", f"Runs done: {sum(done.values())} of {sum(counts.values())} listed.", ""]
    lines += ["## Test metrics over the seeds (mean, sample standard deviation, 95% Student-t CI of the mean)", ""]
    lines += ["| setting | metric | n | mean | std | 95% CI |", "|---|---|---|---|---|---|"]
    for e in report:
        ci = f"[{_cell(e['ci_low'])}, {_cell(e['ci_high'])}]" if not math.isnan(e["ci_low"]) else ""
        lines.append(f"| {e['setting']} | {e['metric']} | {e['n']} | {_cell(e['mean'])} | {_cell(e['std'])} | {ci} |")
    compared = [e for e in report if baselines.get(e["setting"])]
    if compared:
        lines += ["", "## Paired difference against the baseline (same seeds)", ""]
        lines += [
            "| setting | baseline | metric | pairs | mean difference | 95% CI | p (paired t) | wins/ties/losses |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in compared:
            pairs = e["wins"] + e["ties"] + e["losses"]
            ci = f"[{_cell(e['diff_ci_low'])}, {_cell(e['diff_ci_high'])}]" if pairs >= 2 else ""
            lines.append(
                f"| {e['setting']} | {baselines[e['setting']]} | {e['metric']} | {pairs} | {_cell(e['diff_mean'])} | "
                f"{ci} | {_cell(e['p_value'])} | {e['wins']}/{e['ties']}/{e['losses']} |"
            )
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"* {r['setting']} seed {_cell(r['seed'], 0)}: {r.get('error', '')}" for r in failed]
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_report(
    rows: list[dict[str, Any]], report: list[dict[str, Any]], metrics: list[str], settings: list[str], path: Path
) -> None:
    """Per metric: every seed as a dot, mean ± 95% CI per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, setting in enumerate(settings):
            values = list(done_values(rows, setting, metric).values())
            ax.scatter([i] * len(values), values, s=14, alpha=0.6, color="tab:gray")
            entry = next(e for e in report if e["setting"] == setting and e["metric"] == metric)
            if entry["n"]:
                err = 0.0 if math.isnan(entry["ci_low"]) else entry["mean"] - entry["ci_low"]
                ax.errorbar([i + 0.15], [entry["mean"]], yerr=[err], fmt="o", color="tab:blue", capsize=4)
        ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric)
    fig.tight_layout()

    def save(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    atomic_write(path, save)
    plt.close(fig)
