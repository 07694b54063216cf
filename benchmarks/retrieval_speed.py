"""Speed of the search path: embedding throughput, and a faiss index over a synthetic gallery.

    python benchmarks/retrieval_speed.py [--arch resnet50] [--resolution 224] [--batch_size 32]
        [--gallery_size 100000] [--dim 512] [--queries 1000] [--top 10] [--device auto] [--output FILE.json]

1. Embedding: the network of `--arch` (random weights, the project's head with `--dim` outputs) on random
   preprocessed batches, in eval mode without gradients, as `engine.inference` runs it: images/s (median of
   `--batches` timed batches after one warm-up batch).
2. Index: `--gallery_size` random L2-normalised float32 vectors of `--dim` dimensions (a fixed seed) added
   to an exact `faiss.IndexFlatIP` in batches of 10,000 as `retrieve.py` does: build time; then `--queries`
   random unit queries searched for their `--top` neighbours in chunks of 1,024 (queries/s), and 100 queries
   one at a time (ms per query). On a machine with a GPU, the index is also searched on the GPU.
3. Memory: the process's peak resident set size (getrusage) after each phase, and the peak of Python-tracked
   allocations (tracemalloc, numpy arrays included) during the index phase.

Prints a markdown table; `--output` writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ADD_BATCH = 10_000
QUERY_CHUNK = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50", help="backbone (random weights; default resnet50)")
    parser.add_argument("--resolution", type=int, default=224, help="input crop size (default 224)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per embedding batch (default 32)")
    parser.add_argument("--batches", type=int, default=3, help="timed embedding batches (default 3)")
    parser.add_argument("--gallery_size", type=int, default=100_000, help="gallery vectors (default 100000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    parser.add_argument("--queries", type=int, default=1000, help="batch queries searched (default 1000)")
    parser.add_argument("--top", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="embedding device")
    parser.add_argument("--output", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    for name in ("resolution", "batch_size", "batches", "gallery_size", "dim", "queries", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_speed(arch: str, resolution: int, batch_size: int, batches: int, dim: int, device: torch.device):
    """Median images/s of the embedding network on random batches (one warm-up batch first)."""
    from architectures import build_model
    from config import config_from_dict

    cfg = config_from_dict({"arch": arch, "pretrained": False, "embed_dim": dim, "resolution": resolution})
    model = build_model(cfg).eval().to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for step in range(batches + 1):
            start = time.perf_counter()
            batch = images.to(device)
            if device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            torch.nn.functional.normalize(model(batch).float(), dim=-1).cpu()
            _sync(device)
            if step:
                times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def index_speed(gallery_size: int, dim: int, queries: int, top: int, gpu: bool) -> dict[str, float]:
    """Build time, batch and single query throughput of an exact inner-product index (CPU, and GPU if asked)."""
    import faiss

    tracemalloc.start()
    gallery = unit_vectors(gallery_size, dim, seed=0)
    start = time.perf_counter()
    index = faiss.IndexFlatIP(dim)
    for first in range(0, gallery_size, ADD_BATCH):
        index.add(gallery[first : first + ADD_BATCH])
    build = time.perf_counter() - start
    query_vectors = unit_vectors(queries, dim, seed=1)
    k = min(top, gallery_size)
    results: dict[str, float] = {"index_build_s": build}

    def batch_speed(searched: Any) -> float:
        searched.search(query_vectors[:8], k)  # warm-up
        start = time.perf_counter()
        for first in range(0, queries, QUERY_CHUNK):
            searched.search(query_vectors[first : first + QUERY_CHUNK], k)
        return queries / (time.perf_counter() - start)

    def single_ms(searched: Any, count: int = 100) -> float:
        start = time.perf_counter()
        for row in range(min(count, queries)):
            searched.search(query_vectors[row : row + 1], k)
        return 1000 * (time.perf_counter() - start) / min(count, queries)

    results["cpu_queries_per_s"] = batch_speed(index)
    results["cpu_single_query_ms"] = single_ms(index)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results["traced_peak_mb"] = traced_peak / 2**20
    results["gallery_mb"] = gallery.nbytes / 2**20
    if gpu:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        results["gpu_queries_per_s"] = batch_speed(gpu_index)
        results["gpu_single_query_ms"] = single_ms(gpu_index)
    return results


def versions() -> dict[str, str]:
    import faiss

    return {"python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__}


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = [
        (f"embedding, {s['arch']} {s['resolution']} px, batch {s['batch_size']}, {s['device']}",
         f"{report['embed_images_per_s']:.1f} images/s"),
        (f"index build, {s['gallery_size']:,} x {s['dim']} (IndexFlatIP)", f"{report['index_build_s']:.3f} s"),
        (f"batch queries, top-{s['top']}, CPU", f"{report['cpu_queries_per_s']:.0f} queries/s"),
        (f"single query, top-{s['top']}, CPU", f"{report['cpu_single_query_ms']:.2f} ms"),
    ]  # fmt: skip
    if "gpu_queries_per_s" in report:
        rows += [
            (f"batch queries, top-{s['top']}, GPU", f"{report['gpu_queries_per_s']:.0f} queries/s"),
            (f"single query, top-{s['top']}, GPU", f"{report['gpu_single_query_ms']:.2f} ms"),
        ]
    rows += [
        ("gallery vectors in memory", f"{report['gallery_mb']:.0f} MB"),
        ("peak traced allocations, index phase", f"{report['traced_peak_mb']:.0f} MB"),
        ("peak RSS after the index phase", f"{report['peak_rss_index_mb']:.0f} MB"),
        ("peak RSS after the embedding phase", f"{report['peak_rss_total_mb']:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    v = report["versions"]
    lines.append(f"\n(torch {v['torch']}, faiss {v['faiss']}, Python {v['python']}, {report['cpu_threads']} threads)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu")
    report: dict[str, Any] = {"settings": {**vars(args), "device": str(device)}, "versions": versions()}
    report["cpu_threads"] = torch.get_num_threads()
    import faiss

    report.update(index_speed(args.gallery_size, args.dim, args.queries, args.top, faiss.get_num_gpus() > 0))
    report["peak_rss_index_mb"] = peak_rss_mb()
    report["embed_images_per_s"] = embedding_speed(
        args.arch, args.resolution, args.batch_size, args.batches, args.dim, device
    )
    report["peak_rss_total_mb"] = peak_rss_mb()
    print(format_table(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
