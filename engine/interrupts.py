"""Stopping a run cleanly: signals and timed checkpoints, agreed by every rank at an iteration boundary.

SIGTERM, SIGUSR1 (what SLURM sends before a time limit with ``--signal=USR1@90``) and SIGINT only set a flag;
the trainer asks `StopControl.poll` after each iteration, which all-reduces (max) the flag and the "a timed
checkpoint is due" bit over the ranks, so every rank stops, or saves, at the same iteration. A second SIGINT
interrupts at once (KeyboardInterrupt). A stopped process exits with 128 + the signal's number (130 SIGINT,
138 SIGUSR1, 143 SIGTERM), the shell's convention for "ended by that signal".
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from utilities.distributed import DistInfo

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by signal `signum`: 128 + its number."""
    return 128 + int(signum)


class TrainingStopped(Exception):
    """A stop signal was honoured: the position in the epoch is saved in `checkpoint`."""

    def __init__(self, signum: int, epoch: int, iteration: int, total: int, checkpoint: str) -> None:
        self.signum, self.epoch, self.iteration, self.total = signum, epoch, iteration, total
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} in epoch {epoch} after iteration {iteration}/{total}; saved {checkpoint}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


@dataclass
class Decision:
    signum: int = 0  # 0: keep going
    save: bool = False  # write the mid-epoch checkpoint (a timed one, or before stopping)


class StopControl:
    """Signal flag + timed-checkpoint clock; `install()` / `restore()` around the training loop."""

    def __init__(self, checkpoint_minutes: float, device: torch.device) -> None:
        self.interval = 60.0 * checkpoint_minutes
        self.device = device
        self.signum = 0
        self.last_save = time.monotonic()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the stop signals (main thread only; elsewhere, e.g. a test's thread, signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the mid-epoch checkpoint
        self.signum = self.signum or signum

    def saved(self) -> None:
        """A checkpoint was just written: the timed interval starts again."""
        self.last_save = time.monotonic()

    def poll(self, dist: DistInfo) -> Decision:
        """What every rank does after this iteration (one all-reduce of two integers under torchrun)."""
        due = self.interval > 0 and time.monotonic() - self.last_save >= self.interval
        signum = self.signum
        if dist.enabled:
            flags = torch.tensor([signum, int(due)], dtype=torch.int64, device=self.device)
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
            signum, due = int(flags[0]), bool(flags[1])
        return Decision(signum=signum, save=bool(due or signum))
