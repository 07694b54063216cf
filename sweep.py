"""Sweeps of runs: settings x seeds, or an Optuna search on validation classes then its best setting over the seeds.

    python sweep.py --config configs/cub200.yaml --out runs/sweeps/cub_dada --seeds 0 1 2 --grid dada=true,false
    python sweep.py --config configs/cub200.yaml --out runs/sweeps/cub_tune --search configs/search/dada.yaml \\
        --trials 40 --seeds 0 1 2 --val_classes 0.2
    python sweep.py --report runs/sweeps/cub_dada

Each run is an ordinary main.py run in OUT/runs/<setting>/seed<k>/; OUT/results.csv and OUT/report.{md,csv,png}
are rewritten after every run. Re-running a command continues its sweep; any number of commands (on one machine
or many, see --storage) cooperate. Exit codes: 0 every run done, 1 some run failed (listed), 2 a user error,
130 interrupted (the same command resumes). See docs/experiments.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from utilities.errors import UserError, report_user_error


def launch(spec, jobs: int) -> int:
    """`jobs` workers: this process for one, else spawned processes (each pinned to one CUDA device if any).

    Returns how many worker processes ended abnormally (their runs are taken over by the next command)."""
    from experiments.worker import run_worker

    if jobs == 1:
        run_worker(spec, 0)
        return 0
    import multiprocessing

    import torch

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_worker, args=(spec, i, str(i % devices) if devices else None)) for i in range(jobs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return sum(process.exitcode != 0 for process in processes)


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
        if options.jobs is not None and options.jobs < 1:
            raise UserError(f"--jobs must be at least 1 (got {options.jobs})")
        jobs = options.jobs or command.default_jobs()
        if spec.threads is None:
            spec.threads = command.cpu_threads(jobs)
        command.record_sweep(spec)
        sweep = Sweep(spec)
        sweep.check_recorded(command.fingerprint(spec))
        sweep.enqueue_initial()
        sweep.retry_failed()
    except UserError as exc:
        return report_user_error(exc)
    try:
        crashed = launch(spec, jobs)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue the sweep", file=sys.stderr)
        return 130
    rows = write_outputs(spec, sweep)
    failed = [row for row in rows if row["status"] == "failed"]
    print(f"sweep: {sum(r['status'] == 'done' for r in rows)} runs done; report: {spec.out}/report.md")
    if crashed:
        print(
            f"sweep: {crashed} worker process(es) ended abnormally; run the same command to continue", file=sys.stderr
        )
    if failed:
        print(f"sweep: {len(failed)} run(s) failed:", file=sys.stderr)
        for row in failed:
            print(f"  {row['setting']} seed {row['seed']}: {row['error']}", file=sys.stderr)
    return 1 if failed or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
