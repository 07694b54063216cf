"""submit.py on a real single-node SLURM cluster: a 2-task CPU training to the end, and a job preempted
mid-epoch (SIGUSR1), requeued by submitit, resumed, ending exactly as the uninterrupted one; sweep.py's workers as
SLURM jobs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import missing, slurm_cluster
from sweep_helpers import read_csv, tiny_keys
from test_preemption import assert_same_run
from test_training import tiny_args

import submit

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 8  # per epoch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    with slurm_cluster(folder / "cluster") as env:
        yield folder, env


def run_args(tmp: Path, name: str) -> list[str]:
    return [*tiny_args(tmp, name, epochs=3), "--plots", "false", "--iterations_per_epoch", str(ITERATIONS),
            "--eval_backend", "torch"]  # fmt: skip


def submit_job(env: dict[str, str], arguments: list[str]) -> tuple[str, str]:
    command = [sys.executable, "submit.py", "--slurm_tasks_per_node", "2", "--slurm_cpus_per_task", "1",
               "--slurm_time", "30", *arguments]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.search(r"submitted job (\d+)", result.stdout)
    assert job_id and "run folder: " in result.stdout, result.stdout
    return job_id.group(1), result.stdout


def job_field(env: dict[str, str], job_id: str, name: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    found = re.search(rf"\b{name}=(\S+)", shown)
    return found.group(1) if found else ""


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds  # a liveness bound only
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.1)


def test_submit_runs_to_the_end_and_a_preempted_job_is_requeued_and_resumes_exactly(cluster):
    tmp, env = cluster
    job, printed = submit_job(env, ["--wait", *run_args(tmp, "full")])
    assert f"job {job} finished" in printed
    runs = tmp / "runs" / "synthetic"
    assert (runs / "full" / "summary.json").is_file() and (runs / "submitit" / job).is_dir()

    job, _ = submit_job(env, run_args(tmp, "preempted"))
    log = runs / "preempted" / "train.log"
    wait_for(lambda: log.exists() and "[epoch 0]" in log.read_text(), 300, "epoch 0 of the second job")
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)  # what SLURM sends before a time limit
    wait_for(lambda: job_field(env, job, "Restarts") == "1", 120, "submitit's requeue")
    wait_for(lambda: job_field(env, job, "JobState") == "PENDING", 120, "the requeued job pending")
    saved = torch.load(runs / "preempted" / "checkpoints" / "last.pt", weights_only=True)
    # the signal left after epoch 0's line: the run stopped after an iteration of epoch 1 or 2 (never at an epoch's
    # start: the position saved is one inside an epoch, with its running sums and generators)
    assert saved["epoch"] in (1, 2) and 0 < saved["in_epoch"]["steps"] <= ITERATIONS
    # slurmctld holds a requeued job back for a while (its BeginTime, a couple of minutes in SLURM 22.05) so
    # that the old allocation is cleaned up; this cluster has nothing to clean, so the test lets it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
    wait_for(lambda: job_field(env, job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 300, "the job's end")
    assert job_field(env, job, "JobState") == "COMPLETED"
    assert "resuming epoch 1 after iteration" in (runs / "preempted" / "train.log").read_text()
    assert_same_run(runs / "preempted", runs / "full")


def test_sweep_submits_its_workers_as_jobs_that_do_every_run(cluster):
    tmp, env = cluster
    out = tmp / "sweep"
    command = [sys.executable, "sweep.py", "--out", str(out), "--seeds", "0", "1", "--grid", "dada=false",
               "--threads", "1", "--jobs", "2", "--slurm_partition", "test", "--slurm_cpus_per_task", "1",
               "--slurm_time", "30", *tiny_keys(tmp / "sweep_data", epochs=2)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    submitted = re.search(r"submitted 2 worker job\(s\): (\d+) (\d+)", result.stdout)
    assert submitted, result.stdout
    for job in submitted.groups():
        wait_for(lambda job=job: job_field(env, job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 300, job)
        assert job_field(env, job, "JobState") == "COMPLETED", (out / "submitit" / job / f"{job}_0_log.err").read_text()
    rows = read_csv(out / "results.csv")  # written by the workers in the jobs
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "done"), ("1", "done")]
    assert all((out / "runs" / "dada=false" / f"seed{seed}" / "summary.json").is_file() for seed in (0, 1))


def test_options_are_validated_before_anything_is_submitted(capsys):
    assert submit.main(["--slurm_nodes", "0", "--save_name", "x"]) == 2
    assert submit.main(["--batch_size", "7", "--samples_per_class", "2"]) == 2
    assert submit.main(["--resume", "auto"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), errors
    assert "--slurm_nodes must be at least 1" in errors[0] and "batch_size" in errors[1] and "--resume" in errors[2]
