"""Output that reads well both on a terminal and in a log file.

* `progress(iterable, ...)`: a tqdm bar on a terminal; when stderr is not a terminal (a file, a pipe, a SLURM
  log) no redraws but one plain line every 10 % of the loop or every 60 s (none in a loop's first 10 s, so a
  short loop prints nothing): position, items/s, the values given to `set_postfix`, elapsed time and ETA.
  Both objects offer `set_postfix(dict)`, `update(n)` and `close()`.
* `tee_to_file(path)`: from now on everything this process writes to `sys.stdout` and `sys.stderr` is also
  appended to `path` (the run folder's `train.log`), carriage-return redraws left out.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

PROGRESS_FRACTION = 0.1
"""A progress line every this fraction of the loop (when its length is known)."""
PROGRESS_SECONDS = 60.0
"""... and at least every this many seconds."""
PROGRESS_QUIET_SECONDS = 10.0
"""A loop that ends within this many seconds prints no progress line (a short epoch has its own summary)."""


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: stderr, where progress goes) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class LineProgress:
    """The file-friendly progress: one line per 10 % (or per `PROGRESS_SECONDS`), never a redraw."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        *,
        desc: str,
        total: int | None,
        unit: str,
        unit_scale: float,
        initial: int,
        stream: TextIO | None = None,
    ) -> None:
        self.iterable, self.desc, self.total, self.unit, self.unit_scale = iterable, desc, total, unit, unit_scale
        self.n, self.initial = initial, initial
        self.stream = stream
        self.postfix: dict[str, Any] = {}
        self.start = self.last_print = time.monotonic()
        step = max(1, round(total * PROGRESS_FRACTION)) if total else 0
        self.next_mark = (initial // step + 1) * step if step else 0
        self.step = step

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress without an iterable: call update()"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = dict(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due_by_count = self.step and self.n >= self.next_mark and self.n < (self.total or 0)
        if due_by_count and now - self.start < PROGRESS_QUIET_SECONDS:
            due_by_count = False
        if due_by_count or now - self.last_print >= PROGRESS_SECONDS:
            self._print(now)
            while self.step and self.next_mark <= self.n:
                self.next_mark += self.step

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.initial
        rate = done * self.unit_scale / elapsed if elapsed > 0 else 0.0
        where = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        eta = ""
        if self.total and done > 0:
            eta = f" eta {_duration(elapsed / done * (self.total - self.n))}"
        extra = "".join(f" {key}={value}" for key, value in self.postfix.items())
        line = f"{self.desc}: {where} {rate:.1f} {self.unit}/s{extra} elapsed {_duration(elapsed)}{eta}"
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)
        self.last_print = now

    def close(self) -> None:
        """Nothing to clear: the caller prints its own summary line."""


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    unit_scale: float = 1.0,
    initial: int = 0,
    enabled: bool = True,
) -> Any:
    """Wrap `iterable` (or count with `update(n)` when it is None) with a progress display.

    `enabled` False (e.g. a rank other than 0): nothing is shown. `unit_scale`: units per item (images per
    batch), so the rate reads in images/s. `initial`: items already done (a resumed epoch).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if is_terminal() or not enabled:
        from tqdm import tqdm

        return tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            unit_scale=unit_scale if unit_scale != 1 else False,
            initial=initial,
            leave=False,
            disable=not enabled,
            dynamic_ncols=True,
        )
    return LineProgress(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, initial=initial)


class _Tee:
    """A text stream that writes to the original stream and to a log file (redraws dropped from the file)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if "\r" not in text and "\x1b[A" not in text:  # a terminal bar's redraw does not belong in the file
            self.log.write(text)
        return written

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return is_terminal(self.stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_ACTIVE: dict[str, Any] = {}


def tee_to_file(path: str | Path) -> Path:
    """Append everything written to `sys.stdout` / `sys.stderr` from now on to `path` (line-buffered).

    Calling it again with another path moves the copy there (one log file per process at a time); the
    original streams are kept, so the console shows what it showed before. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stop_tee()
    log = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open for the process's lifetime
    _ACTIVE.update(log=log, stdout=sys.stdout, stderr=sys.stderr)
    sys.stdout = _Tee(sys.stdout, log)  # type: ignore[assignment]
    sys.stderr = _Tee(sys.stderr, log)  # type: ignore[assignment]
    return path


def stop_tee() -> None:
    """Restore the original streams and close the log file (no-op when nothing is copied)."""
    if not _ACTIVE:
        return
    sys.stdout, sys.stderr = _ACTIVE.pop("stdout"), _ACTIVE.pop("stderr")
    _ACTIVE.pop("log").close()
