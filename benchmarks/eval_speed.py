"""Evaluation speed on a Stanford-Online-Products-sized synthetic set: eval.py against pml.

    python benchmarks/eval_speed.py [--output FILE.json] [--items 60502] [--classes 11316] [--skip_pml]
                                    [--repeat 3] [--skip_full] [--searches] [--query_gallery]

Builds 60,502 x 512 L2-normalised embeddings of 11,316 classes (SOP test split: 2-12 images per class,
mean ~5.3; deterministic seed), class centres plus noise tuned so recall@1 is ~0.7, then measures in
subprocesses (whole-process wall time, peak RSS via getrusage(RUSAGE_CHILDREN)):

* ``python eval.py --embeddings FILE --evaluation_metrics recall@1 r_precision map@r``
* pytorch-metric-learning's AccuracyCalculator for the same three metrics (k="max_bin_count")
* ``eval.py`` with the full suite (recall@1/10/100/1000, map@r, map@r_legacy, map@1000, nmi, f1)
* with ``--searches``: the exact kNN search of the three metrics alone (k = largest class - 1, each query's
  first R neighbours exact, as ``eval.py`` searches), in this process: symmetric (each pair of the score
  matrix once, the default) on one worker thread per torch thread (the default), symmetric on one worker
  (torch's own threads), and per-query; checks the same neighbours
* with ``--query_gallery``: query -> gallery evaluation at In-Shop's size (14,218 queries, 12,612 gallery items,
  3,985 classes), ``eval.py`` with its default metrics, in its own process

Each run is repeated ``--repeat`` times, the runs of one round one after the other (eval.py, pml, ...), so
that a slow spell of the machine falls on all of them; the table shows the median wall time with the fastest
and slowest run, and the speed-up is the ratio of the medians. It prints a markdown table (values of both
implementations side by side) with the machine's load average before and after (other jobs on the machine
slow every run down: note it with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
THREE = ["recall@1", "r_precision", "map@r"]
FULL_SUITE = ["recall@1", "recall@10", "recall@100", "recall@1000", "map@r", "map@r_legacy", "map@1000", "nmi", "f1"]

PML_SCRIPT = """
import json, sys, numpy as np, torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
data = np.load(sys.argv[1])
calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                          k="max_bin_count", device=torch.device("cpu"))
res = calc.get_accuracy(torch.from_numpy(data["embeddings"]), torch.from_numpy(data["labels"]))
print(json.dumps({"recall@1": res["precision_at_1"], "r_precision": res["r_precision"],
                  "map@r": res["mean_average_precision_at_r"]}))
"""


def sop_like_class_sizes(num_items: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes in 2..12 from a decaying distribution (SOP-like), adjusted to sum to ``num_items``."""
    sizes = np.arange(2, 13)
    weights = np.exp(-0.27 * sizes)
    drawn = rng.choice(sizes, size=num_classes, p=weights / weights.sum())
    while drawn.sum() != num_items:
        i = rng.integers(num_classes)
        if drawn.sum() < num_items and drawn[i] < 12:
            drawn[i] += 1
        elif drawn.sum() > num_items and drawn[i] > 2:
            drawn[i] -= 1
    return drawn


def synthetic_embeddings(
    num_items: int = 60502, num_classes: int = 11316, dim: int = 512, noise: float = 2.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised class centre + Gaussian noise (per-dimension std noise/sqrt(dim)), int64 labels."""
    rng = np.random.default_rng(seed)
    sizes = sop_like_class_sizes(num_items, num_classes, rng)
    labels = np.repeat(np.arange(num_classes), sizes)
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + (noise / np.sqrt(dim)) * rng.standard_normal((num_items, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(num_items)
    return x[order].astype(np.float32), labels[order].astype(np.int64)


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one subprocess, from its own rusage (os.wait4)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{command} failed ({process.returncode}):\n{err.read()}")
        return wall, usage.ru_maxrss / 1024, out.read()


def compare_searches(x: np.ndarray, y: np.ndarray) -> list[dict[str, object]]:
    """Wall time of the self-retrieval search of recall@1, r_precision and map@r, symmetric and per-query."""
    import torch

    from metrics.compute import _row_depth, resolve_backend
    from metrics.knn import KnnStats, iter_knn

    embeddings, labels = torch.from_numpy(x), torch.from_numpy(y)
    k = int(np.bincount(y).max()) - 1
    # as compute_metrics searches: each query's first R neighbours settled exactly (its metrics read no more)
    depth = _row_depth(THREE, torch.bincount(labels)[labels] - 1).clamp(1, k)
    _, dtype = resolve_backend("torch", torch.device("cpu"))
    rows, hits = [], []
    variants = [(True, None, "symmetric"), (True, 1, "symmetric, one worker"), (False, None, "per-query")]
    for symmetric, workers, name in variants:
        stats = KnnStats()
        start = time.perf_counter()
        found = iter_knn(
            embeddings, embeddings, k, exclude_self=True, backend="torch", device=torch.device("cpu"),
            candidate_dtype=dtype, stats=stats, query_labels=labels, gallery_labels=labels, symmetric=symmetric,
            workers=workers, depth=depth,
        )  # fmt: skip
        found_hits = [labels[indices] == labels[first : first + len(indices), None] for first, indices in found]
        hits.append(torch.cat(found_hits)[torch.arange(k)[None, :] < depth[:, None]])
        rows.append({"run": f"search only, {name}", "wall_s": round(time.perf_counter() - start, 2), **vars(stats)})
    if not all(torch.equal(hits[0], other) for other in hits[1:]):
        raise RuntimeError("the searches found different neighbours")
    return rows


def query_gallery_embeddings(seed: int = 1) -> dict[str, np.ndarray]:
    """In-Shop-sized query -> gallery arrays: 14,218 queries and 12,612 gallery items of 3,985 classes."""
    x, y = synthetic_embeddings(14218 + 12612, 3985, seed=seed)
    return {
        "query_embeddings": x[:14218],
        "query_labels": y[:14218],
        "gallery_embeddings": x[14218:],
        "gallery_labels": y[14218:],
    }


def eval_command(path: str, output: str, metrics: list[str] | None) -> list[str]:
    command = [sys.executable, "eval.py", "--embeddings", path, "--output", output]
    return command + (["--evaluation_metrics", *metrics] if metrics else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--output", default=None, help="write the measurements as JSON")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of runs; medians are reported")
    parser.add_argument("--skip_pml", action="store_true")
    parser.add_argument("--skip_full", action="store_true")
    parser.add_argument("--searches", action="store_true", help="also time the two searches in this process")
    parser.add_argument("--query_gallery", action="store_true", help="also time an In-Shop-sized query -> gallery")
    args = parser.parse_args(argv)

    x, y = synthetic_embeddings(args.items, args.classes)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sop_like.npz")
        np.savez(path, embeddings=x, labels=y)
        runs = [("eval.py (3 metrics)", eval_command(path, os.path.join(tmp, "three.json"), THREE))]
        if not args.skip_pml:
            runs.append(("pml AccuracyCalculator (3 metrics)", [sys.executable, "-c", PML_SCRIPT, path]))
        if not args.skip_full:
            runs.append(("eval.py (full suite)", eval_command(path, os.path.join(tmp, "full.json"), FULL_SUITE)))
        if args.query_gallery:
            in_shop = os.path.join(tmp, "in_shop_like.npz")
            np.savez(in_shop, **query_gallery_embeddings())
            runs.append(("eval.py (query -> gallery)", eval_command(in_shop, os.path.join(tmp, "qg.json"), None)))
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in runs}
        values: dict[str, dict[str, float]] = {}
        for round_ in range(args.repeat):
            for name, command in runs:
                wall, peak_mb, stdout = run_measured(command)
                measured[name].append((wall, peak_mb))
                if name.startswith("pml"):
                    values[name] = json.loads(stdout.strip().splitlines()[-1])
                else:
                    out_file = command[command.index("--output") + 1]
                    values[name] = json.loads(Path(out_file).read_text())
                load = os.getloadavg()[0]
                print(f"round {round_ + 1}: {name}: {wall:.2f} s, {peak_mb:.0f} MB, load {load:.1f}", flush=True)
    rows = []
    for name, _ in runs:
        walls = sorted(wall for wall, _ in measured[name])
        rows.append(
            {
                "run": name,
                "wall_s": round(float(np.median(walls)), 2),
                "wall_s_runs": [round(wall, 2) for wall, _ in measured[name]],
                "peak_rss_mb": round(max(peak for _, peak in measured[name])),
                "values": values[name],
            }
        )

    searches = compare_searches(x, y) if args.searches else []
    load = (load_before, os.getloadavg()[0])
    print(
        f"{args.items} items x {x.shape[1]} dims, {args.classes} classes, CPUs: {os.cpu_count()}, "
        f"1-minute load average before / after: {load[0]:.1f} / {load[1]:.1f}, {args.repeat} round(s)"
    )
    print("| run | wall time (s): median [fastest, slowest] | peak RSS (MB) | values |")
    print("|---|---|---|---|")
    for row in rows:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in row["values"].items())
        spread = f"[{min(row['wall_s_runs']):.2f}, {max(row['wall_s_runs']):.2f}]"
        print(f"| {row['run']} | {row['wall_s']:.2f} {spread} | {row['peak_rss_mb']} | {shown} |")
    for row in searches:
        print(f"| {row['run']} | {row['wall_s']:.2f} | | same neighbours |")
    if len(rows) > 1 and rows[1]["run"].startswith("pml"):
        print(f"speed-up of eval.py over pml (3 metrics, medians): {rows[1]['wall_s'] / rows[0]['wall_s']:.2f}x")
    if args.output:
        Path(args.output).write_text(
            json.dumps({"load_average": load, "runs": rows, "searches": searches}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
