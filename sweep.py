"""Sweeps of runs: settings x seeds, or an Optuna search on validation classes then its best setting over the seeds.

    python sweep.py --config configs/cub200.yaml --out runs/sweeps/cub_dada --seeds 0 1 2 --grid dada=true,false
    python sweep.py --config configs/cub200.yaml --out runs/sweeps/cub_tune --search configs/search/dada.yaml \\
        --trials 40 --seeds 0 1 2 --val_classes 0.2
    python sweep.py --report runs/sweeps/cub_dada
    python sweep.py ... --gpus_per_run 4                      # each run under torchrun on 4 GPUs
    python sweep.py ... --jobs 8 --slurm_partition gpu --slurm_gpus_per_node 1 --slurm_time 1440   # SLURM workers

Each run is an ordinary main.py run in OUT/runs/<setting>/seed<k>/; OUT/results.csv and OUT/report.{md,csv,png}
are rewritten after every run. Re-running a command continues its sweep; any number of commands (on one machine
or many, see --storage; or SLURM jobs, see --slurm_partition) cooperate. Exit codes: 0 every run done (with
--slurm_partition: the workers submitted), 1 some run failed (listed), 2 a user error, 130 interrupted (the same
command resumes). See docs/experiments.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from utilities.errors import UserError, report_user_error


def main(argv: Sequence[str] | None = None) -> int:
    from experiments import command

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options, spec = command.parse_sweep(argv, __doc__)
        from experiments.results import write_outputs
        from experiments.worker import Sweep

        if spec is None:
            spec = command.load_recorded_spec(options.report, options.storage)
            write_outputs(spec, Sweep(spec))
            print(f"report: {spec.out}/report.md")
            return 0
        from experiments import launch

        slurm = command.slurm_request(options)
        jobs = options.jobs or (1 if slurm else launch.default_jobs(spec.gpus_per_run))
        if slurm is None:
            launch.check_devices(spec.gpus_per_run)
            if spec.threads is None:
                spec.threads = command.cpu_threads(jobs * spec.gpus_per_run)
        executor = launch.slurm_executor(spec, slurm) if slurm else None  # may refuse: before anything is recorded
        command.record_sweep(spec)
        sweep = Sweep(spec)
        sweep.check_recorded(command.fingerprint(spec))
        sweep.enqueue_initial()
        sweep.retry_failed()
    except UserError as exc:
        return report_user_error(exc)
    if executor is not None:
        crashed = launch.submit_workers(executor, spec, jobs, wait=slurm.wait)
        if crashed is None:
            return 0
    else:
        from engine.interrupts import TrainingStopped

        try:
            crashed = launch.launch(spec, jobs)
        except (KeyboardInterrupt, TrainingStopped) as stop:
            print("\ninterrupted: run the same command again to continue the sweep", file=sys.stderr)
            return stop.exit_code if isinstance(stop, TrainingStopped) else 130
    rows = write_outputs(spec, sweep)
    failed = [row for row in rows if row["status"] == "failed"]
    print(f"sweep: {sum(r['status'] == 'done' for r in rows)} runs done; report: {spec.out}/report.md")
    if crashed:
        print(f"sweep: {crashed} worker(s) ended abnormally; run the same command to continue", file=sys.stderr)
    if failed:
        print(f"sweep: {len(failed)} run(s) failed:", file=sys.stderr)
        for row in failed:
            print(f"  {row['setting']} seed {row['seed']}: {row['error']}", file=sys.stderr)
    return 1 if failed or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
