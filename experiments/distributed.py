"""A sweep run on several processes: torchrun starts this module once per rank; the worker waits for it.

    python -m torch.distributed.run --standalone --nproc_per_node K -m experiments.distributed FOLDER RESUME TOKENS...

Every rank builds the run's configuration from main.py's TOKENS and trains it as a run in the worker's own process
does (`engine.trainer.train` into the run folder FOLDER, continuing RESUME's `last.pt` when it is not empty); rank
0 writes the run folder, whose `summary.json` the worker reads. While torchrun runs, the worker reads the run's
`metrics.csv` and hands each new evaluation to its `on_evaluation` (the search's pruning); an exception raised there
stops torchrun with SIGTERM, after which every rank saves its position (`engine.interrupts`). torchrun and its ranks
are killed with the worker that started them (kill -9 included), so a run taken over by another worker never trains
twice at once.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utilities.errors import UserError, report_user_error

REPO = Path(__file__).resolve().parents[1]
WATCH_SECONDS = 0.25
"""How often the worker reads the run's `metrics.csv` while torchrun runs."""

EvaluationHook = Callable[[int, dict[str, float]], None]
"""`on_evaluation(epoch, metrics)`, as `engine.trainer.train` calls it."""


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""libc's prctl, looked up once here (not in a freshly forked child)."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def train_on_processes(
    processes: int,
    folder: Path,
    resume: str | None,
    tokens: list[str],
    threads: int | None,
    on_evaluation: EvaluationHook | None = None,
    metric: str = "",
) -> dict[str, Any]:
    """Run the training under torchrun with `processes` ranks; returns its summary (`summary.json`).

    `on_evaluation(epoch, {metric: value})`: called here for each epoch whose `metric` appears in the run's
    `metrics.csv` while torchrun runs or once it has ended (not for the epochs already there when the run continues
    `resume`), as `engine.trainer.train` calls it after each evaluation. An exception it raises stops torchrun with
    SIGTERM (every rank saves its position in `checkpoints/last.pt` and stops at the same iteration) and is raised
    here once torchrun has ended.

    A rank's failure is a `RuntimeError` naming the exit code (the rank's error is in the run's `train.log` and
    on this process's stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "experiments.distributed", str(folder), resume or "", *tokens]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torchrun's default is 1 thread per rank
    metrics = folder / "metrics.csv"
    seen = set(evaluations(metrics, metric)) if resume else set()
    # the working directory stays the worker's (relative paths in the keys mean what they mean to the worker);
    # preexec_fn runs one system call in the child, which takes no lock the worker's threads could hold
    process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent)
    try:
        code = process.wait() if on_evaluation is None else _watch(process, metrics, metric, seen, on_evaluation)
    except BaseException:
        process.send_signal(signal.SIGTERM)  # sends nothing to a torchrun that has ended
        process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"torchrun ({processes} processes) ended with exit code {code} (see {folder}/train.log)")
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    return summary


def _watch(process: subprocess.Popen, metrics: Path, metric: str, seen: set[int], on_evaluation: EvaluationHook) -> int:
    """Hand each evaluation of `metrics` not in `seen` to `on_evaluation` until `process` ends; its exit code."""
    while True:
        code = process.poll()  # before the last reading: every row written before the end is read
        for epoch, value in evaluations(metrics, metric).items():
            if epoch not in seen:
                seen.add(epoch)
                on_evaluation(epoch, {metric: value})
        if code is not None:
            return code
        time.sleep(WATCH_SECONDS)


def evaluations(metrics: Path, metric: str) -> dict[int, float]:
    """The values of `metric` by epoch in a run's `metrics.csv`: its complete rows of trained epochs that have one."""
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return {}
    found = {}
    for row in csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])):  # a row is complete once its line ends
        epoch, value = row.get("epoch"), row.get(metric)
        if epoch and value and int(epoch) >= 0:
            found[int(epoch)] = float(value)
    return found


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
