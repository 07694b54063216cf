"""Checkpoints: plain dicts of tensors and Python values, written atomically, loadable with weights_only.

`last.pt` holds everything needed to resume exactly (model, criterion, every optimizer, scheduler and scaler
state, epoch, history, best metrics, resolved configuration); `best.pt` holds the model, the criterion and
the configuration of the best evaluation. A crash never leaves a half-written file: each file is written to
a temporary name in the same folder and then renamed over the old one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from utilities.errors import UserError
from utilities.files import atomic_write

FORMAT = "dada-dml-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically write `state` (tagged with the format) to `path`."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def resolve_checkpoint_path(path: str | Path, name: str = "last.pt") -> Path:
    """A checkpoint file, or `<run folder>/checkpoints/<name>` when given a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / name
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this project (weights_only); anything else is a `UserError` naming the file."""
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, pickled objects, not a torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable checkpoint of this project ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (no '{FORMAT}' tag)")
    if state.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    return state
