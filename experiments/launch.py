"""Where a sweep's workers run: local processes pinned to CUDA devices, or SLURM jobs (through submitit).

A local worker gets `gpus_per_run` devices of its own (`CUDA_VISIBLE_DEVICES`); by default there is one worker per
group of `gpus_per_run` visible devices, and one on a CPU-only machine. A SLURM job runs the same local launch on
the machine it gets: `job_main` is its entry (`engine.slurm.TrainingJob` calls it with the sweep's spec as JSON).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.slurm import SlurmOptions, TrainingJob, make_executor
from experiments import worker
from experiments.spec import SweepSpec, spec_from_dict, spec_to_dict
from utilities.errors import UserError


def visible_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_jobs(gpus_per_run: int) -> int:
    """One worker per `gpus_per_run` visible CUDA devices; one without CUDA (or with fewer devices)."""
    return max(visible_devices() // gpus_per_run, 1)


def check_devices(gpus_per_run: int) -> None:
    """Local runs of `gpus_per_run` GPUs need as many visible devices (CPU-only: as many gloo processes)."""
    devices = visible_devices()
    if devices and gpus_per_run > devices:
        raise UserError(f"--gpus_per_run {gpus_per_run}: only {devices} CUDA device(s) are visible")


def device_group(index: int, gpus_per_run: int, devices: int) -> str | None:
    """`CUDA_VISIBLE_DEVICES` of worker `index`: its own `gpus_per_run` devices (None without CUDA)."""
    if not devices:
        return None
    return ",".join(str((index * gpus_per_run + k) % devices) for k in range(gpus_per_run))


def _worker_process(spec: SweepSpec, index: int, devices: str | None) -> None:
    """A spawned worker: a run stopped by a signal ends the process with 128 + the signal's number."""
    from engine.interrupts import TrainingStopped

    try:
        worker.run_worker(spec, index, devices)
    except TrainingStopped as stop:
        sys.exit(stop.exit_code)


def launch(spec: SweepSpec, jobs: int, first_index: int = 0) -> int:
    """`jobs` workers: this process for one, else spawned processes (each pinned to its devices, if any).

    Returns how many worker processes ended abnormally (their runs are taken over by the next command). A run
    stopped by a signal in this process raises `engine.interrupts.TrainingStopped`."""
    devices = visible_devices()
    if jobs == 1:
        pinned = device_group(0, spec.gpus_per_run, devices) if spec.gpus_per_run > 1 else None
        worker.run_worker(spec, first_index, pinned)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_process, args=(spec, first_index + i, device_group(i, spec.gpus_per_run, devices))
        )
        for i in range(jobs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return sum(process.exitcode != 0 for process in processes)


def job_argv(spec: SweepSpec, index: int) -> list[str]:
    """The arguments of SLURM worker job `index`: its index and the sweep's spec as JSON."""
    return [str(index), json.dumps(spec_to_dict(spec))]


def job_main(argv: list[str]) -> int:
    """A SLURM job's entry: the local launch on the job's machine (its own index range); 1 when a worker failed
    abnormally, 128 + a signal's number when a run was stopped by it (the job is then requeued and resumes)."""
    from engine.interrupts import TrainingStopped

    index, spec = int(argv[0]), spec_from_dict(json.loads(argv[1]))
    jobs = default_jobs(spec.gpus_per_run)
    try:
        crashed = launch(spec, jobs, first_index=index * 1000)
    except TrainingStopped as stop:
        return stop.exit_code
    return 1 if crashed else 0


def slurm_executor(spec: SweepSpec, slurm: SlurmOptions) -> Any:
    """The submitit executor of the worker jobs; logs in `--slurm_folder`, by default OUT/submitit."""
    folder = Path(slurm.folder) if slurm.folder else Path(spec.out) / "submitit"
    return make_executor(slurm, folder, local=slurm.local)


def submit_workers(executor: Any, spec: SweepSpec, jobs: int, wait: bool) -> int | None:
    """Submit `jobs` worker jobs (requeued on preemption by `TrainingJob`; OUT passed as an absolute path) and
    print their ids. With `wait`: block until every job ends and return how many failed (each named on stderr
    with its log); else None."""
    absolute = replace(spec, out=str(Path(spec.out).resolve()))
    submitted = [executor.submit(TrainingJob(job_argv(absolute, index), job_main)) for index in range(jobs)]
    ids = " ".join(job.job_id for job in submitted)
    print(f"submitted {jobs} worker job(s): {ids}; logs: {submitted[0].paths.folder.parent}", flush=True)
    if not wait:
        print(f"the report, at any time: python sweep.py --report {spec.out}")
        return None
    failed = 0
    for job in submitted:
        try:
            job.results()
        except Exception as exc:  # noqa: BLE001 - a failed job is reported as one line
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            print(f"sweep: job {job.job_id} failed: {lines[-1]} (logs: {job.paths.stderr})", file=sys.stderr)
            failed += 1
    return failed
