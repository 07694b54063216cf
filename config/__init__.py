"""The composition root: the configuration schema assembled from the parts, every script's command line, and
the resolution of values (the one place where a value is rewritten).

* `config.schema`: `Config` (every key, flat, as YAML files and ``--key value`` write them), reading YAML,
  coercing and validating values.
* `config.command_line`: the command line of main.py (and of any script that reuses the training keys).
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
    field_choices,
    read_yaml,
    unknown_key_message,
    validate,
)

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
