"""The sweep command: its own options (parsed here) and main.py's `--key value` keys (checked by main.py's layer)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from config.command_line import script_parser
from experiments.space import read_space, space_values
from experiments.spec import (
    SWEEP_FILE,
    SweepSpec,
    check_keys,
    default_baseline,
    fingerprint,
    first_difference,
    parse_baseline,
    parse_grid,
    run_config,
    settings,
    spec_to_dict,
)
from utilities.errors import UserError
from utilities.files import atomic_write

PRUNERS = ("median", "hyperband", "none")


def build_parser(description: str) -> argparse.ArgumentParser:
    """The sweep's own options (a `config.command_line.script_parser`: one error line, every default shown)."""
    parser = script_parser("sweep.py", description)
    parser.epilog = "Every other --key value is a main.py key (python main.py --help) and applies to every run."
    parser.add_argument("--config", help="YAML file of settings, as main.py's --config")
    parser.add_argument("--out", help="the sweep folder (runs, results.csv, report, the journal)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the seed values of every setting")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="settings: the product of terms")
    parser.add_argument("--baseline", help="KEY=VALUE compared against (default: first value of the first term)")
    parser.add_argument("--search", help="search space YAML: an Optuna (TPE) search on validation classes")
    parser.add_argument("--trials", type=int, default=20, help="with --search: number of trials")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="with --search: stops hopeless trials")
    parser.add_argument("--storage", help="database URL (postgresql://, mysql://, sqlite:///); default: journal in OUT")
    parser.add_argument("--study", default="", help="study name prefix in the storage (default: the name of OUT)")
    parser.add_argument("--jobs", type=int, help="local worker processes (default: one per CUDA device, else 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: the cores split)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=float, default=120.0, help="seconds without heartbeat before a takeover")
    parser.add_argument("--report", metavar="OUT", help="only rewrite results.csv and the report of a sweep folder")
    return parser


def parse_sweep(argv: list[str], description: str):
    """The sweep's options and its spec (checked: every run's configuration is built once here)."""
    parser = build_parser(description)
    options, keys = parser.parse_known_args(argv)
    if options.report:
        return options, None
    if not options.out:
        raise UserError("--out is required: the folder of the sweep")
    check_keys(keys)
    if any(token.split("=", 1)[0] == "--seed" for token in keys):
        raise UserError("--seed: a sweep takes --seeds (one or more)")
    if options.search and options.grid:
        raise UserError("--search and --grid cannot be combined: the search chooses the values")
    if options.trials < 1:
        raise UserError(f"--trials must be at least 1 (got {options.trials})")
    if len(set(options.seeds)) != len(options.seeds):
        raise UserError("--seeds repeats a seed")
    grid = parse_grid(options.grid)
    spec = SweepSpec(
        out=options.out,
        config=options.config,
        keys=keys,
        grid=grid,
        seeds=list(options.seeds),
        search=read_space(options.search) if options.search else None,
        trials=options.trials if options.search else 0,
        pruner=options.pruner,
        baseline=parse_baseline(options.baseline, grid) if options.baseline else default_baseline(grid),
        storage=options.storage,
        study=options.study,
        heartbeat=options.heartbeat,
        grace=options.grace,
        threads=options.threads,
    )
    check_runs(spec)
    return options, spec


def check_runs(spec: SweepSpec) -> None:
    """Build every run's configuration (each grid value, each edge of the search space) before any run starts."""
    base = run_config(spec, {}, spec.seeds[0])
    if spec.search is not None and not base.val_classes > 0:
        raise UserError(
            "--search needs val_classes > 0 (e.g. --val_classes 0.2): trials are selected on classes held out of "
            "training, never on the test classes (selecting on test classes overstates every result)"
        )
    for values in space_values(spec.search) if spec.search is not None else settings(spec.grid):
        for seed in spec.seeds:
            run_config(spec, values, seed)


def default_jobs() -> int:
    import torch

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def cpu_threads(jobs: int) -> int | None:
    """CPU workers split the cores between them (one worker keeps torch's default)."""
    if jobs <= 1:
        return None
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def record_sweep(spec: SweepSpec) -> dict:
    """Write OUT/sweep.json on the first command; refuse a command that differs from the recorded one."""
    path = Path(spec.out) / SWEEP_FILE
    given = fingerprint(spec)
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())["fingerprint"]
        except (ValueError, KeyError):
            raise UserError(f"{path} is not a sweep record; use another --out") from None
        difference = first_difference(recorded, given)
        if difference is not None:
            raise UserError(f"--out {spec.out} holds another sweep: {difference} differs; use another --out")
        return recorded
    stored = spec_to_dict(spec)
    if spec.storage:
        from experiments.storage import redact

        stored["storage"] = redact(spec.storage)
    text = json.dumps({"fingerprint": given, "spec": stored}, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return given


def load_recorded_spec(out: str, storage: str | None) -> SweepSpec:
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"--report: {out} is not a sweep folder (no {SWEEP_FILE})")
    stored = json.loads(path.read_text())["spec"]
    stored["grid"] = [(key, values) for key, values in stored["grid"]]
    stored["baseline"] = tuple(stored["baseline"]) if stored["baseline"] else None
    stored["out"] = out
    recorded_url = stored.get("storage")
    if recorded_url and not storage and "***" in recorded_url:
        raise UserError(f"--report: the sweep's storage is {recorded_url}: give --storage URL with its password")
    stored["storage"] = storage or recorded_url
    return SweepSpec(**stored)
