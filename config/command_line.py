"""The one command-line layer: main.py, eval.py, retrieve.py, export.py and new scripts parse the same way.

* A configuration key is written ``--key value`` (lists ``--key a b c``, booleans ``--key`` / ``--key false``)
  everywhere, is converted and checked by the schema (`config.schema.coerce`, the key's choices and bounds),
  and its help and default come from the part that declares it (defaults of registries included). An older
  name of a key is accepted as an alias (``--kernels`` for ``--workers``).
* Bad input is a `UserError`: one line ``error: ...`` and exit code 2.
* ``--help`` lists every option once, with its default.

main.py (and any script that trains): `parse_command_line(argv, description, extra=...)` resolves the schema
defaults (or a stored configuration), the YAML of ``--config`` and ``--key value`` overrides into a validated
`Config`; the reference implementation's YAML files and flags are translated by `compat.options` first, with
one line each on stderr. A script adds its own options with `extra`, a function that receives the argparse
parser::

    def my_options(parser):
        parser.add_argument("--trials", type=int, default=20, help="number of trials")

    cfg, options = parse_command_line(argv, __doc__, extra=my_options)   # options.trials, cfg.lr, ...

A script that reads a few keys (eval.py, retrieve.py, export.py): `script_parser(prog, description)` gives
the parser, `add_key(parser, "workers", default=2)` adds a schema key (its help, choices and aliases; the
schema's default unless another is given), and `parse_script(parser, argv)` parses, converts and checks::

    parser = script_parser("my_script.py", "what it does")
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run folder")
    add_key(parser, "workers", default=2)
    args = parse_script(parser, argv)                                     # args.workers is an int >= 0

What a run folder means is one rule, for every script (`config.checkpoints`): where a model is used
(eval.py, retrieve.py, export.py, `load_model`) it stands for ``checkpoints/best.pt`` (else
``checkpoints/last.pt``); where a run continues (``main.py --resume``) for ``checkpoints/last.pt``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from compat.options import REFERENCE_OPTIONS, translate_reference
from config.schema import (
    FIELDS,
    KEY_TYPES,
    Config,
    apply_overrides,
    canonical_key,
    coerce,
    is_key,
    read_yaml,
    unknown_key_message,
    validate,
)
from utilities.errors import ArgumentParser, UserError
from utilities.settings import check_field, field_choices, field_default

RUN_OPTIONS = ("--config", "--resume", "--dry_run", "--check_images", "--help", "-h")
"""main.py's options that are not configuration keys."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default ("required" for required options); descriptions keep their
    line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        field = getattr(action, "key_field", None)
        if field is not None:  # a configuration key (`add_key`): its choices are read only when help is shown
            return f"{text}{_listed(field)} (default: {_shown(action.shown_default)})"
        if "(default:" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {'none' if action.default is None else _shown(action.default)})"


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) if value else "none"
    if value == "":
        return "''"
    return str(value)


def _aliases(name: str) -> tuple[str, ...]:
    return tuple(FIELDS[name].metadata.get("aliases", ()))


def _listed(field: Any) -> str:
    """ "; one of: a, b, c" for a key with a fixed set of values (registries are read here), else ""."""
    choices = field_choices(field)
    return f"; one of: {', '.join(map(str, choices))}" if choices else ""


def key_help(name: str) -> str:
    """The help line of a configuration key: its part's help, its choices and its schema default."""
    field = FIELDS[name]
    return f"{field.metadata['help']}{_listed(field)} (default: {_shown(field_default(field))})"


# --------------------------------------------------------------------------- scripts that read a few keys


def script_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose errors are `UserError`s and whose help shows every default (see the module docstring)."""
    return ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False)


_SCHEMA_DEFAULT = object()


def add_key(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    *,
    default: Any = _SCHEMA_DEFAULT,
    help: str | None = None,
    flags: Sequence[str] = (),
) -> None:
    """Add the configuration key `name` as ``--name`` (its aliases and `flags` as other spellings), with the
    help, choices and bounds its part declares, and the schema's default unless `default` is given (None:
    unset, e.g. "the checkpoint's"). `parser` may be an argument group of a `script_parser`."""
    field = FIELDS[name]
    value = field_default(field) if default is _SCHEMA_DEFAULT else default
    action = parser.add_argument(
        f"--{name}",
        *(f"--{alias}" for alias in _aliases(name)),
        *flags,
        dest=name,
        metavar="VALUE",
        nargs="+" if typing.get_origin(KEY_TYPES[name]) is list else None,
        default=argparse.SUPPRESS,
        help=help or field.metadata["help"],
    )
    action.key_field = field  # the help formatter adds the choices and the default
    action.shown_default = "none" if value is None else value
    action.schema_default = value  # read by parse_script


def parse_script(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`; every configuration key given is converted and checked as main.py does it, every key
    not given takes the default its `add_key` declared."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [option[2:] for action in parser._actions for option in action.option_strings]
        named = [token for token in unknown if token.startswith("--")]
        if not named:
            raise UserError(f"{parser.prog}: unexpected argument '{unknown[0]}'")
        name = named[0][2:].split("=", 1)[0]
        raise UserError(unknown_key_message(name, f"{parser.prog}'s command line", valid=options))
    for action in parser._actions:
        if not hasattr(action, "schema_default"):
            continue
        name = action.dest
        if hasattr(args, name):
            value = coerce(name, getattr(args, name))
            check_field(FIELDS[name], value)
            setattr(args, name, value)
        else:
            setattr(args, name, action.schema_default)
    return args


# --------------------------------------------------------------------------- main.py: the whole configuration


def apply_source(cfg: Config, values: dict[str, Any], where: str) -> list[str]:
    """Set one source's keys on `cfg` after translating the reference's options; one line per translation."""
    unknown = [key for key in values if not is_key(key) and key not in REFERENCE_OPTIONS]
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
            if not is_key(key) and key not in REFERENCE_OPTIONS:
                raise UserError(unknown_key_message(key, "the command line", list(REFERENCE_OPTIONS)))
            overrides[key] = [inline] if inline else []
        elif key is None:
            raise UserError(f"unexpected argument '{token}' (options are written --key value)")
        else:
            overrides[key].append(token)
    for name, values in overrides.items():
        if not values:
            if name in REFERENCE_OPTIONS and not is_key(name):  # a flag of the reference's argparse
                values.append(str(REFERENCE_OPTIONS[name].bare).lower())
            elif KEY_TYPES[canonical_key(name)] is bool:
                values.append("true")
            else:
                raise UserError(f"key '{name}' on the command line needs a value")
    return overrides


def build_parser(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.ArgumentParser:
    """main.py's argparse front end: the run options, `extra`'s options, and every schema key, so that --help
    lists them all (once each, with the default)."""
    parser = ArgumentParser(
        description=description,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
        epilog="The reference implementation's option names (n_epochs, d_dis_ratio, fd2_bn, ...) and YAML files are "
        "accepted too; each translated option is reported on one line (python -m compat.options lists them).",
    )
    parser.add_argument("--config", help="YAML file of settings (command-line keys win over it)")
    parser.add_argument(
        "--resume",
        help="continue a run: a checkpoint file or a run folder (its checkpoints/last.pt); auto: continue "
        "<save_path>/<dataset>/<save_name> if it has checkpoints/last.pt, else start it there",
    )
    parser.add_argument("--dry_run", action="store_true", help="check config and data, print a summary, exit")
    parser.add_argument("--check_images", action="store_true", help="with --dry_run: decode every image")
    if extra is not None:
        extra(parser)
    group = parser.add_argument_group("settings (YAML keys; any can be given as --key value)")
    for name in FIELDS:
        if f"--{name}" in RUN_OPTIONS:  # the key `resume`: its values are a subset of the run option --resume
            continue
        group.add_argument(
            f"--{name}",
            *(f"--{alias}" for alias in _aliases(name)),
            help=key_help(name),
            metavar="VALUE",
            default=argparse.SUPPRESS,
            nargs="+" if typing.get_origin(KEY_TYPES[name]) is list else None,
        )
    return parser


def parse_command_line(
    argv: Sequence[str] | None,
    description: str,
    base: dict[str, Any] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[Config, argparse.Namespace]:
    """Resolve defaults (or `base`, a stored configuration), the YAML of `--config` and `--key value`
    overrides into a validated `Config`.

    Returns the config and the options that are not keys: the run options (`config`, `resume`, `dry_run`,
    `check_images`) and those `extra` adds. The reference implementation's options are translated, with one
    line each on stderr.
    """
    parser = build_parser(description, extra)
    own = [option for action in parser._actions for option in action.option_strings if not _is_key_option(option)]
    takes_value = {
        option
        for action in parser._actions
        if action.nargs != 0 and not _is_key_option(action.option_strings[0] if action.option_strings else "")
        for option in action.option_strings
    }
    run_tokens, key_tokens = _separate(list(argv) if argv is not None else sys.argv[1:], own, takes_value)
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


def _is_key_option(option: str) -> bool:
    return option.startswith("--") and is_key(option[2:]) and option not in RUN_OPTIONS


def _separate(tokens: list[str], own_options: Sequence[str], takes_value: set[str]) -> tuple[list[str], list[str]]:
    """Split argv into the options argparse reads (run options, a script's own) and the `--key value`
    overrides of the configuration."""
    run, keys = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        if name in own_options:
            run.append(token)
            if name in takes_value and "=" not in token and i + 1 < len(tokens):
                run.append(tokens[i + 1])
                i += 1
        else:
            keys.append(token)
        i += 1
    return run, keys
