"""The sweep command: its own options (parsed here) and main.py's `--key value` keys (checked by main.py's layer)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

from config.command_line import script_parser
from engine.slurm import SlurmOptions, add_slurm_arguments, slurm_options
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
    spec_from_dict,
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
    parser.add_argument(
        "--jobs",
        type=int,
        help="worker processes, or SLURM jobs (default: one per --gpus_per_run CUDA devices, else 1; SLURM: 1)",
    )
    parser.add_argument(
        "--gpus_per_run", type=int, default=1, help="above 1: each run under torchrun on this many GPUs (CPU: gloo)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: the cores split)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=float, default=120.0, help="seconds without heartbeat before a takeover")
    parser.add_argument("--report", metavar="OUT", help="only rewrite results.csv and the report of a sweep folder")
    add_slurm_arguments(parser, SLURM_HELPS)
    return parser


SLURM_HELPS = {
    "partition": "SLURM partition: submit the --jobs workers as SLURM jobs (one task each)",
    "gpus_per_node": "GPUs per worker job (its runs take --gpus_per_run of them each)",
    "tasks_per_node": "tasks per job: a worker job is one task",
    "nodes": "machines per job: a worker job is one machine",
    "folder": "submitit's log folder (default: OUT/submitit)",
    "wait": "block until the worker jobs end, then write the report and exit as a local sweep does",
    "local": "run the worker jobs with submitit's local executor (the same path, without a cluster)",
}


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
    if options.gpus_per_run < 1:
        raise UserError(f"--gpus_per_run must be at least 1 (got {options.gpus_per_run})")
    if options.jobs is not None and options.jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {options.jobs})")
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
        gpus_per_run=options.gpus_per_run,
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


def slurm_request(options: argparse.Namespace) -> SlurmOptions | None:
    """The worker jobs' SLURM options (None: local workers); impossible values are a `UserError`."""
    slurm = slurm_options(options)
    if not (slurm.partition or slurm.local):
        given = [f.name for f in fields(SlurmOptions) if getattr(slurm, f.name) != f.default]
        if given:
            flag = f"--{given[0]}" if given[0] == "wait" else f"--slurm_{given[0]}"
            raise UserError(f"{flag} needs --slurm_partition (or --local): it is an option of the SLURM worker jobs")
        return None
    if slurm.nodes != 1 or slurm.tasks_per_node > 1:
        raise UserError("--slurm_nodes and --slurm_tasks_per_node: a sweep's worker job is one task on one machine")
    if slurm.gpus_per_node and options.gpus_per_run > slurm.gpus_per_node:
        raise UserError(
            f"--gpus_per_run {options.gpus_per_run} exceeds --slurm_gpus_per_node {slurm.gpus_per_node}: "
            "a run takes its GPUs from its worker job"
        )
    slurm.tasks_per_node = 1
    return slurm


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
    stored["out"] = out
    recorded_url = stored.get("storage")
    if recorded_url and not storage and "***" in recorded_url:
        raise UserError(f"--report: the sweep's storage is {recorded_url}: give --storage URL with its password")
    stored["storage"] = storage or recorded_url
    return spec_from_dict(stored)
