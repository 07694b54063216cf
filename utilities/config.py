"""The configuration schema, and how YAML files and the command line become one resolved `Config`.

Every key lives in one dataclass with a default and a one-line help (shown by ``python main.py --help``).
Resolution order: schema defaults, then the YAML file given by ``--config``, then ``--key value`` on the
command line (the command line wins). Unknown keys, wrong types and impossible values raise `UserError`
naming the key (and the closest valid key), before any work starts.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from criteria.registry import LOSS_KEYS, LOSS_NAMES, check_loss_config, loss_help
from utilities.errors import UserError
from utilities.suggestions import suggest_key


def _registry(module: str, name: str) -> Callable[[], tuple[str, ...]]:
    """The names of a registry (`module.name`, a dict or tuple), read when a value is validated or `--help` is
    shown, so that importing the schema does not import every package (the datasets pull in torchvision). The
    loss registry is the exception: its keys are part of the schema, so `criteria` is imported with it."""

    def names() -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(module), name))

    return names


def _key(default: Any, help: str, choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None) -> Any:
    """A schema entry: default value, one-line help and (optionally) the allowed values, given as a sequence or
    as a function returning them (a registry's names)."""
    meta = {"help": help, "choices": choices if callable(choices) or not choices else tuple(choices)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class _CoreConfig:
    """Every setting of a run. Defaults are the reference implementation's `parameters.py` defaults."""

    # --- run -----------------------------------------------------------------------------------------
    dataset: str = _key(
        "synthetic",
        "data to train on: a benchmark, the synthetic set, or your own images (folder: class folders; csv: a manifest)",
        _registry("datasets.build", "DATASETS"),
    )
    source_path: str = _key(
        "data", "root folder of the benchmarks (the dataset name is appended); folder: the image folder; csv: the file"
    )
    save_path: str = _key("runs", "root folder of the runs (<save_path>/<dataset>/<save_name>)")
    save_name: str = _key("", "run folder name; empty: a date-stamped name")
    seed: int = _key(0, "seed of sampling, augmentation, mixing draws and initialisation")
    device: str = _key("auto", "where to train: auto (CUDA when available), cuda or cpu", ("auto", "cuda", "cpu"))
    gpu: list[int] = _key([0], "CUDA device index (single-process runs; torchrun sets it per rank)")
    kernels: int = _key(4, "data-loader worker processes (and faiss threads)")
    precision: str = _key(
        "fp32", "fp32, or autocast in bf16 / fp16 (loss math stays fp32)", _registry("engine.step", "PRECISIONS")
    )
    channels_last: bool = _key(True, "channels_last memory format for CNN backbones on CUDA")
    compile: bool = _key(False, "torch.compile the backbone (CUDA)")
    tensorboard: bool = _key(False, "also write TensorBoard scalars to <run>/tensorboard")
    plots: bool = _key(True, "write learning curves and a 2-D embedding map to the run folder")
    sync_bn: bool = _key(
        False, "SyncBatchNorm for trainable backbone BatchNorm under torchrun on CUDA (CPU ranks keep their own)"
    )
    max_nonfinite: int = _key(20, "stop the run after this many consecutive non-finite losses")
    checkpoint_minutes: float = _key(
        30.0, "also save the position inside an epoch every this many minutes (0: only at epoch ends and on signals)"
    )
    resume: str = _key(
        "",
        "auto: continue <save_path>/<dataset>/<save_name> when its checkpoints/last.pt exists, else start it there "
        "(--resume also takes a checkpoint or run folder)",
        ("", "auto"),
    )

    # --- data ----------------------------------------------------------------------------------------
    augmentation: str = _key("base", "training augmentation", _registry("datasets.transforms", "AUGMENTATIONS"))
    image_decoder: str = _key(
        "torchvision", "image decoding: uint8 tensors (faster) or PIL", _registry("datasets.transforms", "DECODERS")
    )
    resolution: int = _key(224, "crop size of training and evaluation images")
    batch_size: int = _key(90, "images per (global) training batch")
    samples_per_class: int = _key(2, "images per class draw in a batch")
    data_sampler: str = _key("class_random", "batch sampler", _registry("datasets.samplers", "SAMPLERS"))
    iterations_per_epoch: int = _key(0, "batches per epoch; 0: floor(train images / batch_size)")
    val_classes: float = _key(0.0, "fraction of training classes held out as a validation split (0: none)")
    test_classes: float = _key(0.5, "folder data without train/: fraction of the classes (sorted last) that test")
    eval_batch_size: int = _key(128, "images per batch when embedding evaluation images")
    synthetic_classes: int = _key(32, "synthetic benchmark: number of classes (half train, half test)")
    synthetic_images_per_class: int = _key(40, "synthetic benchmark: images per class")
    synthetic_image_size: int = _key(64, "synthetic benchmark: side of the generated images in pixels")

    # --- model ---------------------------------------------------------------------------------------
    arch: str = _key("resnet50.tv_in1k", "backbone: any timm model name, or bninception")
    pretrained: bool = _key(True, "start from ImageNet weights (timm hub cache, or pretrained_path)")
    pretrained_path: str = _key("", "local weights file for the backbone (no download)")
    pooling: str = _key("avgmax", "pooling of CNN feature maps", _registry("architectures.embedding", "POOLINGS"))
    embed_dim: int = _key(512, "embedding dimension")
    embed_norm: str = _key("layernorm", "embedding normalisation", _registry("architectures.embedding", "EMBED_NORMS"))
    frozen_bn: bool = _key(True, "freeze backbone BatchNorm statistics (affine parameters still train)")

    # --- base proxy loss -----------------------------------------------------------------------------
    loss: str = _key("proxy_anchor", loss_help(), LOSS_NAMES)
    dada: bool = _key(True, "wrap the base loss with the DADA criterion (false: plain baseline)")
    # the keys each base loss reads are declared once, in its registry entry (criteria/registry.py), and
    # join the schema below
    proxy_init_std: float = _key(0.125, "proxies start as N(0, std^2)")
    proxy_lr: float = _key(0.04, "learning rate of the proxies")

    # --- DADA ----------------------------------------------------------------------------------------
    proxy_loss_weight: float = _key(0.0075, "r: weight of the proxy loss in the generator objective")
    adv_weight: float = _key(1.0, "gamma: weight of the adversarial terms in the generator objective")
    class_ratio: float = _key(0.01, "rho: share of the class-discrepancy part (1 - rho: domain part)")
    discrepancy_weight: float = _key(0.5, "kappa: weight of the discrepancy inside the class part")
    discrepancy: str = _key(
        "nwd", "discrepancy between sample and mix predictions", _registry("criteria.discriminators", "DISCREPANCIES")
    )
    normalize_features: bool = _key(True, "L2-normalise the discriminators' inputs (samples, mixes, proxies)")
    mix_mode: str = _key("random", "sample-proxy mixup", _registry("criteria.mixing", "MIX_MODES"))
    shift_scale: float = _key(1.0, "shift scale s of the random mixup, -1 < s <= 1")
    mix_alpha: float = _key(0.5, "Beta(a, b) of the sample-proxy mix coefficient: a")
    mix_beta: float = _key(0.5, "Beta(a, b) of the sample-proxy mix coefficient: b")
    pos_class_mix: bool = _key(False, "add mixes of positive pairs to the batch (needs samples_per_class >= 2)")
    domain_hidden: int = _key(512, "hidden width of the 3-way domain discriminator")
    domain_out_bn: bool = _key(False, "BatchNorm on the domain discriminator's output")
    class_hidden1: int = _key(512, "first hidden width of the class discrepancy predictor")
    class_hidden2: int = _key(128, "second hidden width of the class discrepancy predictor")
    class_out_bn: bool = _key(False, "BatchNorm on the class predictor's output")
    dropout: float = _key(0.5, "dropout of the class predictor")
    activation: str = _key(
        "relu", "activation of the discriminators", _registry("criteria.discriminators", "ACTIVATIONS")
    )
    disc_lr: float = _key(5e-4, "learning rate of the discriminators (and of the learnable mix weights)")
    disc_decay: float = _key(1e-4, "weight decay of the discriminators")
    d_step: int = _key(3, "discriminator updates per batch")
    g_step: int = _key(1, "generator updates per batch")

    # --- optimisation --------------------------------------------------------------------------------
    epochs: int = _key(50, "training epochs")
    optim: str = _key(
        "adam",
        "backbone optimizer (proxies and discriminators always use Adam)",
        _registry("engine.optim", "OPTIMIZERS"),
    )
    lr: float = _key(1e-4, "backbone and embedding-head learning rate")
    weight_decay: float = _key(4e-4, "backbone weight decay (coupled L2 for adam, decoupled for adamw)")
    scheduler: str = _key(
        "step", "learning-rate schedule of all three optimizers", _registry("engine.optim", "SCHEDULES")
    )
    lr_step: int = _key(5, "step schedule: epochs between decays")
    lr_gamma: float = _key(0.5, "step / multi schedule: decay factor")
    lr_milestones: list[int] = _key([20, 45, 70], "multi schedule: epochs (counted after warm-up) of decay")
    lr_linear_start: float = _key(1.0, "linear schedule: learning-rate factor of the first epoch")
    lr_linear_end: float = _key(0.01, "linear schedule: final learning-rate factor")
    lr_linear_length: int = _key(20, "linear schedule: epochs (counted after warm-up) to reach the final factor")
    warmup: int = _key(1, "epochs that train only the embedding head and the proxies")
    d_warmup: int = _key(1, "epochs that train only the discriminators (without DADA: nothing, as the reference)")

    # --- evaluation ----------------------------------------------------------------------------------
    evaluation_metrics: list[str] = _key(
        ["recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1", "map@r"],
        "metrics computed at evaluation (In-Shop default: recall@1/10/20/30/40/50, map@r)",
    )
    eval_every: int = _key(1, "evaluate every this many epochs (and after the last)")
    eval_backend: str = _key("auto", "nearest-neighbour backend", _registry("metrics.compute", "BACKENDS"))
    eval_normalize: bool = _key(True, "L2-normalise the evaluation embeddings (cosine retrieval)")
    best_metric: str = _key("recall@1", "metric that selects checkpoints/best.pt")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _with_loss_keys(core: type) -> type:
    """The schema: the core keys plus every key a registered loss reads (`criteria.registry.LOSS_KEYS`, each
    declared once, with its default, help and choices, in the loss's registry entry)."""
    declared = {f.name for f in dataclasses.fields(core)}
    extra = [
        (key.name, type(key.default), _key(key.default, key.help, key.choices))
        for key in LOSS_KEYS.values()
        if key.name not in declared
    ]
    schema = dataclasses.make_dataclass("Config", extra, bases=(core,))
    schema.__module__, schema.__doc__ = __name__, core.__doc__
    return schema


Config = _with_loss_keys(_CoreConfig)

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}


def unknown_key_message(key: str, where: str, other_names: Sequence[str] = ()) -> str:
    """'unknown key' naming the valid key (the schema's or one of `other_names`) it most likely means."""
    close = suggest_key(key, [*FIELDS, *other_names])
    hint = f"; did you mean '{close}'?" if close else "; see python main.py --help"
    return f"unknown key '{key}' in {where}{hint}"


KEY_TYPES: dict[str, Any] = typing.get_type_hints(Config)


def _parse_bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise UserError(f"key '{key}' expects true or false, got '{text}'")


def _coerce_scalar(value: Any, kind: type, key: str) -> Any:
    """Check (YAML values) or convert (command-line strings) one value to the schema type."""
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            return _parse_bool(value, key)
        try:
            return kind(value)
        except ValueError:
            raise UserError(f"key '{key}' expects {kind.__name__}, got '{value}'") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"key '{key}' expects {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def coerce(key: str, value: Any) -> Any:
    """Convert a YAML value or command-line string(s) to the type the schema declares for `key`."""
    kind = KEY_TYPES[key]
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            value = [value]
        if key == "evaluation_metrics":
            from metrics import parse_metric_list

            value = parse_metric_list([str(v) for v in value])
        return [_coerce_scalar(v, item, key) for v in value]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return _coerce_scalar(value, kind, key)


def field_choices(f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The allowed values of a schema entry (None: any value of its type)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def validate(cfg: Config) -> Config:
    """Reject impossible values with one line naming the key; returns `cfg` for chaining."""
    for name, f in FIELDS.items():
        choices = field_choices(f)
        if choices and getattr(cfg, name) not in choices:
            raise UserError(f"key '{name}' must be one of {', '.join(map(str, choices))}; got '{getattr(cfg, name)}'")
    positive = (
        "batch_size",
        "samples_per_class",
        "epochs",
        "embed_dim",
        "resolution",
        "eval_every",
        "eval_batch_size",
        "domain_hidden",
        "class_hidden1",
        "class_hidden2",
        "d_step",
        "g_step",
        "synthetic_classes",
        "synthetic_images_per_class",
        "synthetic_image_size",
        "max_nonfinite",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"key '{name}' must be at least 1; got {getattr(cfg, name)}")
    non_negative = (
        "kernels",
        "iterations_per_epoch",
        "warmup",
        "d_warmup",
        "lr",
        "weight_decay",
        "proxy_lr",
        "disc_lr",
        "disc_decay",
        "proxy_init_std",
        "lr_step",
        "checkpoint_minutes",
    )
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise UserError(f"key '{name}' must not be negative; got {getattr(cfg, name)}")
    if cfg.resume == "auto" and not cfg.save_name:
        raise UserError("resume: auto needs an explicit save_name (the run folder it continues or starts)")
    if cfg.batch_size % cfg.samples_per_class:
        raise UserError(
            f"key 'batch_size' ({cfg.batch_size}) must be divisible by samples_per_class ({cfg.samples_per_class})"
        )
    if cfg.pos_class_mix and cfg.samples_per_class < 2:
        raise UserError("key 'pos_class_mix' needs samples_per_class >= 2")
    if not -1.0 < cfg.shift_scale <= 1.0:
        raise UserError(f"key 'shift_scale' must satisfy -1 < s <= 1; got {cfg.shift_scale}")
    if not 0.0 <= cfg.val_classes < 1.0:
        raise UserError(f"key 'val_classes' must be a fraction in [0, 1); got {cfg.val_classes}")
    if not 0.0 < cfg.test_classes < 1.0:
        raise UserError(f"key 'test_classes' must be a fraction in (0, 1); got {cfg.test_classes}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"key 'dropout' must be in [0, 1); got {cfg.dropout}")
    if cfg.mix_alpha <= 0 or cfg.mix_beta <= 0:
        raise UserError("keys 'mix_alpha' and 'mix_beta' must be positive (Beta distribution parameters)")
    if cfg.scheduler == "step" and cfg.lr_step < 1:
        raise UserError("key 'lr_step' must be at least 1 with scheduler: step")
    if cfg.scheduler == "linear" and not (
        0.0 < cfg.lr_linear_start <= 1.0 and 0.0 <= cfg.lr_linear_end <= 1.0 and cfg.lr_linear_length >= 1
    ):
        raise UserError("keys 'lr_linear_start' (0, 1], 'lr_linear_end' [0, 1] and 'lr_linear_length' >= 1")
    check_loss_config(cfg)  # the values of the keys the base loss reads, and dada with several centres per class
    if cfg.dataset == "synthetic" and cfg.synthetic_classes < 4:
        raise UserError("key 'synthetic_classes' must be at least 4 (half train, half test)")
    _check_query_gallery_metrics(cfg)
    from metrics import canonical_metric_name

    cfg.best_metric = canonical_metric_name(cfg.best_metric)
    if cfg.best_metric not in cfg.evaluation_metrics:
        raise UserError(f"key 'best_metric' ({cfg.best_metric}) must be one of evaluation_metrics")
    return cfg


def _check_query_gallery_metrics(cfg: Config) -> None:
    """Canonical metric names; on query -> gallery data (In-Shop, folder/csv data with query and gallery) the
    default list becomes the reference's In-Shop list, and metrics that do not exist query -> gallery (the
    metric registry's `query_gallery`: clustering and the legacy metrics) are refused."""
    from metrics.names import QUERY_GALLERY_METRICS, canonical_metric_name, resolve_metric

    cfg.evaluation_metrics = [canonical_metric_name(m) for m in cfg.evaluation_metrics]
    clustering = [m for m in cfg.evaluation_metrics if not resolve_metric(m)[0].query_gallery]
    if not clustering or not _evaluates_query_gallery(cfg.dataset, cfg.source_path):
        return
    if cfg.evaluation_metrics != FIELDS["evaluation_metrics"].default_factory():
        where = "In-Shop" if cfg.dataset == "inshop" else f"{cfg.dataset} data with query and gallery splits"
        raise UserError(
            f"key 'evaluation_metrics': {', '.join(clustering)} do not exist for {where} (query -> gallery); "
            "leave them out (e.g. --evaluation_metrics recall@1 recall@10 map@r)"
        )
    cfg.evaluation_metrics = list(QUERY_GALLERY_METRICS)  # the default list, as the reference's In-Shop one


def _evaluates_query_gallery(dataset: str, source_path: str) -> bool:
    """Whether the data is evaluated query -> gallery (the dataset registry's `query_gallery`)."""
    from datasets.build import has_query_gallery

    return has_query_gallery(dataset, source_path)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a flat YAML mapping; a missing or malformed file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def config_from_dict(values: dict[str, Any], where: str = "the configuration") -> Config:
    """Build a validated `Config` from a mapping of schema keys (unknown keys are a `UserError`)."""
    cfg = Config()
    apply_overrides(cfg, values, where)
    return validate(cfg)


def apply_overrides(cfg: Config, values: dict[str, Any], where: str) -> None:
    """Set the keys of one source (this project's key names only) on `cfg`."""
    for key, value in values.items():
        if key not in FIELDS:
            raise UserError(unknown_key_message(key, where))
        setattr(cfg, key, coerce(key, value))


def write_yaml(cfg: Config, path: Path) -> None:
    """Write the resolved configuration (every key) as YAML."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
