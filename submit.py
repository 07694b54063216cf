"""Submit main.py's training to SLURM (through submitit): python submit.py --slurm_... [main.py --key value ...]

    python submit.py --slurm_partition gpu --slurm_nodes 2 --slurm_gpus_per_node 8 --slurm_time 1440 \\
        --config configs/online_products.yaml --source_path /data --save_name sop_dada

One task per GPU (or `--slurm_tasks_per_node` CPU tasks, gloo); rank, world size and master address come from
the job. The job runs main.py with `--resume auto`: before its time limit (or on preemption) SLURM sends
SIGUSR1, the run saves its position inside the epoch, submitit requeues the job and the requeued job continues
from there. Every other option is main.py's and is validated before anything is submitted. Prints the job id,
the log files and the run folder. Exit codes: 0 submitted (with --wait: the job succeeded), 2 bad options,
1 the job failed (--wait).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from utilities.errors import UserError, report_user_error


def split_arguments(argv: Sequence[str]) -> tuple[object, list[str]]:
    """The SLURM options, and main.py's arguments (everything else, `--resume auto` added)."""
    from config.command_line import script_parser
    from engine.slurm import add_slurm_arguments

    parser = script_parser("submit.py", __doc__.splitlines()[0])
    add_slurm_arguments(parser)
    namespace, rest = parser.parse_known_args(list(argv))
    if any(token.split("=", 1)[0] == "--resume" for token in rest):
        raise UserError("submit.py adds --resume auto itself: leave out --resume (the job continues its own run)")
    return namespace, rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from config.command_line import parse_command_line
        from engine.slurm import TrainingJob, default_log_folder, make_executor, slurm_options

        namespace, rest = split_arguments(argv)
        options = slurm_options(namespace)
        cfg, _ = parse_command_line(rest, __doc__)  # main.py's validation, before anything is submitted
        if not cfg.save_name:
            cfg.save_name = time.strftime("%Y%m%d-%H%M%S")
            rest += ["--save_name", cfg.save_name]
        folder = Path(options.folder) if options.folder else default_log_folder(cfg.save_path, cfg.dataset)
        executor = make_executor(options, folder, local=options.local)
        import main as main_py

        job = executor.submit(TrainingJob([*rest, "--resume", "auto"], main_py.main))
    except UserError as exc:
        return report_user_error(exc)
    run_folder = Path(cfg.save_path) / cfg.dataset / cfg.save_name
    print(f"submitted job {job.job_id} ({options.nodes} node(s) x {options.tasks} task(s))")
    print(f"logs (task 0): {job.paths.stdout} and {job.paths.stderr}")
    print(f"run folder: {run_folder}", flush=True)
    if not options.wait:
        return 0
    try:
        job.results()
    except Exception as exc:  # noqa: BLE001 - the job's failure, reported as one line
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"error: job {job.job_id} failed: {lines[-1]} (logs: {job.paths.stderr})", file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished: {run_folder / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
