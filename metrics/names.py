"""Metric names: canonical spelling, the reference implementation's aliases, and list parsing.

Canonical names (what every result dict uses as keys):

* ``recall@K``       fraction of queries with a same-class item among their K nearest neighbours
* ``map@r``          MAP@R ("A Metric Learning Reality Check"; R = number of other images of the class)
* ``r_precision``    R-precision with the same R
* ``map@r_legacy``   the reference implementation's ``mAP_R`` (window and denominator include the query)
* ``map@K``          average precision over the first K neighbours (``map@1000``), denominator min(R, K)
* ``map@K_legacy``   the reference's ``mAP_1000`` (K = 1000): the first K neighbours, denominator the class size
                     including the query (R + 1), so its values are lower than ``map@K``'s
* ``map@K_inshop``   the reference's In-Shop ``MAP`` (K = 50): average precision over the first K gallery items,
                     divided by the number of hits found there (0 when there is none)
* ``nmi``            normalised mutual information between k-means clusters and classes
* ``f1``             pair-counting F1 between k-means clusters and classes

Aliases of the reference (``Noahsark/DADA``): ``e_recall@K`` and ``c_recall@K`` -> ``recall@K``,
``mAP_R`` -> ``map@r_legacy`` (NOT ``map@r``: the reference's R includes the query), ``mAP_1000`` and
``c_mAP_1000`` -> ``map@1000_legacy`` (NOT ``map@1000``, for the same reason), ``MAP`` (its In-Shop report) ->
``map@50_inshop``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from utilities.errors import UserError

FIXED_NAMES: dict[str, str] = {
    "map@r": "map@r",
    "r_precision": "r_precision",
    "map@r_legacy": "map@r_legacy",
    "nmi": "nmi",
    "f1": "f1",
    # aliases of the reference implementation
    "mAP_R": "map@r_legacy",
    "mAP_1000": "map@1000_legacy",
    "c_mAP_1000": "map@1000_legacy",
    "MAP": "map@50_inshop",
}

# Parametrised names: a regular expression with one integer group -> canonical template.
PARAMETRISED_NAMES: dict[str, str] = {
    r"recall@(\d+)": "recall@{}",
    r"e_recall@(\d+)": "recall@{}",
    r"c_recall@(\d+)": "recall@{}",
    r"map@(\d+)": "map@{}",
    r"map@(\d+)_legacy": "map@{}_legacy",
    r"map@(\d+)_inshop": "map@{}_inshop",
}

CLUSTERING_METRICS = frozenset({"nmi", "f1"})

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


def canonical_metric_name(name: str) -> str:
    """Canonical spelling of a metric name or alias, e.g. ``e_recall@4`` -> ``recall@4``.

    Raises ``UserError`` for an unknown name or a non-positive K.
    """
    name = name.strip()
    if name in FIXED_NAMES:
        return FIXED_NAMES[name]
    for pattern, template in PARAMETRISED_NAMES.items():
        match = re.fullmatch(pattern, name)
        if match:
            k = int(match.group(1))
            if k < 1:
                raise UserError(f"metric {name!r}: K must be a positive integer")
            return template.format(k)
    known = ", ".join(
        ["recall@K", "map@K", "map@K_legacy", "map@K_inshop", *sorted(FIXED_NAMES), "e_recall@K", "c_recall@K"]
    )
    raise UserError(f"unknown metric {name!r}; expected one of: {known}")


def metric_k(name: str) -> int | None:
    """K of a canonical ``recall@K`` / ``map@K`` / ``map@K_legacy`` / ``map@K_inshop`` name, None for the others."""
    match = re.fullmatch(r"(?:recall|map)@(\d+)(?:_legacy|_inshop)?", name)
    return int(match.group(1)) if match else None


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
