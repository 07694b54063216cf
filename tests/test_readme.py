"""The README names every registered extension (a registration that the documentation forgot fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from architectures import SPECIAL_BACKBONES
from criteria.registry import LOSSES, loss_table
from datasets import AUGMENTATIONS, DATASETS, SAMPLERS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
REGISTRIES = {
    "loss": LOSSES,
    "dataset": DATASETS,
    "augmentation": AUGMENTATIONS,
    "data_sampler": SAMPLERS,
    "arch": SPECIAL_BACKBONES,
}


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_readme_names_every_registered_value(key: str) -> None:
    missing = [name for name in REGISTRIES[key] if not re.search(rf"(?<![\w@.]){re.escape(name)}(?![\w@])", README)]
    assert not missing, f"README.md does not mention {key} value(s) {missing}"


def test_readme_holds_the_loss_table_of_the_registry() -> None:
    assert loss_table() in README, "README.md's loss table differs from the registry's:\n" + loss_table()
