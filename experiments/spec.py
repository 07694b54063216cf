"""What a sweep runs: the base configuration, grid terms, seeds, an optional search; one `Config` per run.

Every run's configuration is built by main.py's own command-line layer from the same tokens main.py would get
(`--config FILE`, the extra `--key value` pairs, the setting's keys and `--seed k`), so a key means and validates
exactly as in main.py.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config.command_line import parse_command_line
from config.schema import FIELDS, Config, canonical_key, unknown_key_message
from utilities.errors import UserError

SWEEP_FILE = "sweep.json"
BASE_SETTING = "base"  # the name of the only setting of a sweep without a grid
BEST_SETTING = "best"  # the setting of a search's best parameters, re-run over the seeds
RUN_OPTIONS = ("--resume", "--dry_run", "--check_images")  # main.py's options that make no sense in a sweep


@dataclass
class SweepSpec:
    """Everything a worker needs, in plain (picklable) values."""

    out: str
    config: str | None = None
    keys: list[str] = field(default_factory=list)  # the extra `--key value` tokens for every run
    grid: list[tuple[str, list[str]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    search: dict[str, dict[str, Any]] | None = None  # the search space (experiments.space)
    trials: int = 0
    pruner: str = "median"
    baseline: tuple[str, str] | None = None
    storage: str | None = None  # None: the journal file in `out`
    study: str = ""  # the prefix of the study names; default: the name of `out`
    heartbeat: float = 10.0
    grace: float = 120.0
    threads: int | None = None
    gpus_per_run: int = 1  # above 1: each run under torchrun with this many processes (experiments.distributed)

    @property
    def study_prefix(self) -> str:
        return self.study or Path(self.out).resolve().name


def parse_grid(terms: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2` terms into (key, values); unknown keys and empty values are user errors."""
    grid: list[tuple[str, list[str]]] = []
    for term in terms:
        key, sep, text = term.partition("=")
        key = canonical_key(key.strip().lstrip("-").replace("-", "_"))
        values = [v.strip() for v in text.split(",")]
        if not sep or not key or not all(values):
            raise UserError(f"--grid: '{term}' is not of the form key=value1,value2")
        if key not in FIELDS:
            raise UserError(unknown_key_message(key, "--grid"))
        if key in ("seed", *(k for k, _ in grid)):
            raise UserError(f"--grid: key '{key}' " + ("is given by --seeds" if key == "seed" else "appears twice"))
        if len(set(values)) != len(values):
            raise UserError(f"--grid: key '{key}' repeats a value")
        grid.append((key, values))
    return grid


def settings(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The Cartesian product of the grid terms, in the order given (one empty setting without a grid)."""
    keys = [key for key, _ in grid]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(values for _, values in grid))]


def setting_name(values: dict[str, Any]) -> str:
    """A readable folder name: `dada=false`, `dada=true+lr=0.001`; `base` for no keys."""
    return "+".join(f"{key}={value}" for key, value in values.items()) or BASE_SETTING


def baseline_values(values: dict[str, str], baseline: tuple[str, str] | None) -> dict[str, str] | None:
    """The setting a setting is compared with: its values with the baseline key set to the baseline value."""
    if baseline is None or baseline[0] not in values:
        return None
    return {**values, baseline[0]: baseline[1]}


def default_baseline(grid: list[tuple[str, list[str]]]) -> tuple[str, str] | None:
    return (grid[0][0], grid[0][1][0]) if grid else None


def parse_baseline(text: str, grid: list[tuple[str, list[str]]]) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    terms = dict(grid)
    if not sep or key not in terms:
        raise UserError(f"--baseline: '{text}' must be key=value with a key of --grid ({', '.join(terms) or 'none'})")
    if value not in terms[key]:
        raise UserError(f"--baseline: '{value}' is not one of the --grid values of '{key}' ({', '.join(terms[key])})")
    return key, value


def run_tokens(spec: SweepSpec, values: dict[str, Any], seed: int) -> list[str]:
    """main.py's command-line tokens of one run."""
    tokens = ["--config", spec.config] if spec.config else []
    tokens += list(spec.keys)
    for key, value in values.items():
        tokens += [f"--{key}", str(value)]
    return [*tokens, "--seed", str(seed)]


def run_config(spec: SweepSpec, values: dict[str, Any], seed: int) -> Config:
    """The configuration of one run, built as main.py builds it."""
    cfg, _ = parse_command_line(run_tokens(spec, values, seed), "sweep run")
    return cfg


def check_keys(tokens: list[str]) -> None:
    for token in tokens:
        name = token.split("=", 1)[0]
        if name in RUN_OPTIONS:
            raise UserError(f"{name} is a main.py option, not a sweep key (a sweep resumes by itself)")


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """What must not change between commands continuing one sweep: the resolved configuration, grid, seeds, search."""
    base = run_config(spec, {}, spec.seeds[0]).to_dict()
    base.pop("seed")
    return {
        "config": json.loads(json.dumps(base)),
        "grid": [[key, values] for key, values in spec.grid],
        "seeds": list(spec.seeds),
        "search": spec.search,
        "trials": spec.trials,
        "pruner": spec.pruner,
        "baseline": list(spec.baseline) if spec.baseline else None,
    }


def first_difference(recorded: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The name of the first differing entry (a configuration key by its own name), or None."""
    for key in sorted(set(recorded) | set(given)):
        old, new = recorded.get(key), given.get(key)
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            inner = first_difference(old, new)
            if inner is not None:
                return inner
        elif old != new:
            return f"{key} (recorded {json.dumps(old)}, given {json.dumps(new)})"
    return None


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_dict(stored: dict[str, Any]) -> SweepSpec:
    """The inverse of `spec_to_dict` after a JSON round trip (tuples come back as lists)."""
    stored = {**stored, "grid": [(key, values) for key, values in stored["grid"]]}
    stored["baseline"] = tuple(stored["baseline"]) if stored["baseline"] else None
    return SweepSpec(**stored)
