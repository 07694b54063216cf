"""Pictures of retrieval results: each query (one row) beside its top-K gallery images.

`draw_retrieval_grid` draws the picture for `retrieve.py --grid`, `eval.py --show N` and the end of
training. Under each result: its cosine similarity to the query. When the labels of the query and of a
result are both known, a green frame marks a result of the query's class and a red frame one of another
class; unknown labels get a thin grey frame.

`worst_queries` picks the queries to show after an evaluation: the N queries with the lowest average
precision (MAP@R, the project's `map@r` of that one query), ties broken by the rank of the first correct
neighbour (furthest first; none within the searched depth counts as furthest), then by query order. Queries
without any other item of their class cannot be scored and are never picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

GREEN, RED, GREY, BLUE = "#2ca02c", "#d62728", "#9a9a9a", "#1f3b73"
WORST_QUERIES_FILE = "worst_queries.png"  # in the run folder (end of training, eval.py --show)
WORST_QUERIES_SHOWN = 8  # queries drawn at the end of training
MAX_LABEL_CHARS = 18


@dataclass
class GridRow:
    """A query image with its label (None: unknown) and its results: (image path, similarity, label)."""

    query: str
    query_label: str | None
    results: list[tuple[str, float, str | None]] = field(default_factory=list)
    note: str = ""  # shown under the query (e.g. its MAP@R)


def _thumbnail(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except (OSError, ValueError):
        return np.full((size, size, 3), 200, dtype=np.uint8)  # drawn as a grey square, never fails the picture


def _short(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _frame(ax: Any, colour: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def draw_retrieval_grid(
    rows: Sequence[GridRow], path: str | Path, *, title: str | None = None, thumb: int = 128
) -> Path:
    """Write the picture of `rows` to `path` (PNG, or any format matplotlib knows by the suffix)."""
    from engine.plots import _pyplot

    plt = _pyplot()
    path = Path(path)
    columns = 1 + max([len(row.results) for row in rows] + [1])
    fig, axes = plt.subplots(
        max(len(rows), 1), columns, figsize=(1.55 * columns, 1.85 * max(len(rows), 1) + 0.4), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for r, row in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(_thumbnail(row.query, thumb))
        ax.set_frame_on(True)
        _frame(ax, BLUE, 2.5)
        ax.set_title(_short("query" + (f": {row.query_label}" if row.query_label is not None else "")), fontsize=7)
        ax.set_xlabel(_short(row.note or Path(row.query).name, 24), fontsize=6)
        for c, (image, similarity, label) in enumerate(row.results, start=1):
            ax = axes[r, c]
            ax.imshow(_thumbnail(image, thumb))
            ax.set_frame_on(True)
            if row.query_label is not None and label is not None:
                _frame(ax, GREEN if label == row.query_label else RED, 4)
            else:
                _frame(ax, GREY, 0.8)
            if label is not None:
                ax.set_title(_short(str(label)), fontsize=7)
            ax.set_xlabel(f"{similarity:.3f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def worst_queries(
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    paths: dict[str, Sequence[str]],
    n: int,
    top: int = 5,
) -> list[GridRow]:
    """The `n` worst queries of an evaluation's embeddings, each with its `top` nearest gallery images.

    `embedded`: {"test": (embeddings, labels)} (every item queries all others) or {"query": ..., "gallery":
    ...}, as `engine.evaluation.embed_splits` returns them; `paths`: the image paths of those splits. The
    neighbours are those of the evaluation's own exact search (`metrics.knn.iter_knn`, L2 distance); the
    similarity shown is the cosine similarity.
    """
    from engine.evaluation import own_gallery_rows
    from metrics.knn import drop_same_item, iter_knn
    from metrics.retrieval import map_at_r

    own = None
    if "query" in embedded:
        (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
        qp, gp, exclude_self = paths["query"], paths["gallery"], False
        own = own_gallery_rows(qp, gp)  # a query's own image in the gallery is never shown as a result
    else:
        ((name, (q, ql)),) = embedded.items()
        g, gl, qp, gp, exclude_self = q, ql, paths[name], paths[name], True
    q, g = q.float(), g.float()
    ql_t, gl_t = torch.as_tensor(np.asarray(ql)), torch.as_tensor(np.asarray(gl))
    gallery_counts: dict[int, int] = {}
    for label in gl_t.tolist():
        gallery_counts[label] = gallery_counts.get(label, 0) + 1
    in_gallery = torch.zeros(len(ql_t), dtype=torch.int64) if own is None else torch.from_numpy(own >= 0).long()
    relevant = torch.tensor([gallery_counts.get(label, 0) for label in ql_t.tolist()]) - in_gallery - int(exclude_self)
    eligible = len(g) - (1 if exclude_self or own is not None else 0)
    if n < 1 or eligible < 1 or len(relevant) == 0 or int(relevant.max()) < 1:
        return []
    k = min(max(int(relevant.max()), top), eligible)
    keys, neighbours = [], []
    searched = k + 1 if own is not None else k
    for start, indices in iter_knn(q, g, searched, exclude_self=exclude_self, backend="torch", device=q.device):
        indices = indices.cpu()
        rows = slice(start, start + len(indices))
        if own is not None:
            indices = drop_same_item(indices, torch.from_numpy(own[rows]), k)
        hits = gl_t[indices] == ql_t[rows, None]
        precision = map_at_r(hits, relevant[rows].clamp(min=1))
        first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full((len(hits),), k))
        for offset in range(len(indices)):
            row = start + offset
            if relevant[row] >= 1:
                keys.append((float(precision[offset]), -int(first[offset]), row))
        neighbours.append(indices[:, :top])
    table = torch.cat(neighbours)
    chosen = sorted(keys)[:n]
    qn, gn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(g, dim=-1)
    result = []
    for ap, _, row in chosen:
        ids = table[row].tolist()
        sims = (gn[ids] @ qn[row]).tolist()
        result.append(
            GridRow(
                qp[row],
                str(int(ql_t[row])),
                [(gp[i], s, str(int(gl_t[i]))) for i, s in zip(ids, sims)],
                note=f"MAP@R {ap:.2f}",
            )
        )
    return result


def write_worst_queries(
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    splits: dict[str, Any],
    path: str | Path,
    n: int = WORST_QUERIES_SHOWN,
    top: int = 5,
    title: str | None = None,
) -> Path | None:
    """`worst_queries` of the embedded splits (datasets with `paths`) drawn to `path`; None (nothing written)
    when no query can be scored."""
    rows = worst_queries(embedded, {name: splits[name].paths for name in embedded}, n, top)
    if not rows:
        return None
    heading = title or f"{len(rows)} worst queries (lowest MAP@R); green: same class, red: other class"
    return draw_retrieval_grid(rows, path, title=heading)
