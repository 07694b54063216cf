"""Evaluate stored embeddings or a trained checkpoint.

    python eval.py --embeddings FILE.npz [--evaluation_metrics recall@1 map@r ...] [--eval_backend auto]
                   [--output FILE.json]
    python eval.py --checkpoint RUN/checkpoints/best.pt [--source_path DIR] [--save_embeddings FILE.npz]
                   [--show N]   # the N worst queries with their neighbours -> worst_queries.png
    python eval.py --source_path ../dml_data --dataset cub200 --test_path checkpoint_cub_embeds_e_recall@1.pth.tar

`--checkpoint` (alias `--test_path`) reads checkpoints of this project and of the reference implementation
(its pickled objects are never executed); the reference eval.py's flags are accepted.

An embeddings file holds ``embeddings`` + ``labels`` (every item queries all others) or
``query_embeddings``, ``query_labels``, ``gallery_embeddings``, ``gallery_labels`` (query -> gallery).
Exit codes: 0 success, 2 user error (one line on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

# numpy asks the kernel for transparent huge pages for its large arrays (madvise); reading a 124 MB embeddings
# file into them cost 0.06-0.95 s of kernel time, against 0.1 s in ordinary pages, on the machine of
# docs/performance.md. Set before anything imports numpy; an explicit setting in the environment wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metrics.names import QUERY_GALLERY_METRICS
from metrics.settings import DEFAULT_METRICS
from utilities.errors import UserError, report_user_error

if TYPE_CHECKING:
    from torch import nn

SINGLE_SET_KEYS = ("embeddings", "labels")
QUERY_GALLERY_KEYS = ("query_embeddings", "query_labels", "gallery_embeddings", "gallery_labels")


def build_parser() -> argparse.ArgumentParser:
    from config.command_line import add_key, script_parser

    parser = script_parser("eval.py", __doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--embeddings", help="npz file of stored embeddings and labels")
    source.add_argument(
        "--checkpoint",
        "--test_path",
        dest="checkpoint",
        help="checkpoint of a training run, or its run folder (checkpoints/best.pt, else last.pt)",
    )
    add_key(
        parser,
        "evaluation_metrics",
        default=None,
        help="metric names (or a [list]); none: the checkpoint's, for an embeddings file "
        f"{' '.join(DEFAULT_METRICS)} (query -> gallery: {' '.join(QUERY_GALLERY_METRICS)})",
    )
    add_key(parser, "eval_backend")
    parser.add_argument("--device", default=None, help="torch device (none: cpu; checkpoints: cuda if available)")
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads for the search")
    parser.add_argument("--output", default=None, help="write {metric: value} to this JSON file")
    add_key(parser, "source_path", default=None, help="dataset root (checkpoint mode; none: the checkpoint's)")
    parser.add_argument("--save_embeddings", default=None, help="save the embeddings (checkpoint mode)")
    parser.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="checkpoint mode: draw the N worst queries (lowest MAP@R) with their top 5 results to "
        "worst_queries.png in the folder of --output, else in the checkpoint's run folder",
    )
    reference = parser.add_argument_group("checkpoint mode, the reference eval.py's flags")
    add_key(reference, "dataset", default=None, help="data to evaluate on (none: the checkpoint's)")
    add_key(reference, "gpu", default=None, help="CUDA device index (none: the checkpoint's)")
    add_key(
        reference,
        "eval_batch_size",
        default=None,
        flags=("--batch_size",),
        help="images per embedding batch (none: the checkpoint's)",
    )
    add_key(reference, "workers", default=None, help="data-loader worker processes (none: the checkpoint's, at most 4)")
    reference.add_argument("--evaluate_on_cpu", action="store_true", help="run the neighbour search on the CPU")
    reference.add_argument("--normal", action="store_true", help="L2-normalise the embeddings (reference checkpoints)")
    reference.add_argument("--evaltypes", nargs="+", default=["embeds"], help="only 'embeds' exists")
    reference.add_argument("--infor_save_path", default=None, help="folder for extra_info_<dataset>.npz embeddings")
    return parser


def load_embeddings_file(path: str) -> dict[str, Any]:
    """The arrays of an embeddings npz, checked for one of the two key sets (UserError otherwise)."""
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--embeddings: file {path} does not exist")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"--embeddings: {path} is not a readable .npz file ({error})") from None
    if not isinstance(arrays, dict):
        raise UserError(f"--embeddings: {path} is a single array, expected an .npz archive")
    if all(key in arrays for key in SINGLE_SET_KEYS):
        return {key: arrays[key] for key in SINGLE_SET_KEYS}
    if all(key in arrays for key in QUERY_GALLERY_KEYS):
        return {key: arrays[key] for key in QUERY_GALLERY_KEYS}
    raise UserError(
        f"--embeddings: {path} has keys {sorted(arrays)}; expected {list(SINGLE_SET_KEYS)} "
        f"or {list(QUERY_GALLERY_KEYS)}"
    )


def format_table(values: dict[str, float]) -> str:
    width = max([len("metric"), *map(len, values)])
    lines = [f"| {'metric':<{width}} | value  |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name:<{width}} | {value:.4f} |" for name, value in values.items()]
    return "\n".join(lines)


def _evaluate_embeddings(args: argparse.Namespace, metric_names: list[str] | None) -> dict[str, float]:
    arrays = load_embeddings_file(args.embeddings)
    from metrics import compute_metrics, compute_query_gallery_metrics  # torch only once the file is valid

    options = {"backend": args.eval_backend, "device": args.device, "num_threads": args.num_threads}
    if "embeddings" in arrays:
        values, info = compute_metrics(
            arrays["embeddings"], arrays["labels"], metric_names or list(DEFAULT_METRICS), return_info=True, **options
        )
    else:
        values, info = compute_query_gallery_metrics(
            *(arrays[key] for key in QUERY_GALLERY_KEYS),
            metric_names or list(QUERY_GALLERY_METRICS),
            return_info=True,
            **options,
        )
    print(
        f"{info['queries']} queries, {info['excluded_queries']} excluded from the retrieval metrics "
        "(no other item of their class)"
    )
    return values


def _show_path(args: argparse.Namespace) -> Path:
    """Where --show draws: beside --output, else in the run folder holding checkpoints/, else by the file."""
    from engine.grids import WORST_QUERIES_FILE

    if args.output:
        return Path(args.output).parent / WORST_QUERIES_FILE
    from config.checkpoints import model_checkpoint

    checkpoint = model_checkpoint(args.checkpoint).resolve()
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / WORST_QUERIES_FILE


def _evaluate_checkpoint(args: argparse.Namespace, metric_names: list[str] | None) -> dict[str, float]:
    if [name.strip("[],'\"") for name in args.evaltypes] != ["embeds"]:
        raise UserError(f"--evaltypes: only 'embeds' exists, got {' '.join(args.evaltypes)}")
    save_embeddings = args.save_embeddings
    if args.infor_save_path:
        folder = Path(args.infor_save_path)
        if not folder.is_dir():
            raise UserError(f"--infor_save_path: folder {folder} does not exist")
        save_embeddings = str(folder / f"extra_info_{args.dataset or 'checkpoint'}.npz")
    values = evaluate_checkpoint(
        CheckpointEvaluation(
            args.checkpoint,
            source_path=args.source_path,
            dataset=args.dataset,
            metrics=metric_names,
            backend=args.eval_backend,
            device=args.device or "auto",
            gpu=args.gpu,
            batch_size=args.eval_batch_size,
            workers=args.workers,
            normalize=True if args.normal else None,
            search_on_cpu=args.evaluate_on_cpu,
            save_embeddings=save_embeddings,
            show=args.show,
            show_path=str(_show_path(args)) if args.show else None,
        )
    )
    if save_embeddings:
        print(f"embeddings saved to {save_embeddings}")
    return values


@dataclass
class CheckpointEvaluation:
    """What eval.py asks of a checkpoint; None keeps the checkpoint's own setting."""

    checkpoint: str
    source_path: str | None = None
    dataset: str | None = None
    metrics: list[str] | None = None
    backend: str = "auto"
    device: str = "auto"
    gpu: list[int] | None = None
    batch_size: int | None = None
    workers: int | None = None
    normalize: bool | None = None
    search_on_cpu: bool = False
    save_embeddings: str | None = None
    show: int = 0  # draw this many worst queries (engine.grids) to `show_path`
    show_path: str | None = None
    report: Callable[[str], None] = print


def _checkpoint_model(request: CheckpointEvaluation, path: Path, changes: dict[str, Any]) -> tuple[Any, nn.Module]:
    """The configuration and model of a checkpoint of either kind (`config.checkpoints`), with the request's
    `changes`; reports which kind was read and any change of the data."""
    from compat.checkpoint import reference_eval_config
    from config.checkpoints import model_from_checkpoint, model_from_reference, read_checkpoint

    own, reference = read_checkpoint(path)
    if own is not None:
        request.report(f"{path}: a checkpoint of this project (read with weights_only=True)")
        trained_on = own.get("config", {}).get("dataset") if isinstance(own.get("config"), dict) else None
        data = {k: v for k, v in (("dataset", request.dataset), ("source_path", request.source_path)) if v}
        if request.normalize is not None:
            data["eval_normalize"] = request.normalize
        cfg, model = model_from_checkpoint(own, path, {**data, **changes})
    else:
        request.report(reference.describe(path))
        values = reference_eval_config(reference, request.dataset, request.source_path)
        trained_on = reference.options.get("dataset")
        values["eval_normalize"] = bool(request.normalize)
        if request.normalize is None:
            request.report("embeddings are not L2-normalised, as in the reference's eval.py (--normal does)")
        cfg, model = model_from_reference(reference, {**values, **changes}, path)
    if trained_on and cfg.dataset != trained_on:
        request.report(f"evaluating on {cfg.dataset} (the checkpoint was trained on {trained_on})")
    return cfg, model


def evaluate_checkpoint(request: CheckpointEvaluation) -> dict[str, float]:
    """Rebuild a checkpoint's model and test data and evaluate them (eval.py).

    A checkpoint of this project brings its resolved configuration; one of the reference implementation
    brings its architecture name and embedding size (`compat.checkpoint`). `request.report` gets
    one line saying which kind was read (and any setting the request changed).
    """
    from architectures import input_spec_for
    from config.checkpoints import model_checkpoint
    from datasets import build_datasets
    from engine.evaluation import (
        embed_splits,
        evaluate_embeddings,
        evaluation_splits,
        same_item_indices,
        write_embeddings,
    )
    from engine.forward import ForwardPolicy
    from engine.grids import WORST_QUERIES_TOP, write_worst_queries
    from engine.runtime import resolve_device
    from metrics import canonical_metric_name

    path = model_checkpoint(request.checkpoint)
    changes: dict[str, Any] = {}
    if request.metrics:
        changes["evaluation_metrics"] = [canonical_metric_name(m) for m in request.metrics]
        changes["best_metric"] = changes["evaluation_metrics"][0]
    if request.gpu is not None:
        changes["gpu"] = request.gpu
    if request.batch_size is not None:
        changes["eval_batch_size"] = request.batch_size
    cfg, model = _checkpoint_model(request, path, changes)
    torch_device = resolve_device(request.device, cfg.gpu)
    ForwardPolicy(torch_device, "fp32", cfg.channels_last).place_model(model)
    splits = build_datasets(cfg, input_spec_for(cfg.arch))
    embedded = embed_splits(
        model,
        splits,
        evaluation_splits(splits, use_val=False),
        device=torch_device,
        batch_size=cfg.eval_batch_size,
        workers=request.workers if request.workers is not None else min(cfg.workers, 4),
        channels_last=cfg.channels_last,
        normalize=cfg.eval_normalize,
    )
    if request.save_embeddings:
        write_embeddings(request.save_embeddings, embedded)
    if request.search_on_cpu:
        embedded = {name: (embeddings.cpu(), labels) for name, (embeddings, labels) in embedded.items()}
    show = request.show > 0 and request.show_path
    values, ranking = evaluate_embeddings(
        embedded,
        cfg.evaluation_metrics,
        request.backend,
        same_item_indices(splits),
        keep_top=WORST_QUERIES_TOP if show else 0,
    )
    if show:
        written = write_worst_queries(ranking, embedded, splits, request.show_path, n=request.show)
        request.report(f"worst queries drawn to {written}" if written else "no query could be scored; no picture")
    return values


def main(argv: list[str] | None = None) -> int:
    try:
        from config.command_line import parse_script

        args = parse_script(build_parser(), argv)
        if not args.embeddings and not args.checkpoint:
            raise UserError("eval.py: exactly one of --embeddings or --checkpoint is required")
        metric_names = args.evaluation_metrics
        if args.show < 0:
            raise UserError(f"--show: expected a number of queries >= 0, got {args.show}")
        if args.show and args.embeddings:
            raise UserError("--show draws images and needs --checkpoint (an embeddings file has no images)")
        if args.embeddings:
            values = _evaluate_embeddings(args, metric_names)
        else:
            values = _evaluate_checkpoint(args, metric_names)
        print(format_table(values))
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(values, indent=1) + "\n")
    except UserError as error:
        return report_user_error(error)
    return 0


def exit_without_teardown(code: int) -> None:
    """End the process with `code` at once, everything written: with torch loaded, the interpreter's teardown
    and the libraries' destructors took ~0.5 s (against 0.06 s), 5% of a 10 s evaluation of stored
    embeddings. Not while child processes run (data-loader workers), which the normal exit shuts down."""
    import logging
    import multiprocessing

    if multiprocessing.active_children():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
