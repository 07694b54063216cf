"""Progress and log files: plain lines (never redraws) when the output is not a terminal, and the tee."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import utilities.logs as logs


def test_progress_in_a_file_prints_a_line_every_tenth_and_nothing_for_a_short_loop(monkeypatch):
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    assert list(logs.progress(range(20), desc="epoch 3")) == list(range(20))
    assert err.getvalue() == ""  # a loop over within 10 s says nothing (the caller prints its summary)

    monkeypatch.setattr(logs, "PROGRESS_QUIET_SECONDS", 0.0)
    bar = logs.progress(range(20), desc="epoch 3", unit="img", unit_scale=16, initial=0)
    for number, _ in enumerate(bar):
        bar.set_postfix({"proxy_loss": f"{number:.1f}"})
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert [line.split(" img/s")[0].rsplit(" ", 1)[0] for line in lines] == [
        f"epoch 3: {n}/20 ({5 * n}%)" for n in range(2, 20, 2)
    ]
    assert "proxy_loss=" in lines[-1] and " eta " in lines[-1]

    err.truncate(0), err.seek(0)
    resumed = logs.progress(range(6), desc="epoch 3", total=20, initial=14)
    list(resumed)
    assert [line.split(" ")[2] for line in err.getvalue().splitlines()] == ["16/20", "18/20"]


def test_tee_copies_stdout_and_stderr_to_the_file_without_redraws(tmp_path: Path, capsys):
    path = tmp_path / "run" / "train.log"
    logs.tee_to_file(path)
    try:
        print("[epoch 0] 1.0s")
        print("a line on stderr", file=sys.stderr)
        sys.stderr.write("\rbar 50%")
    finally:
        logs.stop_tee()
    print("after the tee")
    assert path.read_text() == "[epoch 0] 1.0s\na line on stderr\n"
    captured = capsys.readouterr()
    assert "[epoch 0]" in captured.out and "after the tee" in captured.out and "\rbar 50%" in captured.err
