"""Search a gallery of images with a trained checkpoint.

    python retrieve.py --checkpoint RUN/checkpoints/best.pt --gallery DIR_OR_CSV --index OUT.index
    python retrieve.py --checkpoint RUN/checkpoints/best.pt --index OUT.index --add NEW_DIR
    python retrieve.py --checkpoint RUN/checkpoints/best.pt --index OUT.index --query IMAGE_OR_DIR --top 5
        [--output results.csv | results.json] [--grid results.png]
    python retrieve.py --checkpoint best.pt --gallery DIR --query IMAGE_OR_DIR   # no saved index

The gallery (a folder searched recursively, or a CSV manifest with `path` and optional `label` columns) is
embedded batch by batch and added to an exact inner-product faiss index of L2-normalised embeddings (cosine
similarity); `OUT.index.json` beside it lists the images, their labels (first-level subfolder names, or the
CSV's `label`) and the checkpoint that built it. `--add` appends images without re-embedding the old ones
(images already in the index are skipped). A query prints the K nearest gallery images with their
similarities; `--output` writes them (query, query_label, rank, gallery, gallery_label, similarity) as CSV or
JSON by the suffix, `--grid` draws them (green frame: same class, red: another class, when labels are known).
Exit codes: 0 success, 2 user error (one line on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from utilities.errors import UserError, report_user_error

OUTPUT_COLUMNS = ("query", "query_label", "rank", "gallery", "gallery_label", "similarity")
PRINTED_QUERIES = 20
GRID_ROWS = 25


def build_parser() -> argparse.ArgumentParser:
    from config.command_line import add_key, script_parser

    parser = script_parser("retrieve.py", __doc__)
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint of this project, or its run folder (checkpoints/best.pt)"
    )
    parser.add_argument("--gallery", help="folder of images or CSV manifest to build the index from")
    parser.add_argument("--index", help="faiss index file (written with --gallery/--add, read otherwise)")
    parser.add_argument("--add", help="folder, CSV or image to append to an existing --index")
    parser.add_argument("--query", help="query image, folder of images or CSV manifest")
    parser.add_argument("--top", type=int, default=5, help="neighbours per query (K)")
    parser.add_argument("--output", help="write the results to this .csv or .json file")
    parser.add_argument("--grid", help="draw queries and results to this image file (e.g. results.png)")
    add_key(parser, "eval_batch_size", default=64, flags=("--batch_size",), help="images per embedding batch")
    add_key(parser, "workers", default=2, help="image-loading worker processes")
    parser.add_argument("--device", default=None, help="torch device (none: cuda if available, else cpu)")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise UserError(f"--top: K must be at least 1, got {args.top}")
    if not (args.gallery or args.add or args.query):
        raise UserError("retrieve.py: nothing to do; give --gallery (build), --add (append) or --query (search)")
    if args.gallery and args.add:
        raise UserError("--add appends to an existing --index; it cannot be combined with --gallery")
    if args.add and not args.index:
        raise UserError("--add needs the --index to append to")
    if args.query and not (args.index or args.gallery):
        raise UserError("--query needs --index (a saved gallery) or --gallery")
    if (args.output or args.grid) and not args.query:
        raise UserError(f"{'--output' if args.output else '--grid'} needs --query")
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output: {args.output} must end in .csv or .json")
    if args.gallery and args.index and Path(args.index).exists():
        raise UserError(f"--index: {args.index} already exists; append with --add, or remove it to rebuild")
    if args.index and not args.gallery and not Path(args.index).is_file():
        raise UserError(f"--index: {args.index} does not exist (build it with --gallery)")


def _add_images(store: Any, model: Any, images: Any, args: argparse.Namespace, what: str) -> int:
    """Embed the images not yet in `store`, batch by batch, and append them; returns how many were added."""
    from engine.inference import as_numpy

    fresh, seen, skipped = [], set(), []
    for i, path in enumerate(images.paths):
        if store.contains(path) or path in seen:
            skipped.append(path)
        else:
            seen.add(path)
            fresh.append(i)
    if skipped:
        print(f"skipped {len(skipped)} image(s) already in the index or listed twice (first: {skipped[0]})")
    paths = [images.paths[i] for i in fresh]
    labels = [images.labels[i] for i in fresh]
    for start, embeddings in model.iter_embed(
        paths, batch_size=args.eval_batch_size, workers=args.workers, progress=what
    ):
        stop = start + len(embeddings)
        store.add(as_numpy(embeddings), paths[start:stop], labels[start:stop])
    return len(paths)


def _results(store: Any, model: Any, queries: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per (query, rank): the K nearest gallery images of every query, queries embedded in batches."""
    from engine.inference import as_numpy

    records: list[dict[str, Any]] = []
    batches = model.iter_embed(queries.paths, batch_size=args.eval_batch_size, workers=args.workers, progress="queries")
    for start, embeddings in batches:
        sims, ids = store.search(as_numpy(embeddings), args.top)
        for offset, (row_sims, row_ids) in enumerate(zip(sims, ids)):
            q = start + offset
            for rank, (similarity, gallery_row) in enumerate(zip(row_sims, row_ids), start=1):
                records.append(
                    {
                        "query": queries.paths[q],
                        "query_label": queries.labels[q],
                        "rank": rank,
                        "gallery": store.paths[gallery_row],
                        "gallery_label": store.labels[gallery_row],
                        "similarity": float(similarity),
                    }
                )
    return records


def _by_query(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["query"], []).append(record)
    return grouped


def format_results(records: list[dict[str, Any]], limit: int = PRINTED_QUERIES) -> str:
    """Markdown tables of the results, one per query (the first `limit` queries)."""
    grouped = _by_query(records)
    lines: list[str] = []
    for query, rows in list(grouped.items())[:limit]:
        label = rows[0]["query_label"]
        lines.append(f"query {query}" + (f" (label {label})" if label is not None else ""))
        lines += ["| rank | similarity | gallery image | label |", "|---|---|---|---|"]
        for row in rows:
            shown = "" if row["gallery_label"] is None else row["gallery_label"]
            lines.append(f"| {row['rank']} | {row['similarity']:.4f} | {row['gallery']} | {shown} |")
        lines.append("")
    if len(grouped) > limit:
        lines.append(f"... {len(grouped) - limit} more queries (all of them in --output)")
    return "\n".join(lines).rstrip()


def write_results(records: list[dict[str, Any]], path: str | Path) -> None:
    """CSV (empty cells for unknown labels) or JSON (a list of records, null for unknown labels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records, indent=1) + "\n")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if record[k] is None else record[k] for k in OUTPUT_COLUMNS})


def draw_results(records: list[dict[str, Any]], path: str | Path, k: int) -> None:
    from engine.grids import GridRow, draw_retrieval_grid

    grouped = _by_query(records)
    rows = [
        GridRow(query, items[0]["query_label"], [(r["gallery"], r["similarity"], r["gallery_label"]) for r in items])
        for query, items in list(grouped.items())[:GRID_ROWS]
    ]
    more = f" (first {GRID_ROWS} of {len(grouped)} queries)" if len(grouped) > GRID_ROWS else ""
    draw_retrieval_grid(rows, path, title=f"top {k} results{more}")


def run(args: argparse.Namespace) -> None:
    _check_arguments(args)
    from engine.image_sets import read_image_set

    gallery = read_image_set(args.gallery, "--gallery", "gallery") if args.gallery else None
    extra = read_image_set(args.add, "--add", "gallery") if args.add else None
    queries = read_image_set(args.query, "--query", "query") if args.query else None
    from config.checkpoints import load_model
    from engine.search_index import SearchIndex, model_identity

    model = load_model(args.checkpoint, args.device)
    identity = model_identity(model)
    if gallery is not None:
        store = SearchIndex.create(identity)
        _add_images(store, model, gallery, args, "gallery")
        if args.index:
            store.save(args.index)
            print(f"index of {len(store)} images written to {args.index} (+ {args.index}.json)")
    else:
        store = SearchIndex.load(args.index)
        store.check_model(identity, args.index)
    if extra is not None:
        before = len(store)
        added = _add_images(store, model, extra, args, "adding")
        if added:
            store.save(args.index)
        print(f"added {added} image(s) to {args.index}: {before} -> {len(store)} images")
    if queries is None:
        return
    records = _results(store, model, queries, args)
    print(format_results(records))
    if args.output:
        write_results(records, args.output)
        print(f"results written to {args.output}")
    if args.grid:
        draw_results(records, args.grid, min(args.top, len(store)))
        print(f"picture written to {args.grid}")


def main(argv: list[str] | None = None) -> int:
    try:
        from config.command_line import parse_script

        run(parse_script(build_parser(), argv))
    except UserError as error:
        return report_user_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
