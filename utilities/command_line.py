"""The command line of main.py: run options, YAML files and `--key value` overrides into one `Config`.

This is where the reference implementation's options enter: its YAML files and flags are translated by
`compat.options` into this project's keys, with one line each on stderr, before the configuration core
(`utilities.config`) sees them. A stored configuration (``--resume``) is this project's own and is read as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any

from compat.options import REFERENCE_OPTIONS, translate_reference
from utilities.config import (
    FIELDS,
    KEY_TYPES,
    Config,
    apply_overrides,
    field_choices,
    read_yaml,
    unknown_key_message,
    validate,
)
from utilities.errors import UserError


def apply_source(cfg: Config, values: dict[str, Any], where: str) -> list[str]:
    """Set one source's keys on `cfg` after translating the reference's options; one line per translation."""
    unknown = [key for key in values if key not in FIELDS and key not in REFERENCE_OPTIONS]
    if unknown:
        raise UserError(unknown_key_message(unknown[0], where, list(REFERENCE_OPTIONS)))
    values, lines = translate_reference(values, where, cfg.to_dict())
    apply_overrides(cfg, values, where)
    return lines


def _split_cli_overrides(tokens: list[str]) -> dict[str, list[str]]:
    """`--key value [value ...]` pairs (also `--key=value`) from the tokens argparse did not know."""
    overrides: dict[str, list[str]] = {}
    key: str | None = None
    for token in tokens:
        if token.startswith("--"):
            name, _, inline = token[2:].partition("=")
            key = name.replace("-", "_")
            if key not in FIELDS and key not in REFERENCE_OPTIONS:
                raise UserError(unknown_key_message(key, "the command line", list(REFERENCE_OPTIONS)))
            overrides[key] = [inline] if inline else []
        elif key is None:
            raise UserError(f"unexpected argument '{token}' (options are written --key value)")
        else:
            overrides[key].append(token)
    for name, values in overrides.items():
        if not values:
            if name in REFERENCE_OPTIONS and name not in FIELDS:  # a flag of the reference's argparse
                values.append(str(REFERENCE_OPTIONS[name].bare).lower())
            elif KEY_TYPES[name] is bool:
                values.append("true")
            else:
                raise UserError(f"key '{name}' on the command line needs a value")
    return overrides


def _help_line(f: dataclasses.Field, default: Any) -> str:
    choices = field_choices(f)
    listed = f"; one of: {', '.join(map(str, choices))}" if choices else ""
    return f"{f.metadata['help']}{listed} (default: {default})"


def build_parser(description: str) -> argparse.ArgumentParser:
    """The argparse front end: run options plus every schema key, so --help lists them all."""
    parser = argparse.ArgumentParser(
        description=description,
        allow_abbrev=False,
        epilog="The reference implementation's option names (n_epochs, d_dis_ratio, fd2_bn, ...) and YAML files are "
        "accepted too; each translated option is reported on one line (python -m compat.options lists them).",
    )
    parser.add_argument("--config", help="YAML file of settings (command-line keys win over it)")
    parser.add_argument(
        "--resume",
        help="continue a run: a checkpoint file or a run folder; auto: continue <save_path>/<dataset>/<save_name> "
        "if it has checkpoints/last.pt, else start it there",
    )
    parser.add_argument("--dry_run", action="store_true", help="check config and data, print a summary, exit")
    parser.add_argument("--check_images", action="store_true", help="with --dry_run: decode every image")
    group = parser.add_argument_group("settings (YAML keys; any can be given as --key value)")
    for name, f in FIELDS.items():
        if name == "resume":  # the key's values are a subset of the run option --resume above
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        nargs = "+" if typing.get_origin(KEY_TYPES[name]) is list else None
        group.add_argument(
            f"--{name}",
            help=_help_line(f, default),
            metavar="VALUE",
            default=argparse.SUPPRESS,
            nargs=nargs,
        )
    return parser


def parse_command_line(
    argv: Sequence[str] | None, description: str, base: dict[str, Any] | None = None
) -> tuple[Config, argparse.Namespace]:
    """Resolve defaults (or `base`, a stored configuration), the YAML of `--config` and `--key value`
    overrides into a validated `Config`.

    Returns the config and the run options (`config`, `resume`, `dry_run`, `check_images`). The reference
    implementation's options are translated, with one line each on stderr.
    """
    parser = build_parser(description)
    known = ["--config", "--resume", "--dry_run", "--check_images", "--help", "-h"]
    run_tokens, key_tokens = _separate(list(argv) if argv is not None else sys.argv[1:], known)
    options = parser.parse_args(run_tokens)
    cfg = Config()
    if base:
        apply_overrides(cfg, base, "the stored configuration")
    mapped = apply_source(cfg, read_yaml(options.config), f"config file {options.config}") if options.config else []
    mapped += apply_source(cfg, _split_cli_overrides(key_tokens), "the command line")
    validate(cfg)
    for line in mapped:  # only once the whole configuration is valid: an error stays one line
        print(line, file=sys.stderr)
    return cfg, options


def _separate(tokens: list[str], run_options: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into the run options (for argparse) and the schema `--key value` overrides."""
    run, keys = [], []
    takes_value = {"--config", "--resume"}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        if name in run_options:
            run.append(token)
            if name in takes_value and "=" not in token and i + 1 < len(tokens):
                run.append(tokens[i + 1])
                i += 1
        else:
            keys.append(token)
        i += 1
    return run, keys
