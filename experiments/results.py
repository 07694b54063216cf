"""results.csv: one row per run of the sweep, read from its storage; then the report files."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from optuna import Study
from optuna.trial import FrozenTrial, TrialState

from experiments.report import write_report
from experiments.spec import BEST_SETTING, SweepSpec, baseline_values, run_config, setting_name, settings
from utilities.files import atomic_write

RESULTS_FILE = "results.csv"
STATUS = {
    TrialState.COMPLETE: "done",
    TrialState.FAIL: "failed",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def columns_of(keys: list[str], metrics: list[str], validation: bool) -> list[str]:
    val = [f"val_{m}" for m in metrics] if validation else []
    return ["setting", *keys, "seed", "status", "best_epoch", *metrics, *val, "seconds", "error"]


def row_of(trial: FrozenTrial, keys: list[str], search: bool) -> dict[str, Any]:
    attrs = trial.user_attrs
    result = attrs.get("result") or {}
    values = dict(trial.params) if search else dict(attrs.get("values") or {})
    row: dict[str, Any] = {"setting": attrs.get("setting", f"trial{trial.number}"), "seed": attrs.get("seed", "")}
    row.update({key: values.get(key, "") for key in keys})
    row["status"] = STATUS.get(trial.state, trial.state.name.lower())
    row["best_epoch"] = result.get("best_epoch", "")
    row.update(result.get("metrics") or {})
    row.update({f"val_{k}": v for k, v in (result.get("val") or {}).items()})
    row["seconds"] = result.get("seconds", "")
    row["error"] = " ".join(str(result.get("error", "")).split()) if trial.state == TrialState.FAIL else ""
    return row


def latest_trials(study: Study) -> list[FrozenTrial]:
    """Per run folder the newest trial (a retry or a takeover replaces the trial before it)."""
    latest: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("folder", str(trial.number))
        if key not in latest or trial.number > latest[key].number:
            latest[key] = trial
    return sorted(latest.values(), key=lambda t: t.number)


def collect_rows(spec: SweepSpec, sweep) -> list[dict[str, Any]]:
    """The latest trial of every run: the seed runs in the order of the settings and seeds, then the search trials
    in their order (a run taken over or retried keeps its place)."""
    keys = report_keys(spec)
    names, _ = report_settings(spec)
    runs = [row_of(t, keys, search=False) for t in latest_trials(sweep.runs)]
    rows = sorted(runs, key=lambda r: (names.index(r["setting"]) if r["setting"] in names else len(names), r["seed"]))
    if sweep.search is not None:
        trials = latest_trials(sweep.search)
        trials.sort(key=lambda t: int(str(t.user_attrs.get("setting", "trial0"))[len("trial") :] or 0))
        rows += [row_of(t, keys, search=True) for t in trials]
    return rows


def report_keys(spec: SweepSpec) -> list[str]:
    return list(spec.search) if spec.search is not None else [key for key, _ in spec.grid]


def report_settings(spec: SweepSpec) -> tuple[list[str], dict[str, str | None]]:
    """The settings of the report, in order, and each one's baseline setting (None: no comparison)."""
    if spec.search is not None:
        return [BEST_SETTING], {BEST_SETTING: None}
    names, baselines = [], {}
    for values in settings(spec.grid):
        name = setting_name(values)
        base = baseline_values(values, spec.baseline)
        names.append(name)
        baselines[name] = setting_name(base) if base is not None and base != values else None
    return names, baselines


def write_results(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv with the numbers as floats (empty cells stay empty strings)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return value if math.isfinite(value) or text.lower() == "nan" else text


def write_outputs(spec: SweepSpec, sweep) -> list[dict[str, Any]]:
    """Rewrite results.csv and the report from the storage; returns the rows."""
    out = Path(spec.out)
    cfg = run_config(spec, {}, spec.seeds[0])
    metrics = list(cfg.evaluation_metrics)
    rows = collect_rows(spec, sweep)
    write_results(rows, columns_of(report_keys(spec), metrics, cfg.val_classes > 0), out / RESULTS_FILE)
    names, baselines = report_settings(spec)
    notes = []
    if sweep.search is not None:
        from experiments.search_report import write_search_outputs

        notes = write_search_outputs(sweep, out)
    write_report(out, [r for r in rows if r["setting"] in names], metrics, names, baselines, notes)
    return rows
