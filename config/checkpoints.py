"""A checkpoint -> its configuration -> a model: of this project (`load_model`, for embedding images) or of the
reference implementation (`read_checkpoint`, for eval.py).

What a run folder means here: ``checkpoints/best.pt`` when it exists, else ``checkpoints/last.pt`` (a model
to use); resuming a run (``main.py --resume``) reads ``checkpoints/last.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from architectures import EmbeddingModel, build_model
from compat.checkpoint import ReferenceCheckpoint, reference_checkpoint
from compat.unpickler import load_restricted
from compat.weights import is_reference_checkpoint, load_reference_weights
from config.schema import Config, config_from_dict
from engine.checkpoint import FORMAT, load_checkpoint, resolve_checkpoint_path
from engine.inference import InferenceModel, default_device
from utilities.errors import UserError

if TYPE_CHECKING:
    from engine.trainer import Resume


def model_checkpoint(path: str | Path) -> Path:
    """The checkpoint a model is used from: a checkpoint file, or a run folder's `checkpoints/best.pt` (else
    `checkpoints/last.pt`). Continuing a run reads `last.pt` instead (`engine.checkpoint.load_checkpoint`)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():
        return path / "checkpoints" / "best.pt"
    return resolve_checkpoint_path(path)


def model_from_checkpoint(
    state: dict[str, Any], file: Path, overrides: dict[str, Any] | None = None
) -> tuple[Config, EmbeddingModel]:
    """The one path from a checkpoint of this project to its model: the stored configuration (with
    `overrides`; `pretrained` off, the weights are the checkpoint's) checked and resolved as any other, the
    network built from it and its weights loaded. Used by `load_model`, eval.py and `main.py --resume`
    (`resume_point`)."""
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{file} is not a model checkpoint of this project (no 'config' and 'model' entries)")
    cfg = config_from_dict({**state["config"], **(overrides or {}), "pretrained": False}, f"checkpoint {file}")
    network = build_model(cfg)
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(f"{file}: the weights do not fit arch {cfg.arch!r} ({str(error).splitlines()[0]})") from None
    return cfg, network


def resume_point(path: str | Path, cfg: Config, state: dict[str, Any] | None = None) -> Resume:
    """What a continued run (`main.py --resume`, a sweep's worker) starts from: the checkpoint of `path` (a
    `last.pt` or its run folder; `state`: that checkpoint when already read) and its network, built by
    `model_from_checkpoint` with the keys of the continued run's configuration `cfg`; `pretrained` is never
    fetched, the weights are the checkpoint's."""
    from engine.trainer import Resume

    state = state if state is not None else load_checkpoint(path)
    _, network = model_from_checkpoint(state, resolve_checkpoint_path(path), cfg.to_dict())
    return Resume(str(path), state, network)


def model_from_reference(
    reference: ReferenceCheckpoint, values: dict[str, Any], file: Path
) -> tuple[Config, EmbeddingModel]:
    """The model of a checkpoint of the reference implementation: `values` (`compat.checkpoint.
    reference_eval_config`, with any change) checked and resolved, the network built and the reference's
    weights loaded under this project's names (explicitly: `compat.weights.load_reference_weights`)."""
    cfg = config_from_dict(values, f"checkpoint {file}")
    network = build_model(cfg)
    load_reference_weights(network, reference.state_dict, cfg.arch)
    return cfg, network


def load_model(path: str | Path, device: str | torch.device | None = None) -> InferenceModel:
    """The embedding network of a checkpoint of this project (a `.pt` file or a run folder), ready to embed.

    `device`: None picks the GPU when present. Anything that is not a readable checkpoint of this project
    is a `UserError` naming the file.
    """
    file = model_checkpoint(path)
    cfg, network = model_from_checkpoint(load_checkpoint(file), file)
    try:
        torch_device = torch.device(device) if device is not None else default_device()
    except RuntimeError as error:
        raise UserError(f"device {device!r} is not a valid torch device: {error}") from None
    return InferenceModel(network, cfg, file, torch_device)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any] | None, ReferenceCheckpoint | None]:
    """A checkpoint of this project (read with ``weights_only=True``) or, failing that, one of the reference
    implementation (read with the restricted unpickler): exactly one of the pair is not None."""
    try:
        return load_checkpoint(path), None
    except UserError as not_ours:
        loaded = load_restricted(path)
        if is_reference_checkpoint(loaded.obj):
            return None, reference_checkpoint(path, loaded)
        if isinstance(loaded.obj, dict) and loaded.obj.get("format") == FORMAT:
            raise
        raise UserError(
            f"{path} is neither a checkpoint of this project nor one of the reference implementation "
            "(a dict with 'state_dict' and 'opt')"
        ) from not_ours
