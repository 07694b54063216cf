"""Runs that stop and continue: signals mid-epoch, timed checkpoints, --resume auto, logs written to files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from signal_at import signalling
from test_training import read_rows, tiny_args, without_time

import engine.trainer
import main as main_module
from config.schema import FIELDS
from engine.data import SeededBatches
from engine.interrupts import exit_code

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3  # epoch 0 trains the discriminators only, epochs 1-2 everything (mixup draws included)
STOP_AT = 8 + 4  # 8 iterations per epoch: the 4th iteration of epoch 1


def args(tmp: Path, name: str, *extra: str) -> list[str]:
    return [*tiny_args(tmp, name, epochs=EPOCHS), "--plots", "false", *extra]


def assert_same_run(folder: Path, reference: Path) -> None:
    """Identical losses and metrics per epoch, summary, and weights (bit for bit)."""
    assert without_time(read_rows(folder / "metrics.csv")) == without_time(read_rows(reference / "metrics.csv"))
    assert json.loads((folder / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    a = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert "in_epoch" not in a
    for part in ("model", "criterion"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run, its output going to a file (as under a batch system), not a terminal."""
    tmp = tmp_path_factory.mktemp("preemption")
    with (tmp / "console.log").open("w") as log, redirect_stdout(log), redirect_stderr(log):
        assert main_module.main(args(tmp, "full")) == 0
    return tmp


def test_a_log_file_reads_cleanly_and_the_run_folder_keeps_train_log(reference: Path):
    console = (reference / "console.log").read_text()
    assert "\r" not in console and "\x1b[" not in console  # no bar redraws, no colour codes
    assert [line.split("]")[0] for line in console.splitlines() if line.startswith("[epoch")] == [
        "[epoch 0",
        "[epoch 1",
        "[epoch 2",
    ]
    train_log = (reference / "runs" / "synthetic" / "full" / "train.log").read_text()
    assert "\r" not in train_log
    assert [line for line in train_log.splitlines() if line.startswith("[epoch")] == [
        line for line in console.splitlines() if line.startswith("[epoch")
    ]


def test_seeded_batches_skip_the_consumed_batches_without_reading_them():
    from datasets.samplers import ClassRandomBatchSampler

    sampler = ClassRandomBatchSampler([0, 0, 1, 1, 2, 2, 3, 3] * 4, 8, 2, seed=5, num_batches=6)
    batches = SeededBatches(sampler, seed=5)
    batches.set_epoch(3)
    whole = list(batches)
    batches.set_epoch(3, start=4)
    assert len(batches) == 2 and list(batches) == whole[4:]  # same indices and per-sample seeds
    batches.set_epoch(4)
    assert len(batches) == 6


@pytest.mark.parametrize(("name", "workers", "resume"), [("SIGUSR1", 0, "folder"), ("SIGTERM", 2, "auto")])
def test_a_signal_mid_epoch_saves_the_position_and_the_resumed_run_is_identical(
    reference: Path, monkeypatch, capsys, name: str, workers: int, resume: str
):
    run_name = f"stopped_{name.lower()}"
    extra = ("--kernels", str(workers), *(("--resume", "auto") if resume == "auto" else ()))
    signum = signal.Signals[name]
    handler = signal.getsignal(signum)
    monkeypatch.setattr(engine.trainer, "train_step", signalling(engine.trainer.train_step, signum, STOP_AT))
    assert main_module.main(args(reference, run_name, *extra)) == exit_code(signum) == 128 + signum
    monkeypatch.undo()
    assert signal.getsignal(signum) == handler  # the trainer put the previous handler back
    folder = reference / "runs" / "synthetic" / run_name
    err = capsys.readouterr().err
    continue_hint = "the same command" if resume == "auto" else f"python main.py --resume {folder}"
    assert f"stopped by {name} in epoch 1 after iteration 4/8" in err
    assert err.strip().splitlines()[-1].endswith(f"continue with {continue_hint}")
    saved = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["in_epoch"]["steps"] == 4

    if resume == "auto":
        again = [*args(reference, run_name, *extra)]  # the same command continues
    else:
        again = ["--resume", str(folder), "--kernels", str(workers)]
    assert main_module.main(again) == 0
    assert_same_run(folder, reference / "runs" / "synthetic" / "full")
    assert "resuming epoch 1 after iteration 4" in (folder / "train.log").read_text()


def test_timed_checkpoints_let_a_crashed_run_lose_at_most_the_interval(reference: Path, monkeypatch):
    """checkpoint_minutes (here: after every iteration) saves the position; a crash in the middle of an epoch
    (standing in for SIGKILL) resumes from the last one and ends exactly as the uninterrupted run."""
    original, calls = engine.trainer.train_step, {"n": 0}

    def crash_at_the_fourth_iteration(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated node failure")
        return original(*a, **k)

    monkeypatch.setattr(engine.trainer, "train_step", crash_at_the_fourth_iteration)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        main_module.main(args(reference, "crashed", "--checkpoint_minutes", "1e-9"))
    monkeypatch.setattr(engine.trainer, "train_step", original)
    folder = reference / "runs" / "synthetic" / "crashed"
    saved = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["in_epoch"]["steps"]) == (0, 3)
    assert main_module.main(["--resume", str(folder), "--checkpoint_minutes", "0"]) == 0
    assert_same_run(folder, reference / "runs" / "synthetic" / "full")


def test_resume_auto_starts_continues_refuses_and_stops_when_finished(reference: Path, capsys):
    runs = reference / "runs" / "synthetic"
    without_name = [a for a in args(reference, "x") if a not in ("--save_name", "x")]
    assert main_module.main([*without_name, "--resume", "auto"]) == 2
    assert "needs an explicit --save_name" in capsys.readouterr().err
    key_file = reference / "auto.yaml"
    key_file.write_text("resume: auto\n")
    assert main_module.main([*without_name, "--config", str(key_file)]) == 2
    assert "resume: auto needs an explicit save_name" in capsys.readouterr().err

    # a finished run started again: exit 0 at once, nothing rewritten
    shutil.copytree(runs / "full", runs / "finished")
    last = runs / "finished" / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns
    assert main_module.main([*args(reference, "finished"), "--config", str(key_file)]) == 0
    assert "already finished its 3 epochs; nothing to do" in capsys.readouterr().out
    assert last.stat().st_mtime_ns == before
    # one more epoch asked: it continues in the same folder (no finished_1)
    assert main_module.main([*args(reference, "finished"), "--resume", "auto", "--epochs", "4"]) == 0
    assert torch.load(last, weights_only=True)["epoch"] == 4 and not (runs / "finished_1").exists()
    assert FIELDS["resume"].metadata["choices"] == ("", "auto")


def test_ranks_agree_on_the_stop_and_resume_exactly(tmp_path: Path):
    """Two gloo ranks: only rank 1 gets SIGUSR1, both stop at the same iteration; the resumed run (2 ranks)
    ends exactly as an uninterrupted 2-rank run."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is installed with torch")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = ["torchrun", "--standalone", "--nproc_per_node", "2"]
    small = ["--epochs", "2", "--iterations_per_epoch", "4", "--eval_backend", "torch"]
    full = subprocess.run([*torchrun, "main.py", *args(tmp_path, "full"), *small], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    stop = [*torchrun, "tests/engine/signal_at.py", "SIGUSR1", str(4 + 2), "1", *args(tmp_path, "stopped"), *small]
    stopped = subprocess.run(stop, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert "stopped by SIGUSR1 in epoch 1 after iteration 2/4" in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.count("continue with") == 1  # rank 0 says it, once
    folder = tmp_path / "runs" / "synthetic" / "stopped"
    saved = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert saved["in_epoch"]["steps"] == 2 and len(saved["in_epoch"]["randomness"]) == 2
    resumed = subprocess.run([*torchrun, "main.py", "--resume", str(folder)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(folder, tmp_path / "runs" / "synthetic" / "full")
