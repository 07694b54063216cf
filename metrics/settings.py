"""The configuration keys of evaluation, declared once with their default, help and bounds
(`utilities.settings`). Imports no torch: eval.py reads its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

from metrics.names import parse_metric_list
from utilities.settings import setting

DEFAULT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r")
"""The metrics of an evaluation unless told otherwise (query -> gallery data: `metrics.QUERY_GALLERY_METRICS`)."""


def _backends() -> tuple[str, ...]:
    from metrics.compute import BACKENDS

    return tuple(BACKENDS)


@dataclass
class EvalSettings:
    """What an evaluation computes, how often, and with which search."""

    evaluation_metrics: list[str] = setting(
        list(DEFAULT_METRICS),
        "metrics computed at evaluation (In-Shop default: recall@1/10/20/30/40/50, map@r)",
        parse=parse_metric_list,
    )
    eval_every: int = setting(1, "evaluate every this many epochs (and after the last)", at_least=1)
    eval_backend: str = setting("auto", "nearest-neighbour backend", _backends)
    eval_normalize: bool = setting(True, "L2-normalise the evaluation embeddings (cosine retrieval)")
    best_metric: str = setting("recall@1", "metric that selects checkpoints/best.pt")
