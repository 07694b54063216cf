"""Sweeps that train (tiny runs): two workers on one journal file, parity with main.py, kill -9 and resume, search."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from sweep_helpers import REPO, read_csv, run_sweep, sweep_command, tiny_keys

import main as main_module
import sweep
from experiments.distributed import evaluations

GRID = ["--seeds", "0", "--grid", "dada=true,false", "lr=0.01,0.02", "--threads", "1"]
SETTINGS = ["dada=true+lr=0.01", "dada=true+lr=0.02", "dada=false+lr=0.01", "dada=false+lr=0.02"]
RUN_FILES = ["config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    """4 settings by two worker processes sharing the journal file in OUT."""
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_sweep("--out", str(tmp / "out"), *GRID, "--jobs", "2", *tiny_keys(tmp / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


def test_two_workers_do_every_run_exactly_once(grid_sweep: Path):
    out = grid_sweep / "out"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    trials = optuna.load_study(study_name="out.runs", storage=storage).get_trials()
    assert sorted(t.user_attrs["setting"] for t in trials) == sorted(SETTINGS)  # one trial per run
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for setting in SETTINGS:
        folder = out / "runs" / setting / "seed0"
        assert all((folder / name).is_file() for name in RUN_FILES), folder
        epochs = [row["epoch"] for row in read_csv(folder / "metrics.csv")]
        assert epochs == ["-1", "0", "1", "2"]  # trained once: no repeated epoch

    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == [
        "setting", "dada", "lr", "seed", "status", "best_epoch", "recall@1", "map@r", "seconds", "error",
    ]  # fmt: skip
    assert [(r["setting"], r["dada"], r["lr"], r["seed"], r["status"]) for r in rows] == [
        ("dada=true+lr=0.01", "true", "0.01", "0", "done"), ("dada=true+lr=0.02", "true", "0.02", "0", "done"),
        ("dada=false+lr=0.01", "false", "0.01", "0", "done"), ("dada=false+lr=0.02", "false", "0.02", "0", "done"),
    ]  # fmt: skip
    report = read_csv(out / "report.csv")
    assert [(r["setting"], r["metric"], r["n"]) for r in report] == [
        (setting, metric, "1") for setting in SETTINGS for metric in ("recall@1", "map@r")
    ]
    # dada=false+lr=0.02 is compared with dada=true+lr=0.02 (the baseline: the first value of the first term)
    assert report[6]["wins"] != "" and report[2]["wins"] == ""
    assert "| dada=false+lr=0.02 | dada=true+lr=0.02 | recall@1 | 1 |" in (out / "report.md").read_text()
    assert "Paired difference" in (out / "report.md").read_text() and (out / "report.png").is_file()


def test_a_sweep_run_equals_main_py(grid_sweep: Path, tmp_path: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's workers (--threads 1)
    try:
        argv = [*tiny_keys(grid_sweep / "data"), "--seed", "0", "--dada", "false", "--lr", "0.02"]
        assert main_module.main([*argv, "--save_path", str(tmp_path), "--save_name", "main"]) == 0
    finally:
        torch.set_num_threads(threads)
    ours = grid_sweep / "out" / "runs" / "dada=false+lr=0.02" / "seed0"
    theirs = tmp_path / "synthetic" / "main"
    assert sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*")) == sorted(
        p.relative_to(theirs).as_posix() for p in theirs.rglob("*")
    )
    best = json.loads((theirs / "summary.json").read_text())["best"]
    row = next(r for r in read_csv(grid_sweep / "out" / "results.csv") if r["setting"] == "dada=false+lr=0.02")
    assert {key: float(row[key]) for key in best} == best  # exactly, not approximately
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in read_csv(theirs / "metrics.csv")]
    assert [{k: v for k, v in r.items() if k != "time"} for r in read_csv(ours / "metrics.csv")] == drop_time


def test_kill_9_then_the_same_command_gives_the_same_results(grid_sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    half = ["--seeds", "0", "--grid", "dada=true", "lr=0.01,0.02", "--threads", "1"]  # the first two settings
    args = ["--out", str(out), *half, *tiny_keys(grid_sweep / "data")]
    process = subprocess.Popen(sweep_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "runs" / SETTINGS[0] / "seed0"
    deadline = time.monotonic() + 240
    while not (first / "metrics.csv").is_file() and process.poll() is None:  # written after last.pt
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    before = read_csv(first / "metrics.csv")
    assert before[-1]["epoch"] != "2"  # killed in the middle of the run
    result = run_sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]

    def comparable(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(path)]

    assert comparable(out / "results.csv") == comparable(grid_sweep / "out" / "results.csv")[:2]
    after = read_csv(first / "metrics.csv")
    assert [r["epoch"] for r in after] == ["-1", "0", "1", "2"]
    assert after[: len(before)] == before  # resumed from last.pt (the epochs before the kill kept their times)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    trials = optuna.load_study(study_name="out.runs", storage=storage).get_trials()
    lost = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(trials) == 3 and len(lost) == 1 and "lost" in lost[0].user_attrs["result"]["error"]


def test_search_prunes_then_runs_the_best_over_the_seeds(grid_sweep: Path, tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "lr: {type: float, low: 0.000001, high: 0.05, log: true}\nembed_dim: {type: categorical, choices: [4, 16]}\n"
    )
    out = tmp_path / "tune"
    keys = [*tiny_keys(grid_sweep / "data"), "--synthetic_classes", "12", "--val_classes", "0.34"]
    threads = torch.get_num_threads()
    try:
        argv = ["--out", str(out), "--search", str(space), "--trials", "5", "--seeds", "0", "1", "--threads", "1"]
        assert sweep.main([*argv, "--jobs", "1", *keys]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = read_csv(out / "results.csv")
    assert list(rows[0])[:4] == ["setting", "lr", "embed_dim", "seed"] and "val_recall@1" in rows[0]
    trials = [r for r in rows if r["setting"].startswith("trial")]
    assert len(trials) == 5 and {r["status"] for r in trials} <= {"done", "pruned"}
    assert any(r["status"] == "pruned" for r in trials)
    assert (out / "search" / trials[0]["setting"] / "metrics.csv").is_file()  # run folders are kept
    done = [r for r in trials if r["status"] == "done"]
    best = max(done, key=lambda r: float(r["val_recall@1"]))
    finals = [r for r in rows if r["setting"] == "best"]
    assert [r["seed"] for r in finals] == ["0", "1"] and all(r["status"] == "done" for r in finals)
    assert all((r["lr"], r["embed_dim"]) == (best["lr"], best["embed_dim"]) for r in finals)
    assert all(r["recall@1"] != "" for r in finals)  # test metrics of the selected model
    importances = read_csv(out / "search_importances.csv")
    assert {r["parameter"] for r in importances} == {"lr", "embed_dim"}
    assert (out / "search_history.png").is_file()
    assert "| best | recall@1 | 2 |" in (out / "report.md").read_text()


def test_a_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries_it_once(grid_sweep: Path, tmp_path, capsys):
    out = tmp_path / "out"
    # an image size the configuration accepts but the synthetic benchmark refuses when the run builds its data
    argv = ["--out", str(out), "--grid", "synthetic_image_size=8,32", "--threads", "1", "--jobs", "1",
            *tiny_keys(grid_sweep / "data", epochs=1)]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert sweep.main(argv) == 1
        err = capsys.readouterr().err
        assert "1 run(s) failed" in err and "synthetic_image_size" in err
        rows = read_csv(out / "results.csv")
        assert [r["status"] for r in rows] == ["failed", "done"]
        assert "synthetic_image_size: expected an integer >= 16" in rows[0]["error"] and rows[1]["error"] == ""
        assert sweep.main(argv) == 1  # the same command: the failed run once more, the done one skipped
    finally:
        torch.set_num_threads(threads)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    trials = optuna.load_study(study_name="out.runs", storage=storage).get_trials()
    assert (
        sorted(t.user_attrs["setting"] for t in trials) == ["synthetic_image_size=32"] + ["synthetic_image_size=8"] * 2
    )


def test_two_seeds_in_parallel_equal_them_one_after_the_other(tmp_path: Path):
    """Each seed's synthetic benchmark has its own folder: two workers generate and read theirs at the same time."""
    argv = ["--seeds", "0", "1", "--grid", "dada=false", "--threads", "1"]
    parallel = run_sweep("--out", str(tmp_path / "parallel"), *argv, "--jobs", "2", *tiny_keys(tmp_path / "data_p"))
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    sequential = run_sweep("--out", str(tmp_path / "sequential"), *argv, "--jobs", "1", *tiny_keys(tmp_path / "data_s"))
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "data_p" / "synthetic").iterdir()) == ["seed0-8x6-32px", "seed1-8x6-32px"]

    def comparable(out: str) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(tmp_path / out / "results.csv")]

    rows = comparable("parallel")
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "done"), ("1", "done")]
    assert rows[0]["recall@1"] != rows[1]["recall@1"] or rows[0]["map@r"] != rows[1]["map@r"]  # two data sets
    assert rows == comparable("sequential")


def _processes_of(folder: Path) -> list[str]:
    """Command lines of this machine's processes that name `folder` (torchrun and its ranks name the run folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(folder) in line:
                found.append(line)
    return found


def test_gpus_per_run_trains_under_torchrun_is_killed_with_its_worker_and_resumes(tmp_path: Path):
    """--gpus_per_run 2 on a CPU-only machine: each run on two gloo processes. A kill -9 of the sweep ends torchrun
    and its ranks too; the same command resumes the run, which ends as `torchrun --nproc_per_node 2 main.py`."""
    out, data = tmp_path / "out", tmp_path / "data"
    keys = [*tiny_keys(data), "--dada", "false"]
    args = ["--out", str(out), "--seeds", "0", "--threads", "1", "--gpus_per_run", "2", *keys]
    process = subprocess.Popen(sweep_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out / "runs" / "base" / "seed0"
    deadline = time.monotonic() + 300
    while not (folder / "metrics.csv").is_file() and process.poll() is None:  # written after last.pt
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _processes_of(folder)  # torchrun and its ranks, started by the sweep's worker
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while _processes_of(folder):  # killed with the worker: a run taken over is never trained twice at once
        assert time.monotonic() < deadline, _processes_of(folder)
        time.sleep(0.1)
    before = read_csv(folder / "metrics.csv")
    assert before[-1]["epoch"] != "2"  # killed in the middle of the run

    result = run_sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    after = read_csv(folder / "metrics.csv")
    assert [r["epoch"] for r in after] == ["-1", "0", "1", "2"] and after[: len(before)] == before  # resumed
    rows = read_csv(out / "results.csv")
    assert [(r["setting"], r["status"]) for r in rows] == [("base", "done")]

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = [*command, *keys, "--seed", "0", "--save_path", str(tmp_path / "main"), "--save_name", "ddp"]
    done = subprocess.run(reference, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = tmp_path / "main" / "synthetic" / "ddp"
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in read_csv(theirs / "metrics.csv")]
    assert [{k: v for k, v in r.items() if k != "time"} for r in after] == drop_time
    best = json.loads((theirs / "summary.json").read_text())["best"]
    assert {key: float(rows[0][key]) for key in best} == best


def test_a_search_with_the_hyperband_pruner_prunes_or_completes_every_trial(grid_sweep: Path, tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.000001, high: 0.05, log: true}\n")
    out = tmp_path / "tune"
    keys = [*tiny_keys(grid_sweep / "data"), "--synthetic_classes", "12", "--val_classes", "0.34"]
    argv = ["--out", str(out), "--search", str(space), "--trials", "4", "--pruner", "hyperband", "--seeds", "0"]
    threads = torch.get_num_threads()
    try:
        assert sweep.main([*argv, "--threads", "1", "--jobs", "1", *keys]) == 0
    finally:
        torch.set_num_threads(threads)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    trials = optuna.load_study(study_name="tune.search", storage=storage).get_trials()
    states = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len(trials) == 4 and all(t.state in states for t in trials)
    for trial in trials:  # every evaluation reached the pruner; a pruned trial stopped before the last epoch
        epochs = sorted(trial.intermediate_values)
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        assert epochs and epochs == ([0, 1, 2] if complete else list(range(len(epochs))))
    rows = read_csv(out / "results.csv")
    assert {r["status"] for r in rows if r["setting"].startswith("trial")} <= {"done", "pruned"}
    assert [(r["setting"], r["status"]) for r in rows if r["setting"] == "best"] == [("best", "done")]


def test_worker_jobs_through_submitits_local_executor_and_wait(grid_sweep: Path, tmp_path: Path):
    """--local: the SLURM path (make_executor, TrainingJob, the job's entry) on this machine; --wait then reports."""
    out = tmp_path / "out"
    args = ["--out", str(out), "--seeds", "0", "--threads", "1", "--local", "--wait", "--slurm_time", "10"]
    result = run_sweep(*args, *tiny_keys(grid_sweep / "data", epochs=1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"submitted 1 worker job\(s\): \d+; logs: ", result.stdout), result.stdout
    assert "sweep: 1 runs done" in result.stdout and result.stderr == ""
    assert [(r["setting"], r["status"]) for r in read_csv(out / "results.csv")] == [("base", "done")]


def test_a_search_under_torchrun_reports_every_evaluation_and_prunes_with_sigterm(tmp_path: Path):
    """--gpus_per_run 2: the worker reads each run's metrics.csv into its trial; a pruned run is stopped by SIGTERM,
    after its ranks saved their position, and keeps its folder."""
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: categorical, choices: [0.000001, 0.05]}\n")  # trial0: 0.05, trial1: 0.000001
    out = tmp_path / "tune"
    keys = [*tiny_keys(tmp_path / "data", epochs=6), "--synthetic_classes", "12", "--val_classes", "0.34"]
    args = ["--out", str(out), "--search", str(space), "--trials", "2", "--pruner", "median", "--seeds", "0"]
    result = run_sweep(*args, "--threads", "1", "--gpus_per_run", "2", "--dada", "false", *keys)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(out / "results.csv")
    assert [(r["setting"], r["status"]) for r in rows] == [("best", "done"), ("trial0", "done"), ("trial1", "pruned")]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    complete, pruned = optuna.load_study(study_name="tune.search", storage=storage).get_trials()
    for trial in (complete, pruned):
        folder = out / "search" / trial.user_attrs["setting"]
        reported = {int(r["epoch"]): float(r["recall@1"]) for r in read_csv(folder / "metrics.csv")[1:]}
        if trial is complete:
            assert trial.intermediate_values == reported and sorted(reported) == list(range(6))
        else:
            assert trial.intermediate_values == {0: reported[0]} and sorted(reported)[-1] < 5  # stopped early
    last = torch.load(out / "search" / "trial1" / "checkpoints" / "last.pt", weights_only=False)
    assert last["in_epoch"]["epoch"] == last["epoch"]  # the position inside the epoch SIGTERM stopped


def test_the_evaluations_read_from_metrics_csv_are_those_of_complete_rows_of_trained_epochs(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    assert evaluations(path, "recall@1") == {}  # not written yet
    rows = "epoch,loss,recall@1\r\n-1,,0.5\r\n0,2.0,0.75\r\n1,1.5,\r\n2,1.25,0.875\r\n3,1.0,0.9"
    path.write_text(rows)  # epoch 1 was not evaluated; the row of epoch 3 is not complete
    assert evaluations(path, "recall@1") == {0: 0.75, 2: 0.875}
