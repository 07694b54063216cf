"""Pictures of retrieval results: each query (one row) beside its top-K gallery images.

`draw_retrieval_grid` draws the picture for `retrieve.py --grid`, `eval.py --show N` and the end of
training. Under each result: its cosine similarity to the query. When the labels of the query and of a
result are both known, a green frame marks a result of the query's class and a red frame one of another
class; unknown labels get a thin grey frame.

`worst_queries` picks the queries to show after an evaluation, from what the evaluation's one search kept
per query (`metrics.QueryRanking`; this module searches nothing): the N queries with the lowest average
precision (MAP@R, the project's `map@r` of that one query), ties broken by the rank of the first correct
neighbour (furthest first; none within the searched depth counts as furthest), then by query order. Queries
without any other item of their class cannot be scored and are never picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from metrics import QueryRanking

GREEN, RED, GREY, BLUE = "#2ca02c", "#d62728", "#9a9a9a", "#1f3b73"
WORST_QUERIES_FILE = "worst_queries.png"  # in the run folder (end of training, eval.py --show)
WORST_QUERIES_SHOWN = 8  # queries drawn at the end of training
WORST_QUERIES_TOP = 5  # neighbours drawn beside each (the `keep_top` an evaluation asks of its search)
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
    ranking: QueryRanking | None,
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    paths: dict[str, Sequence[str]],
    n: int,
) -> list[GridRow]:
    """The `n` worst queries of an evaluation, each with its nearest gallery images.

    `ranking`: what the evaluation's own search kept per query (`metrics.QueryRanking`; None: no query could be
    scored); `embedded`: {"test": (embeddings, labels)} (every item queries all others) or {"query": ...,
    "gallery": ...}, as `engine.evaluation.embed_splits` returns them; `paths`: the image paths of those splits.
    The similarity shown is the cosine similarity.
    """
    if ranking is None or n < 1:
        return []
    if "query" in embedded:
        (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
        qp, gp = paths["query"], paths["gallery"]
    else:
        ((name, (q, ql)),) = embedded.items()
        g, gl, qp, gp = q, ql, paths[name], paths[name]
    scored = torch.nonzero(~ranking.map_at_r.isnan())[:, 0].tolist()
    keys = [(float(ranking.map_at_r[row]), -int(ranking.first_correct[row]), row) for row in scored]
    qn, gn = torch.nn.functional.normalize(q.float(), dim=-1), torch.nn.functional.normalize(g.float(), dim=-1)
    ql_t, gl_t = torch.as_tensor(np.asarray(ql)), torch.as_tensor(np.asarray(gl))
    result = []
    for ap, _, row in sorted(keys)[:n]:
        ids = ranking.neighbours[row].tolist()
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
    ranking: QueryRanking | None,
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    splits: dict[str, Any],
    path: str | Path,
    n: int = WORST_QUERIES_SHOWN,
    title: str | None = None,
) -> Path | None:
    """`worst_queries` of the embedded splits (datasets with `paths`) drawn to `path`; None (nothing written)
    when no query can be scored."""
    rows = worst_queries(ranking, embedded, {name: splits[name].paths for name in embedded}, n)
    if not rows:
        return None
    heading = title or f"{len(rows)} worst queries (lowest MAP@R); green: same class, red: other class"
    return draw_retrieval_grid(rows, path, title=heading)
