"""Where the clustering metrics' time goes: the k-means of nmi/f1 on the SOP-sized synthetic set.

    python benchmarks/kmeans_speed.py [--items 60502] [--classes 11316] [--iterations 2] [--output FILE.json]

Runs ``faiss.Clustering`` with the settings of ``metrics.clustering`` (K = number of classes, seed 1234,
1 to 1e9 points per centroid) for a few of its 20 iterations and the final nearest-centroid assignment,
and prints the seconds per iteration, the part of them spent in the nearest-centroid search, and the
estimate for the full 20 iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.eval_speed import synthetic_embeddings  # noqa: E402
from metrics.clustering import KMEANS_ITERATIONS, KMEANS_SEED  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import faiss
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--iterations", type=int, default=2, help="k-means iterations to time")
    parser.add_argument("--output", default=None, help="write the measurements as JSON")
    args = parser.parse_args(argv)

    x, y = synthetic_embeddings(args.items, args.classes)
    load_before = os.getloadavg()[0]
    num_clusters, dim = int(y.max()) + 1, x.shape[1]
    clustering = faiss.Clustering(dim, num_clusters)
    clustering.niter = args.iterations
    clustering.min_points_per_centroid = 1
    clustering.max_points_per_centroid = 1_000_000_000
    clustering.seed = KMEANS_SEED
    clustering.train(x, faiss.IndexFlatL2(dim))
    stats = [clustering.iteration_stats.at(i) for i in range(clustering.iteration_stats.size())]
    iteration_s = (stats[-1].time / len(stats)) if stats else 0.0  # faiss's times are cumulative
    search_share = stats[-1].time_search / stats[-1].time if stats and stats[-1].time else 0.0
    start = time.perf_counter()
    assign = faiss.IndexFlatL2(dim)
    assign.add(faiss.vector_float_to_array(clustering.centroids).reshape(num_clusters, dim))
    assign.search(np.ascontiguousarray(x), 1)
    final_s = time.perf_counter() - start
    report = {
        "items": args.items,
        "clusters": num_clusters,
        "iteration_s": round(iteration_s, 2),
        "search_share": round(search_share, 4),
        "final_assignment_s": round(final_s, 2),
        "estimated_kmeans_s": round(KMEANS_ITERATIONS * iteration_s + final_s, 1),
        "load_average": (load_before, os.getloadavg()[0]),
    }
    print(
        f"k-means of {args.items} x {dim} into {num_clusters} clusters: {report['iteration_s']:.2f} s per iteration "
        f"({100 * search_share:.1f}% nearest-centroid search), final assignment {final_s:.2f} s, "
        f"{KMEANS_ITERATIONS} iterations + assignment ~ {report['estimated_kmeans_s']:.0f} s "
        f"(1-minute load average {report['load_average'][0]:.1f} / {report['load_average'][1]:.1f})"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
