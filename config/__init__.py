"""The composition root: the configuration schema assembled from the parts, every script's command line, and
the resolution of values (the one place where a value is rewritten).

* `config.schema`: `Config` (every key, flat, as YAML files and ``--key value`` write them), joined from the
  keys each part declares next to its code (``datasets/settings.py``, ``architectures/settings.py``,
  ``criteria/settings.py``, ``engine/settings.py``, ``metrics/settings.py``, the loss registry); reading YAML,
  converting and checking values (each part's bounds and checks).
* `config.resolve`: the one place where a value is rewritten from others.
* `config.command_line`: the one command-line layer of main.py, eval.py, retrieve.py, export.py and new
  scripts (its docstring, and docs/extending.md, show how a new script declares its options).
* `config.checkpoints`: a checkpoint (of this project or of the reference implementation) -> configuration ->
  model, for evaluation and inference.

Nothing below this package imports it (tests/test_architecture.py checks the import graph).
"""

from __future__ import annotations

from config.schema import (
    FIELDS,
    KEY_TYPES,
    Config,
    apply_overrides,
    coerce,
    config_from_dict,
    read_yaml,
    unknown_key_message,
    validate,
)
from utilities.settings import field_choices

__all__ = [
    "FIELDS",
    "KEY_TYPES",
    "Config",
    "apply_overrides",
    "coerce",
    "config_from_dict",
    "field_choices",
    "read_yaml",
    "unknown_key_message",
    "validate",
]
