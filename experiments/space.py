"""Search spaces: a YAML mapping of configuration keys to `{type: float | int | categorical, low, high, log, step,
choices}`, checked before any run and turned into Optuna suggestions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config.schema import FIELDS, canonical_key, unknown_key_message
from utilities.errors import UserError

TYPES = ("float", "int", "categorical")
ENTRIES = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


def read_space(path: str) -> dict[str, dict[str, Any]]:
    """Read and check a search space file (the keys' values are checked by `space_values` with the config)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"--search: cannot read {path} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--search: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--search: {path} must map configuration keys to their ranges")
    return {canonical_key(key): check_entry(canonical_key(key), entry, path) for key, entry in data.items()}


def check_entry(key: str, entry: Any, where: str) -> dict[str, Any]:
    if key not in FIELDS:
        raise UserError(unknown_key_message(key, f"search space {where}"))
    if key == "seed":
        raise UserError(f"search space {where}: 'seed' is given by --seeds, not searched")
    if not isinstance(entry, dict) or entry.get("type") not in TYPES:
        raise UserError(f"search space {where}: key '{key}' needs type: one of {', '.join(TYPES)}")
    kind = entry["type"]
    unknown = sorted(set(entry) - ENTRIES[kind] - {"type"})
    if unknown:
        raise UserError(f"search space {where}: key '{key}' ({kind}) does not take '{unknown[0]}'")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"search space {where}: key '{key}' needs a non-empty list of choices")
        return dict(entry)
    low, high = entry.get("low"), entry.get("high")
    number = int if kind == "int" else (int, float)
    if not isinstance(low, number) or not isinstance(high, number) or isinstance(low, bool) or isinstance(high, bool):
        raise UserError(f"search space {where}: key '{key}' needs numbers low and high ({kind})")
    if not low < high:
        raise UserError(f"search space {where}: key '{key}': low ({low}) must be below high ({high})")
    if entry.get("log") and low <= 0:
        raise UserError(f"search space {where}: key '{key}': log needs low > 0 (got {low})")
    if entry.get("log") and entry.get("step") is not None:
        raise UserError(f"search space {where}: key '{key}': log and step cannot be combined")
    return dict(entry)


def space_values(space: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Settings that reach every edge of the space (low, high, each choice): checked with the configuration."""
    edges: list[dict[str, Any]] = []
    for key, entry in space.items():
        values = entry["choices"] if entry["type"] == "categorical" else [entry["low"], entry["high"]]
        edges.extend({key: value} for value in values)
    return edges


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's values of the space's keys."""
    values: dict[str, Any] = {}
    for key, entry in space.items():
        if entry["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, entry["choices"])
        elif entry["type"] == "int":
            values[key] = trial.suggest_int(key, entry["low"], entry["high"], step=entry.get("step") or 1,
                                            log=bool(entry.get("log")))  # fmt: skip
        else:
            values[key] = trial.suggest_float(key, float(entry["low"]), float(entry["high"]), step=entry.get("step"),
                                              log=bool(entry.get("log")))  # fmt: skip
    return values
