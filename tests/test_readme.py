"""The README and docs/: the README stays short and links every page; the documentation names every registered
extension and holds the tables generated from the registries (a registration that the documentation forgot,
or a table that drifted, fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from architectures import SPECIAL_BACKBONES
from config.schema import key_table
from criteria.registry import LOSSES, loss_table
from datasets import AUGMENTATIONS, DATASETS, SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
DOCUMENTATION = "\n".join([README, *DOCS.values()])
REGISTRIES = {
    "loss": LOSSES,
    "dataset": DATASETS,
    "augmentation": AUGMENTATIONS,
    "data_sampler": SAMPLERS,
    "arch": SPECIAL_BACKBONES,
}


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_documentation_names_every_registered_value(key: str) -> None:
    pattern = r"(?<![\w@.]){}(?![\w@])"
    missing = [name for name in REGISTRIES[key] if not re.search(pattern.format(re.escape(name)), DOCUMENTATION)]
    assert not missing, f"README.md and docs/ do not mention {key} value(s) {missing}"


def test_training_docs_hold_the_loss_table_of_the_registry() -> None:
    assert loss_table() in DOCS["training.md"], "docs/training.md's loss table differs:\n" + loss_table()


def test_training_docs_hold_the_table_of_every_key() -> None:
    assert key_table() in DOCS["training.md"], "docs/training.md's key table differs: python -m config"


def test_readme_is_short_and_links_every_page() -> None:
    assert len(README.splitlines()) <= 200
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", README))
    assert linked == set(DOCS)


def test_relative_links_resolve() -> None:
    for name, text in [("README.md", README), *((f"docs/{doc}", body) for doc, body in DOCS.items())]:
        folder = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
            assert (folder / target).exists(), f"{name} links to {target}, which does not exist"
