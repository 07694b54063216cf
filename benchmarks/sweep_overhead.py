"""The sweep's own overhead per run: process start and storage, without training.

    python benchmarks/sweep_overhead.py [--runs 20] [--storage URL] [--output FILE.json]

* ``storage_per_run_s``: one worker (`experiments.worker.run_worker`) works through `--runs` fixed trials whose
  training is replaced by a stub that returns at once; the wall time per run is what the sweep adds to every run:
  claim (WAITING -> RUNNING), heartbeat thread, result and state written, results.csv and the report
  (report.md/csv/png) rewritten.
* ``process_start_s``: the wall time of ``python sweep.py --report OUT`` on that sweep, a fresh process that
  imports everything, opens the storage and writes the report: what a worker process costs once.
* ``per_run_s``: ``storage_per_run_s + process_start_s``, the worst case of one process per run (a worker
  normally runs many runs in one process). Goal: at most 2 s.
* ``*_cpu_s``: the CPU seconds (user + system) of the same two measures: on a loaded machine the wall times
  grow with the load, the CPU seconds much less.

Prints a markdown table; ``--output`` writes the numbers as JSON. The default storage is the journal file
in a temporary OUT.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import engine.trainer  # noqa: E402
from experiments.spec import SweepSpec  # noqa: E402
from experiments.worker import Sweep, run_worker  # noqa: E402

KEYS = ["--dataset", "synthetic", "--arch", "test_resnet", "--pretrained", "false", "--device", "cpu",
        "--evaluation_metrics", "recall@1", "map@r"]  # fmt: skip


def _stub_train(cfg, resume=None, *, folder=None, on_evaluation=None) -> dict[str, Any]:
    metrics = {"recall@1": 0.5 + 0.01 * cfg.seed, "map@r": 0.2}
    return {"best": metrics, "best_metric": cfg.best_metric, "best_epoch": 0, "last": metrics}


def measure(runs: int, storage: str | None, out: Path) -> dict[str, float]:
    spec = SweepSpec(out=str(out), keys=KEYS, grid=[("dada", ["true", "false"])], seeds=list(range(runs // 2)),
                     baseline=("dada", "true"), storage=storage, study=f"overhead{time.time_ns()}")  # fmt: skip
    (out / "sweep.json").parent.mkdir(parents=True, exist_ok=True)
    from experiments.command import fingerprint

    sweep = Sweep(spec)
    sweep.check_recorded(fingerprint(spec))
    sweep.enqueue_initial()
    (out / "sweep.json").write_text(json.dumps({"fingerprint": fingerprint(spec), "spec": spec.__dict__}))
    original = engine.trainer.train
    engine.trainer.train = _stub_train
    count = 2 * (runs // 2)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        run_worker(spec)
        storage_per_run = (time.perf_counter() - start) / count
        storage_cpu = (time.process_time() - cpu) / count
    finally:
        engine.trainer.train = original
    command = [sys.executable, str(REPO_ROOT / "sweep.py"), "--report", str(out)]
    if storage:
        command += ["--storage", storage]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO_ROOT)
    process_start = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    process_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "storage_per_run_s": storage_per_run,
        "process_start_s": process_start,
        "per_run_s": storage_per_run + process_start,
        "storage_per_run_cpu_s": storage_cpu,
        "process_start_cpu_s": process_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="fixed trials (an even number: 2 settings x seeds)")
    parser.add_argument("--storage", help="database URL (default: the journal file in a temporary OUT)")
    parser.add_argument("--output", help="write the numbers as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        numbers = measure(max(args.runs, 2), args.storage, Path(tmp) / "overhead")
    print("| measure | seconds |\n|---|---|")
    for key, value in numbers.items():
        print(f"| {key} | {value:.3f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
