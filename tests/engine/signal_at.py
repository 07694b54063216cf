"""Test helper: run main.py, sending this process a real signal after a given training iteration.

    python tests/engine/signal_at.py SIGNAL ITERATION RANK main.py-arguments...

`ITERATION` counts `train_step` calls from the start of the process (1-based); only the process of rank `RANK`
(torchrun's RANK variable, 0 without torchrun) signals itself, so the other ranks learn of it only through the
trainer's agreement. Everything else is main.py as it is.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import engine.trainer  # noqa: E402
import main  # noqa: E402


def signalling(step, signum: int, iteration: int, rank: int = 0):
    """`step` (train_step) that sends `signum` to this process after its `iteration`-th call on rank `rank`."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        result = step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == iteration and int(os.environ.get("RANK", "0")) == rank:
            os.kill(os.getpid(), signum)
        return result

    return wrapped


if __name__ == "__main__":
    name, at, who, *arguments = sys.argv[1:]
    engine.trainer.train_step = signalling(engine.trainer.train_step, signal.Signals[name], int(at), int(who))
    sys.exit(main.main(arguments))
