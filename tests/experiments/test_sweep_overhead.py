"""benchmarks/sweep_overhead.py measures what it promises (its timings are not asserted)."""

from __future__ import annotations

import json

from benchmarks import sweep_overhead


def test_overhead_benchmark_runs_stub_trials_and_writes_its_numbers(tmp_path, capsys):
    output = tmp_path / "overhead.json"
    assert sweep_overhead.main(["--runs", "2", "--output", str(output)]) == 0
    numbers = json.loads(output.read_text())
    assert set(numbers) == {"storage_per_run_s", "process_start_s", "per_run_s", "storage_per_run_cpu_s",
                            "process_start_cpu_s"}  # fmt: skip
    assert numbers["per_run_s"] == numbers["storage_per_run_s"] + numbers["process_start_s"]
    assert "| per_run_s |" in capsys.readouterr().out
