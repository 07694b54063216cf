"""SLURM jobs through submitit: the `--slurm_*` options, the executor, and the requeue-safe training job.

Used by `submit.py` (and by any tool that submits workers the same way):

    parser = argparse.ArgumentParser(); add_slurm_arguments(parser)
    namespace, rest = parser.parse_known_args(argv)
    options = slurm_options(namespace)
    executor = make_executor(options, folder=log_folder(options, cfg), local=options.local)
    job = executor.submit(TrainingJob([*main_py_arguments, "--resume", "auto"], main.main))

`TrainingJob` runs the entry point it is given (`main.py`'s `main()`, passed by `submit.py`: the engine does not
import the scripts above it) in every task, with rank, world size, local rank and the master address
and port taken from submitit's job environment. On the preemption / time-limit signal (SIGUSR1, sent
`signal_seconds` before the limit) the trainer stops every rank at one iteration and saves its position inside
the epoch; rank 0 then hands over to submitit's checkpoint protocol, which requeues the job (`scontrol requeue`).
The requeued job runs the same command, whose `--resume auto` continues from that position.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.interrupts import exit_code

# submitit reads its preemption signal when imported: USR1, as `--signal=USR1@<seconds>` on the job (its default
# is USR2). Set before any import of submitit in this process and exported to the job's processes.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")
PREEMPT_SIGNAL = signal.Signals["SIG" + os.environ["SUBMITIT_PREEMPT_SIGNAL"]]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class SlurmOptions:
    """What the job asks of SLURM (0 / empty: SLURM's default)."""

    partition: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0: one task per GPU, or 1 without GPUs
    cpus_per_task: int = 0
    mem_gb: int = 0
    time: int = 60  # minutes
    account: str = ""
    qos: str = ""
    constraint: str = ""
    signal_seconds: int = 90
    folder: str = ""  # submitit's logs; empty: <save_path>/<dataset>/submitit
    wait: bool = False
    local: bool = False

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1


_HELP = {
    "partition": "SLURM partition",
    "nodes": "machines",
    "gpus_per_node": "GPUs per machine (one task each)",
    "tasks_per_node": "tasks per machine (default: one per GPU, or 1); CPU tasks train with gloo",
    "cpus_per_task": "CPU cores per task (data-loader workers)",
    "mem_gb": "memory per machine in GB",
    "time": "time limit in minutes",
    "account": "SLURM account",
    "qos": "SLURM quality of service",
    "constraint": "SLURM node constraint",
    "signal_seconds": "seconds before the time limit at which SLURM sends SIGUSR1 (checkpoint and requeue)",
    "folder": "submitit's log folder (default: <save_path>/<dataset>/submitit)",
    "wait": "block until the job ends and exit with its status",
    "local": "run with submitit's local executor (the same path, without a cluster)",
}


def add_slurm_arguments(parser: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """Add `--slurm_<field>` for every `SlurmOptions` field, plus `--wait` and `--local`.

    `helps` replaces the help of some fields (a tool whose jobs are not main.py's training)."""
    texts = {**_HELP, **(helps or {})}
    group = parser.add_argument_group("SLURM (submitit)")
    for f in fields(SlurmOptions):
        flag = f"--{f.name}" if f.name in ("wait", "local") else f"--slurm_{f.name}"
        if f.type == "bool":
            group.add_argument(flag, dest=f"slurm_{f.name}", action="store_true", help=texts[f.name])
        else:
            kind = int if f.type == "int" else str
            # the parser shows the default (config.command_line.script_parser's formatter)
            group.add_argument(flag, dest=f"slurm_{f.name}", type=kind, default=f.default, help=texts[f.name])


def slurm_options(namespace: argparse.Namespace) -> SlurmOptions:
    """The options `add_slurm_arguments` parsed; impossible values are a `UserError`."""
    from utilities.errors import UserError

    options = SlurmOptions(**{f.name: getattr(namespace, f"slurm_{f.name}") for f in fields(SlurmOptions)})
    for name in ("nodes", "time"):
        if getattr(options, name) < 1:
            raise UserError(f"--slurm_{name} must be at least 1; got {getattr(options, name)}")
    for name in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "signal_seconds"):
        if getattr(options, name) < 0:
            raise UserError(f"--slurm_{name} must not be negative; got {getattr(options, name)}")
    return options


def make_executor(options: SlurmOptions, folder: str | Path, local: bool = False) -> Any:
    """A submitit executor (SLURM, or the local one) asking for `options`; logs go to `folder/<job id>`."""
    import submitit

    from utilities.errors import UserError

    # the job's Python imports this repository's modules (the pickled job, main.py) wherever it is started
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    cluster = "local" if local else "slurm"
    try:
        executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
    except RuntimeError as error:  # no sbatch on this machine
        raise UserError(f"cannot submit to SLURM here ({error}); --local runs the job on this machine") from None
    parameters: dict[str, Any] = {
        "name": "dada",
        "timeout_min": options.time,
        "nodes": options.nodes,
        "tasks_per_node": options.tasks,
    }
    if not local:  # the local executor signals its job only near its own timeout
        parameters["slurm_signal_delay_s"] = options.signal_seconds
    optional = {
        "gpus_per_node": options.gpus_per_node,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_account": options.account,
        "slurm_qos": options.qos,
        "slurm_constraint": options.constraint,
    }
    parameters.update({k: v for k, v in optional.items() if v and (not local or not k.startswith("slurm_"))})
    executor.update_parameters(**parameters)
    return executor


def default_log_folder(save_path: str, dataset: str) -> Path:
    """Where submitit's logs go without `--slurm_folder`: beside the run folders."""
    return Path(save_path) / dataset / "submitit"


class TrainingJob:
    """main.py's training as a submitit job (a checkpointable callable: submitit requeues it as it is)."""

    def __init__(self, argv: list[str], entry: Callable[[list[str]], int]) -> None:
        self.argv = list(argv)
        self.entry = entry  # pickled by reference (module and name): the job imports it from the repository

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's checkpoint protocol: requeue this same job; `--resume auto` finds the saved position."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(_distributed_environment(env))
        if env.num_tasks > env.num_nodes and "OMP_NUM_THREADS" not in os.environ:
            # as torchrun does: several tasks of a machine would otherwise each start a thread per core
            import torch

            torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        requeue = signal.getsignal(PREEMPT_SIGNAL)  # submitit's checkpoint-and-requeue handler
        code = self.entry(self.argv)
        if code == exit_code(PREEMPT_SIGNAL):
            if env.global_rank == 0 and callable(requeue):
                requeue(PREEMPT_SIGNAL, None)  # calls checkpoint(), runs scontrol requeue, exits
            # the other ranks wait for the requeue to end them (SIGTERM, then SIGKILL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(600)
        if code != 0:
            raise RuntimeError(f"{self.entry.__module__}.py ended with exit code {code} (see this task's log)")
        return code


def _distributed_environment(env: Any) -> dict[str, str]:
    """torch.distributed's variables for this task, from submitit's job environment."""
    master = env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1"
    port = 20000 + int("".join(ch for ch in str(env.job_id) if ch.isdigit()) or 0) % 20000
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(env.num_nodes, 1)),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
    }
