"""A saved gallery for search: an exact faiss inner-product index plus a JSON sidecar.

`OUT.index` is a `faiss.IndexFlatIP` over L2-normalised embeddings (inner product = cosine similarity);
`OUT.index.json` holds, row for row, the image paths and labels (null when unknown), and what built the
index: the checkpoint's path and SHA-256, the embedding dimension, the architecture and the resolution. A
query with another checkpoint is refused, since its embeddings live in another space. Both files are written
to a temporary name and renamed, so an interrupted write leaves the previous pair intact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from utilities.errors import UserError
from utilities.files import atomic_write

FORMAT = "dada-dml-index"
VERSION = 1


def sidecar_path(index_path: str | Path) -> Path:
    return Path(f"{index_path}.json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model: Any) -> dict[str, Any]:
    """What the sidecar records of an `engine.inference.InferenceModel`."""
    return {
        "checkpoint": str(Path(model.checkpoint).resolve()),
        "checkpoint_sha256": file_sha256(model.checkpoint),
        "embed_dim": model.embed_dim,
        "arch": model.cfg.arch,
        "resolution": model.cfg.resolution,
    }


class SearchIndex:
    """Gallery embeddings in a flat inner-product index, with the path and label of every row."""

    def __init__(self, index: Any, paths: list[str], labels: list[str | None], model: dict[str, Any]) -> None:
        self.index = index
        self.paths = paths
        self.labels = labels
        self.model = model
        self._rows = {path: row for row, path in enumerate(paths)}

    @classmethod
    def create(cls, model: dict[str, Any]) -> SearchIndex:
        import faiss

        return cls(faiss.IndexFlatIP(int(model["embed_dim"])), [], [], dict(model))

    @classmethod
    def load(cls, path: str | Path) -> SearchIndex:
        """Read an index and its sidecar (UserError when either is missing, unreadable or they disagree)."""
        import faiss

        path, side = Path(path), sidecar_path(path)
        if not path.is_file():
            raise UserError(f"--index: {path} does not exist")
        if not side.is_file():
            raise UserError(f"--index: {path} has no sidecar {side} (paths and labels of its rows)")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--index: sidecar {side} is not readable JSON ({error})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"--index: {side} is not an index sidecar of this project (no '{FORMAT}' tag)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise UserError(f"--index: {path} is not a readable faiss index ({str(error).splitlines()[0]})") from None
        if index.ntotal != len(meta["paths"]) or index.d != meta["model"]["embed_dim"]:
            raise UserError(
                f"--index: {path} holds {index.ntotal} vectors of dimension {index.d} but its sidecar "
                f"lists {len(meta['paths'])} images of dimension {meta['model']['embed_dim']}"
            )
        return cls(index, list(meta["paths"]), list(meta["labels"]), dict(meta["model"]))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def labelled(self) -> bool:
        return any(label is not None for label in self.labels)

    def check_model(self, identity: dict[str, Any], where: str) -> None:
        """Refuse a checkpoint other than the one that built the index (UserError)."""
        if identity["embed_dim"] != self.model["embed_dim"]:
            raise UserError(
                f"--checkpoint: {identity['checkpoint']} embeds in {identity['embed_dim']} dimensions but index "
                f"{where} holds {self.model['embed_dim']}-dimensional embeddings of {self.model['checkpoint']}"
            )
        if identity["checkpoint_sha256"] != self.model["checkpoint_sha256"]:
            raise UserError(
                f"--checkpoint: {identity['checkpoint']} is not the checkpoint that built index {where} "
                f"({self.model['checkpoint']}, sha256 {self.model['checkpoint_sha256'][:12]}...)"
            )

    def contains(self, path: str) -> bool:
        return path in self._rows

    def add(self, embeddings: np.ndarray, paths: list[str], labels: list[str | None]) -> None:
        """Append rows (float32 unit vectors, N x D) with their paths and labels."""
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        for path in paths:
            self._rows[path] = len(self.paths)
            self.paths.append(path)
        self.labels.extend(labels)

    def search(self, queries: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and row ids (Q x min(k, N)) of the nearest rows, queries searched `chunk` at a time."""
        import faiss

        k = min(k, len(self))
        index = self.index
        if faiss.get_num_gpus() > 0 and len(self) >= 10_000:
            index = faiss.index_cpu_to_all_gpus(index)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sims, ids = [], []
        for start in range(0, len(queries), chunk):
            s, i = index.search(queries[start : start + chunk], k)
            sims.append(s)
            ids.append(i)
        if not sims:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate(sims), np.concatenate(ids)

    def save(self, path: str | Path) -> None:
        """Write the index and its sidecar (each atomically)."""
        import faiss

        path = Path(path)
        meta = {"format": FORMAT, "version": VERSION, "model": self.model, "paths": self.paths, "labels": self.labels}
        atomic_write(path, lambda tmp: faiss.write_index(self.index, tmp))
        atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=0) + "\n"))
