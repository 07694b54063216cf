"""The configuration schema, and how YAML files and the command line become one resolved `Config`.

Every key is declared once, by the part that reads it (`PARTS`; a loss's keys by its registry entry), with a
default, a one-line help (shown by ``python main.py --help``), its allowed values and bounds; `Config` joins
them, flat.
Resolution order: schema defaults, then the YAML file given by ``--config``, then ``--key value`` on the
command line (the command line wins). Unknown keys, wrong types and impossible values raise `UserError`
naming the key (and the closest valid key), before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from architectures.settings import ModelSettings
from config.resolve import resolve
from criteria.registry import LOSS_KEYS
from criteria.settings import CriterionSettings, DADASettings, check_criterion
from datasets.settings import DataSettings, check_data
from engine.settings import OptimSettings, RunSettings, check_optimisation, check_run
from metrics.settings import EvalSettings
from utilities.errors import UserError
from utilities.settings import check_field, field_choices, field_default, setting
from utilities.suggestions import suggest_key


@dataclass
class _CoreConfig(
    EvalSettings, OptimSettings, DADASettings, CriterionSettings, ModelSettings, RunSettings, DataSettings
):
    """Every setting of a run, flat: the keys of each part, declared next to its code (defaults: the reference
    implementation's `parameters.py` defaults)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def kernels(self) -> int:
        """The former name of `workers` (the reference's), still read by older code."""
        return self.workers


PARTS: tuple[tuple[type, Callable[[Any], None] | None], ...] = (
    (DataSettings, check_data),
    (RunSettings, check_run),
    (ModelSettings, None),
    (CriterionSettings, check_criterion),
    (DADASettings, None),  # checked by check_criterion when dada is on
    (OptimSettings, check_optimisation),
    (EvalSettings, None),  # resolved by config.resolve
)
"""The parts of the configuration: the dataclass declaring each part's keys, and the part's own check of
their values together (after every key's choices and bounds have been checked)."""


def _with_loss_keys(core: type) -> type:
    """The schema: the core keys plus every key a registered loss reads (`criteria.registry.LOSS_KEYS`, each
    declared once, with its default, help and choices, in the loss's registry entry)."""
    declared = {f.name for f in dataclasses.fields(core)}
    extra = [
        (key.name, type(key.default), setting(key.default, key.help, key.choices))
        for key in LOSS_KEYS.values()
        if key.name not in declared
    ]
    schema = dataclasses.make_dataclass("Config", extra, bases=(core,))
    schema.__module__, schema.__doc__ = __name__, core.__doc__
    return schema


if TYPE_CHECKING:  # a type checker sees every key of the parts; the losses' keys are added at run time
    Config = _CoreConfig
else:
    Config = _with_loss_keys(_CoreConfig)

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

KEY_ALIASES: dict[str, str] = {alias: f.name for f in FIELDS.values() for alias in f.metadata.get("aliases", ())}
"""Older names of keys, accepted wherever a key is read (YAML, command line, stored configurations)."""


def canonical_key(key: str) -> str:
    """The schema name of `key` (an alias becomes its key; anything else is returned as it is)."""
    return KEY_ALIASES.get(key, key)


def is_key(key: str) -> bool:
    return key in FIELDS or key in KEY_ALIASES


def unknown_key_message(
    key: str, where: str, other_names: Sequence[str] = (), *, valid: Sequence[str] | None = None
) -> str:
    """'unknown key' naming the closest valid key: the one message for an unknown key or option, in a YAML file,
    on any script's command line or in a stored configuration. The candidates are the schema's keys and
    `other_names`, or exactly `valid` (a script's own options)."""
    candidates = list(valid) if valid is not None else [*FIELDS, *KEY_ALIASES, *other_names]
    close = suggest_key(key, candidates)
    hint = f"; did you mean '{close}'?" if close else "; see --help"
    return f"unknown key '{key}' in {where}{hint}"


KEY_TYPES: dict[str, Any] = typing.get_type_hints(Config)


def _parse_bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise UserError(f"key '{key}' expects true or false, got '{text}'")


def _coerce_scalar(value: Any, kind: type, key: str) -> Any:
    """Check (YAML values) or convert (command-line strings) one value to the schema type."""
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            return _parse_bool(value, key)
        try:
            return kind(value)
        except ValueError:
            raise UserError(f"key '{key}' expects {kind.__name__}, got '{value}'") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"key '{key}' expects {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def coerce(key: str, value: Any) -> Any:
    """Convert a YAML value or command-line string(s) to the type the schema declares for `key`."""
    kind = KEY_TYPES[key]
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            value = [value]
        parse = FIELDS[key].metadata.get("parse")
        if parse is not None:
            value = parse([str(v) for v in value])
        return [_coerce_scalar(v, item, key) for v in value]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return _coerce_scalar(value, kind, key)


def key_table() -> str:
    """The table of every key of docs/training.md (``python -m config`` prints it; a test checks the copy):
    key, default and description, part by part, then the losses' keys."""
    rows = ["| key | default | what it sets |", "|---|---|---|"]
    for f in FIELDS.values():
        default = field_default(f)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        choices = field_choices(f)
        table = f.metadata.get("table")
        listed = f" ({' / '.join(map(str, choices))})" if choices and not table else ""
        aliases = f" (also `{'`, `'.join(f.metadata['aliases'])}`)" if f.metadata.get("aliases") else ""
        help_text = table or f.metadata["help"]
        cell = str(shown).replace("|", "\\|") if shown != "" else "''"
        rows.append(f"| `{f.name}`{aliases} | `{cell}` | {help_text.replace('|', '/')}{listed} |")
    return "\n".join(rows)


def validate(cfg: Config) -> Config:
    """Reject impossible values with one line naming the key, then resolve the values that depend on others
    (`config.resolve`); returns `cfg` for chaining."""
    for f in FIELDS.values():
        check_field(f, getattr(cfg, f.name))
    for _, check in PARTS:
        if check is not None:
            check(cfg)
    return resolve(cfg)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a flat YAML mapping; a missing or malformed file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def config_from_dict(values: dict[str, Any], where: str = "the configuration") -> Config:
    """Build a validated `Config` from a mapping of schema keys (unknown keys are a `UserError`)."""
    cfg = Config()
    apply_overrides(cfg, values, where)
    return validate(cfg)


def apply_overrides(cfg: Config, values: dict[str, Any], where: str) -> None:
    """Set the keys of one source (this project's key names only) on `cfg`."""
    for key, value in values.items():
        if not is_key(key):
            raise UserError(unknown_key_message(key, where))
        setattr(cfg, canonical_key(key), coerce(canonical_key(key), value))
