"""Did-you-mean: every common name of the table leads to its key, in main.py (command line and YAML) and in
eval.py / retrieve.py / export.py, and only to a key the script has."""

from __future__ import annotations

from pathlib import Path

import pytest

import eval as eval_module
import export as export_module
import main as main_module
import retrieve as retrieve_module
from compat.options import REFERENCE_OPTIONS
from config.command_line import parse_command_line
from config.schema import FIELDS
from utilities.suggestions import COMMON_KEY_NAMES, suggest_key

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
ACCEPTED = {name for name in COMMON_KEY_NAMES if name in FIELDS or name in REFERENCE_OPTIONS}
"""Common names main.py accepts as they are (the reference's options, translated): never suggested."""
UNKNOWN = {name: key for name, key in COMMON_KEY_NAMES.items() if name not in ACCEPTED}
SCRIPTS = {"eval.py": eval_module, "retrieve.py": retrieve_module, "export.py": export_module}
SCRIPT_ARGS = {
    "eval.py": [],
    "retrieve.py": ["--checkpoint", "x.pt"],
    "export.py": ["--checkpoint", "x.pt", "--format", "onnx", "--output", "x.onnx"],
}
"""Each script's required arguments: argparse reports missing ones before unknown ones."""


def error_line(capsys, code: int) -> str:
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_table_maps_to_keys_of_main_py_only() -> None:
    assert set(COMMON_KEY_NAMES.values()) <= set(FIELDS)
    assert {"n_epochs"} == ACCEPTED  # the one common name that is the reference's option


@pytest.mark.parametrize(("name", "key"), sorted(UNKNOWN.items()))
def test_main_suggests_the_key_of_a_common_name_on_the_command_line_and_in_yaml(
    name: str, key: str, tmp_path: Path, capsys
) -> None:
    line = error_line(capsys, main_module.main(["--config", DEMO, f"--{name}", "1"]))
    assert line == f"error: unknown key '{name}' in the command line; did you mean '{key}'?"
    path = tmp_path / "settings.yaml"
    path.write_text(f"{name}: 1\n")
    line = error_line(capsys, main_module.main(["--config", str(path)]))
    assert line == f"error: unknown key '{name}' in config file {path}; did you mean '{key}'?"


def test_the_issue_cases_and_what_the_table_must_not_break(capsys) -> None:
    for typed in ("learning_rate", "lerning_rate", "base_lr", "Learning-Rate", "learning_rat"):
        line = error_line(capsys, main_module.main(["--config", DEMO, f"--{typed}", "0.1"]))
        assert line.endswith("did you mean 'lr'?"), line
    line = error_line(capsys, main_module.main(["--momentum", "0.9"]))  # no such key: no suggestion
    assert line == "error: unknown key 'momentum' in the command line; see --help"
    line = error_line(capsys, main_module.main(["--batch_sise", "4"]))  # a plain typo: string distance
    assert line.endswith("did you mean 'batch_size'?")
    cfg, _ = parse_command_line(["--config", DEMO, "--n_epochs", "3"], "test")  # the reference's name: translated
    assert cfg.epochs == 3
    capsys.readouterr()


def flags(script: str) -> set[str]:
    parser = SCRIPTS[script].build_parser()
    return {option[2:] for option in parser._option_string_actions if option.startswith("--")}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_other_scripts_suggest_only_their_own_flags(script: str, capsys) -> None:
    own = flags(script)
    for name, key in COMMON_KEY_NAMES.items():
        if any(flag.startswith(name) for flag in own):
            continue  # argparse takes it as an abbreviation of that flag (eval.py --batch)
        line = error_line(capsys, SCRIPTS[script].main([*SCRIPT_ARGS[script], f"--{name}", "1"]))
        assert line.startswith(f"error: unknown key '{name}' in {script}'s command line"), line
        suggested = line.partition("; did you mean '")[2].removesuffix("'?")
        assert suggested in own | {""}, line
        if key in own:
            assert suggested == key, line


def test_a_flag_of_the_script_wins_over_the_table(capsys) -> None:
    line = error_line(capsys, retrieve_module.main(["--checkpoint", "x.pt", "--num_workers", "2"]))
    assert line == "error: unknown key 'num_workers' in retrieve.py's command line; did you mean 'workers'?"
    line = error_line(capsys, eval_module.main(["--num_workers=2"]))
    assert line == "error: unknown key 'num_workers' in eval.py's command line; did you mean 'workers'?"
    assert suggest_key("learning_rate", ["format", "output", "checkpoint"]) is None
