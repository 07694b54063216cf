"""Resolution: the one place where a configuration value is rewritten from others, after every value has
been checked.

* metric names become canonical (``R@1`` -> ``recall@1``), in ``evaluation_metrics`` and ``best_metric``;
* on query -> gallery data (In-Shop; folder and csv data with query and gallery splits: the dataset
  registry's `query_gallery`) the default metric list becomes the query -> gallery list
  (`metrics.QUERY_GALLERY_METRICS`, the reference's In-Shop list); a list naming metrics that do not exist
  query -> gallery (clustering, the legacy metrics) is refused;
* ``best_metric`` must then be one of ``evaluation_metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metrics.names import QUERY_GALLERY_METRICS, canonical_metric_name, resolve_metric
from metrics.settings import DEFAULT_METRICS
from utilities.errors import UserError

if TYPE_CHECKING:  # annotations only: the schema resolves through this module
    from config.schema import Config


def resolve(cfg: Config) -> Config:
    """Rewrite the values that depend on others (see the module docstring); returns `cfg`."""
    cfg.evaluation_metrics = [canonical_metric_name(m) for m in cfg.evaluation_metrics]
    _query_gallery_metrics(cfg)
    cfg.best_metric = canonical_metric_name(cfg.best_metric)
    if cfg.best_metric not in cfg.evaluation_metrics:
        raise UserError(f"key 'best_metric' ({cfg.best_metric}) must be one of evaluation_metrics")
    return cfg


def _query_gallery_metrics(cfg: Config) -> None:
    one_set_only = [m for m in cfg.evaluation_metrics if not resolve_metric(m)[0].query_gallery]
    if not one_set_only:
        return
    # the dataset registry (its loaders, torchvision) only when needed
    from datasets.build import has_query_gallery, query_gallery_name

    if not has_query_gallery(cfg.dataset, cfg.source_path):
        return
    if cfg.evaluation_metrics != list(DEFAULT_METRICS):
        where = query_gallery_name(cfg.dataset)
        raise UserError(
            f"key 'evaluation_metrics': {', '.join(one_set_only)} do not exist for {where} (query -> gallery); "
            "leave them out (e.g. --evaluation_metrics recall@1 recall@10 map@r)"
        )
    cfg.evaluation_metrics = list(QUERY_GALLERY_METRICS)
