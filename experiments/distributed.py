"""A sweep run on several processes: torchrun starts this module once per rank; the worker waits for it.

    python -m torch.distributed.run --standalone --nproc_per_node K -m experiments.distributed FOLDER RESUME TOKENS...

Every rank builds the run's configuration from main.py's TOKENS and trains it as a run in the worker's own process
does (`engine.trainer.train` into the run folder FOLDER, continuing RESUME's `last.pt` when it is not empty); rank
0 writes the run folder, whose `summary.json` the worker reads. torchrun and its ranks are killed with the worker
that started them (kill -9 included), so a run taken over by another worker never trains twice at once.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from utilities.errors import UserError, report_user_error

REPO = Path(__file__).resolve().parents[1]


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""libc's prctl, looked up once here (not in a freshly forked child)."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def train_on_processes(
    processes: int, folder: Path, resume: str | None, tokens: list[str], threads: int | None
) -> dict[str, Any]:
    """Run the training under torchrun with `processes` ranks; returns its summary (`summary.json`).

    A rank's failure is a `RuntimeError` naming the exit code (the rank's error is in the run's `train.log` and
    on this process's stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "experiments.distributed", str(folder), resume or "", *tokens]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torchrun's default is 1 thread per rank
    # the working directory stays the worker's (relative paths in the keys mean what they mean to the worker);
    # preexec_fn runs one system call in the child, which takes no lock the worker's threads could hold
    code = subprocess.run(command, env=env, preexec_fn=die_with_parent, check=False).returncode
    if code != 0:
        raise RuntimeError(f"torchrun ({processes} processes) ended with exit code {code} (see {folder}/train.log)")
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    return summary


def main(argv: list[str]) -> int:
    """One rank: train the run; 2 for a user error, 128 + a signal's number when stopped by it."""
    die_with_parent()
    from config.checkpoints import resume_point
    from config.command_line import parse_command_line
    from engine.interrupts import TrainingStopped
    from engine.trainer import train

    folder, resume, *tokens = argv
    try:
        cfg, _ = parse_command_line(tokens, "sweep run")
        train(cfg, resume=resume_point(resume, cfg) if resume else None, folder=Path(folder))
    except UserError as exc:
        return report_user_error(exc)
    except TrainingStopped as stop:
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
