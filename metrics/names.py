"""The metric registry: every metric's name, definition, reference aliases and what computing it needs.

`METRICS` is the one list of metrics. Each `MetricSpec` says how its canonical names are spelled (``recall@K``
is a family: ``recall@1``, ``recall@4``, ...), which names of the reference implementation (``Noahsark/DADA``)
mean the same thing, how many neighbours the search must return, which function of `metrics.retrieval`
scores one query (clustering metrics have none: they come from one k-means), and whether it exists for
query -> gallery evaluation. Name parsing, `compute_metrics`, configuration validation, ``--help`` and the
metric table of docs/evaluation.md all read it. This module imports no torch, so a bad name is reported at once.

Adding a metric: a per-query function in ``metrics/retrieval.py`` (``f(hits, num_relevant, k)``, any subset of
those parameters), then one entry here::

    MetricSpec("precision@K", "fraction of same-class items among the first K neighbours",
               function="precision_at_k", neighbours=lambda k, r: k)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from utilities.errors import UserError


@dataclass(frozen=True)
class MetricSpec:
    """One metric, or a family of metrics parametrised by K (``name`` contains ``K``: ``recall@K``).

    `neighbours(k, r)` is the number of nearest neighbours its per-query function reads, given K (None for
    unparametrised metrics) and R: the largest number of relevant items of any query (an int: how deep the
    search goes), or each query's own R (a tensor: the query's function reads no more than that many of its
    neighbours, so only those need an exact order).
    `function` names the per-query function in `metrics.retrieval`; None for clustering metrics.
    `aliases` are the reference implementation's names (a ``K`` in an alias stands for the same integer).
    """

    name: str
    definition: str
    function: str | None = None
    neighbours: Callable[[int | None, int], int] = lambda k, r: 0
    query_gallery: bool = True
    aliases: tuple[str, ...] = ()
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.name))

    @property
    def clustering(self) -> bool:
        return self.function is None

    @property
    def parametrised(self) -> bool:
        return "K" in self.name

    def canonical(self, k: int | None) -> str:
        return self.name.replace("K", str(k)) if self.parametrised else self.name


def _compile(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name).replace("K", r"(\d+)"))


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "recall@K",
        "fraction of queries with a same-class item among their K nearest neighbours",
        function="recall_at_k",
        neighbours=lambda k, r: k,
        aliases=("e_recall@K", "c_recall@K"),
    ),
    MetricSpec(
        "map@r",
        "MAP@R (Musgrave et al. 2020), R = number of other items of the query's class",
        function="map_at_r",
        neighbours=lambda k, r: r,
    ),
    MetricSpec(
        "r_precision", "precision among the first R neighbours", function="r_precision", neighbours=lambda k, r: r
    ),
    MetricSpec(
        "map@r_legacy",
        "the reference's `mAP_R`: R includes the query (a perfect embedding scores (R−1)/R)",
        function="map_at_r_legacy",
        neighbours=lambda k, r: r + 1,
        query_gallery=False,
        aliases=("mAP_R",),
    ),
    MetricSpec(
        "map@K",
        "average precision over the first K neighbours, divided by min(R, K) (a perfect embedding scores 1)",
        function="map_at_k",
        neighbours=lambda k, r: k,
    ),
    MetricSpec(
        "map@K_legacy",
        "the reference's `mAP_1000` (K = 1000): the first K neighbours, divided by the class size including the query",
        function="map_at_k_legacy",
        neighbours=lambda k, r: k,
        query_gallery=False,
        aliases=("mAP_1000", "c_mAP_1000"),
    ),
    MetricSpec(
        "map@K_inshop",
        "the reference's In-Shop `MAP` (K = 50): average precision over the first K gallery items, divided by the "
        "number of hits among them (0 without any)",
        function="map_at_k_inshop",
        neighbours=lambda k, r: k,
        aliases=("MAP",),
    ),
    MetricSpec("nmi", "k-means (K = number of classes) vs labels: normalised mutual information", query_gallery=False),
    MetricSpec("f1", "k-means (K = number of classes) vs labels: pair-counting F1", query_gallery=False),
)

# Aliases that name one member of a family: the reference's `mAP_1000` is K = 1000, its In-Shop `MAP` K = 50.
_FIXED_K = {"mAP_1000": 1000, "c_mAP_1000": 1000, "MAP": 50}

# The reference's In-Shop report (query -> gallery): recall@1/10/20/30/40/50 and its top-50 MAP.
REFERENCE_INSHOP_METRICS = (
    "recall@1",
    "recall@10",
    "recall@20",
    "recall@30",
    "recall@40",
    "recall@50",
    "map@50_inshop",
)
# This project's default for query -> gallery evaluation: the reference's list, plus the standard MAP@R.
QUERY_GALLERY_METRICS = (*REFERENCE_INSHOP_METRICS, "map@r")


def resolve_metric(name: str) -> tuple[MetricSpec, int | None]:
    """The spec and K of a canonical name or alias, e.g. ``e_recall@4`` -> (recall@K, 4).

    Raises ``UserError`` for an unknown name or a non-positive K.
    """
    name = name.strip()
    for spec in METRICS:
        for spelling in (spec.name, *spec.aliases):
            if spelling in _FIXED_K:
                if name == spelling:
                    return spec, _FIXED_K[spelling]
                continue
            match = _compile(spelling).fullmatch(name)
            if match is None:
                continue
            k = int(match.group(1)) if spec.parametrised else None
            if k is not None and k < 1:
                raise UserError(f"metric {name!r}: K must be a positive integer")
            return spec, k
    known = ", ".join(name for spec in METRICS for name in (spec.name, *spec.aliases))
    raise UserError(f"unknown metric {name!r}; expected one of: {known}")


def canonical_metric_name(name: str) -> str:
    """Canonical spelling of a metric name or alias: ``e_recall@4`` -> ``recall@4``, ``mAP_R`` -> ``map@r_legacy``.

    >>> [canonical_metric_name(n) for n in ("e_recall@4", "mAP_R", "mAP_1000", "MAP")]
    ['recall@4', 'map@r_legacy', 'map@1000_legacy', 'map@50_inshop']
    """
    spec, k = resolve_metric(name)
    return spec.canonical(k)


def is_clustering(name: str) -> bool:
    """Whether a metric comes from the k-means clustering (``nmi``, ``f1``) rather than the neighbour search."""
    return resolve_metric(name)[0].clustering


def metric_k(name: str) -> int | None:
    """K of a parametrised metric (``recall@4`` -> 4, ``map@50_inshop`` -> 50), None for the others."""
    return resolve_metric(name)[1]


def parse_metric_list(tokens: Sequence[str] | str) -> list[str]:
    """Canonical metric names from command-line tokens.

    Accepts space- or comma-separated names and the bracketed list form of the reference README, in one
    token or split over several: ``["['e_recall@1',", "'e_recall@2']"]`` -> ``['recall@1', 'recall@2']``.
    Duplicates are dropped, the order is kept.
    """
    text = tokens if isinstance(tokens, str) else " ".join(tokens)
    pieces = re.split(r"[\s,\[\]]+", text)
    names: list[str] = []
    for piece in pieces:
        piece = piece.strip().strip("'\"")
        if not piece:
            continue
        canonical = canonical_metric_name(piece)
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise UserError("--evaluation_metrics: no metric name given")
    return names


def metric_table() -> str:
    """The metric table of docs/evaluation.md, as Markdown (tests/metrics checks the copy)."""
    lines = ["| metric | definition | reference name | query → gallery |", "|---|---|---|---|"]
    for spec in METRICS:
        aliases = ", ".join(f"`{alias}`" for alias in spec.aliases)
        lines.append(f"| `{spec.name}` | {spec.definition} | {aliases} | {'yes' if spec.query_gallery else 'no'} |")
    return "\n".join(lines)


CLUSTERING_METRICS = frozenset(spec.name for spec in METRICS if spec.clustering)


if __name__ == "__main__":
    print(metric_table())
