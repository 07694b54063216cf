"""Did-you-mean for an unknown key or option name: the field's common names first, then string distance.

String distance alone points the wrong way for the names people bring from other code bases
(`learning_rate` is closer, as a string, to `nca_learn_temperature` than to `lr`), so a table of those
common names, mapped to this project's keys, is consulted first. A name of the table is suggested only
where its key is valid (each script passes its own names), and a misspelt common name (`lerning_rate`) is
found by string distance among the table's names too.

>>> suggest_key("learning_rate", ["lr", "nca_learn_temperature"])
'lr'
>>> suggest_key("lerning_rate", ["lr", "nca_learn_temperature"])
'lr'
>>> suggest_key("batch_sise", ["batch_size", "lr"])
'batch_size'
>>> suggest_key("num_workers", ["batch_size"]) is None
True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

COMMON_KEY_NAMES: dict[str, str] = {
    # learning rate
    "learning_rate": "lr",
    "lerning_rate": "lr",
    "base_lr": "lr",
    "base_learning_rate": "lr",
    "initial_lr": "lr",
    "init_lr": "lr",
    # weight decay
    "wd": "weight_decay",
    "l2": "weight_decay",
    "l2_weight": "weight_decay",
    # data-loader worker processes
    "num_workers": "workers",
    "n_workers": "workers",
    "nworkers": "workers",
    "num_worker": "workers",
    "dataloader_workers": "workers",
    # epochs
    "n_epochs": "epochs",
    "max_epochs": "epochs",
    "num_epochs": "epochs",
    "nb_epochs": "epochs",
    "epoch": "epochs",
    "train_epochs": "epochs",
    # embedding size
    "embedding_size": "embed_dim",
    "embed_size": "embed_dim",
    "embedding_dim": "embed_dim",
    "embedding_dimension": "embed_dim",
    "emb_dim": "embed_dim",
    "emb_size": "embed_dim",
    "dim": "embed_dim",
    # batch size
    "bs": "batch_size",
    "batch": "batch_size",
    "batchsize": "batch_size",
    "train_batch_size": "batch_size",
    "test_batch_size": "eval_batch_size",
    "val_batch_size": "eval_batch_size",
    # other common names
    "backbone": "arch",
    "model": "arch",
    "architecture": "arch",
    "optimizer": "optim",
    "lr_scheduler": "scheduler",
    "random_seed": "seed",
    "image_size": "resolution",
    "img_size": "resolution",
    "input_size": "resolution",
    "crop_size": "resolution",
    "data_root": "source_path",
    "data_dir": "source_path",
    "data_path": "source_path",
    "dataset_path": "source_path",
    "output_dir": "save_path",
    "log_dir": "save_path",
    "checkpoint_dir": "save_path",
    "run_name": "save_name",
    "experiment_name": "save_name",
    "samples_per_label": "samples_per_class",
    "m_per_class": "samples_per_class",
    "n_instances": "samples_per_class",
    "num_instances": "samples_per_class",
    "sampler": "data_sampler",
    "metrics": "evaluation_metrics",
    "eval_metrics": "evaluation_metrics",
    "amp": "precision",
    "mixed_precision": "precision",
    "warmup_epochs": "warmup",
    "gpus": "gpu",
    "gpu_ids": "gpu",
    "cuda": "device",
}
"""Names common in metric-learning and deep-learning code -> this project's key (for main.py; other scripts
receive a suggestion only where the key is one of their options)."""


def _normalised(name: str) -> str:
    return name.strip().lstrip("-").replace("-", "_").lower()


def suggest_key(key: str, valid_keys: Iterable[str]) -> str | None:
    """The valid key `key` most likely means, or None: the common-name table first, then string distance
    over the valid keys and the table's names whose key is valid."""
    valid = list(valid_keys)
    wanted = _normalised(key)
    target = COMMON_KEY_NAMES.get(wanted)
    if target in valid:
        return target
    aliases = {name: target for name, target in COMMON_KEY_NAMES.items() if target in valid}
    close = difflib.get_close_matches(wanted, [*valid, *aliases], n=1, cutoff=0.5)
    if not close:
        return None
    return close[0] if close[0] in valid else aliases[close[0]]
