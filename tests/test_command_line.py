"""The one command-line layer (config.command_line): main.py, eval.py, retrieve.py and export.py list every
option once with its default, parse configuration keys the same way, accept a key's older name, and a new
script reuses main.py's keys and validation."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

import eval as eval_script
import export
import main
import retrieve
import sweep
from config import FIELDS, config_from_dict
from config.checkpoints import model_checkpoint
from config.command_line import add_key, build_parser, parse_command_line, parse_script, script_parser
from experiments import command as sweep_command
from utilities.errors import UserError
from utilities.settings import field_default

PARSERS = {
    "main.py": lambda: build_parser(main.__doc__),
    "eval.py": eval_script.build_parser,
    "retrieve.py": retrieve.build_parser,
    "export.py": export.build_parser,
    "sweep.py": lambda: sweep_command.build_parser(sweep.__doc__),
}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings and action.dest != "help"]


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_help_lists_every_option_once_with_its_default(script) -> None:
    parser = PARSERS[script]()
    entries = [line.split()[0].rstrip(",") for line in parser.format_help().splitlines() if line.startswith("  -")]
    assert sorted(entries) == sorted(action.option_strings[0] for action in parser._actions if action.option_strings)
    text = "".join(parser.format_help().split())  # argparse wraps lines (also after hyphens)
    for action in _options(parser):
        shown = parser.formatter_class(script)._get_help_string(action)
        assert "".join(shown.split()) in text, action.option_strings[0]
        assert re.search(r"\((default: .+|required)\)$", shown), action.option_strings[0]


def test_main_help_shows_each_schema_default() -> None:
    parser = build_parser(main.__doc__)
    helps = {action.dest: action.help for action in _options(parser)}
    assert {name for name in FIELDS} <= set(helps)
    assert helps["workers"].endswith("(default: 4)")
    assert helps["evaluation_metrics"].endswith(f"(default: {' '.join(field_default(FIELDS['evaluation_metrics']))})")


def test_workers_accepts_its_former_name_kernels_everywhere(tmp_path) -> None:
    cfg, _ = parse_command_line(["--kernels", "3"], "")
    assert cfg.workers == 3 and cfg.kernels == 3
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"kernels": 1}))
    assert parse_command_line(["--config", str(path)], "")[0].workers == 1
    assert config_from_dict({"kernels": 0}, "a stored configuration").workers == 0  # checkpoints of before
    args = parse_script(retrieve.build_parser(), ["--checkpoint", "x", "--kernels", "0"])
    assert args.workers == 0


def test_script_keys_are_converted_and_checked_as_main_does() -> None:
    args = parse_script(eval_script.build_parser(), ["--embeddings", "e.npz", "--batch_size", "7", "--gpu", "1", "2"])
    assert args.eval_batch_size == 7 and args.gpu == [1, 2] and args.eval_backend == "auto" and args.workers is None
    with pytest.raises(UserError, match="key 'eval_backend' must be one of auto, faiss, torch; got 'annoy'"):
        parse_script(eval_script.build_parser(), ["--eval_backend", "annoy"])
    with pytest.raises(UserError, match="key 'eval_batch_size' must be at least 1; got 0"):
        parse_script(retrieve.build_parser(), ["--checkpoint", "x", "--batch_size", "0"])
    with pytest.raises(UserError, match="key 'workers' expects int, got 'two'"):
        parse_script(retrieve.build_parser(), ["--checkpoint", "x", "--workers", "two"])
    with pytest.raises(UserError, match="unknown key 'querry' in retrieve.py's command line; did you mean 'query'"):
        parse_script(retrieve.build_parser(), ["--checkpoint", "x", "--querry", "a.jpg"])


def test_a_new_script_declares_its_options_and_reuses_the_keys() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trials", type=int, default=20, help="number of trials")

    cfg, options = parse_command_line(["--trials", "5", "--lr", "0.5", "--epochs", "2"], "a sweep", extra=extra)
    assert options.trials == 5 and cfg.lr == 0.5 and cfg.epochs == 2
    with pytest.raises(UserError, match="key 'epochs' must be at least 1"):
        parse_command_line(["--epochs", "0"], "a sweep", extra=extra)
    parser = script_parser("tool.py", "a tool")
    add_key(parser, "embed_dim", default=None)
    assert parse_script(parser, []).embed_dim is None
    assert parse_script(parser, ["--embed_dim", "64"]).embed_dim == 64


def test_a_run_folder_means_best_then_last_where_a_model_is_used(tmp_path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"")
    assert model_checkpoint(tmp_path / "run") == folder / "last.pt"
    (folder / "best.pt").write_bytes(b"")
    assert model_checkpoint(tmp_path / "run") == folder / "best.pt"
    assert model_checkpoint(folder / "last.pt") == folder / "last.pt"
    with pytest.raises(UserError, match="checkpoint not found"):
        model_checkpoint(tmp_path / "absent")
