"""Figures written to the run folder: learning curves and a 2-D map of the test embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Losses per epoch (left) and the selection metric per evaluated epoch (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [row["epoch"] for row in history]
    for key, label in (
        ("generator_loss", "generator L_G"),
        ("discriminator_loss", "discriminator L_D"),
        ("proxy_loss", "proxy loss"),
    ):
        values = [row.get(key, "") for row in history]
        points = [(e, float(v)) for e, v in zip(epochs, values) if v not in ("", None)]
        if points:
            left.plot(*zip(*points), marker="o", ms=3, label=label)
    left.set_xlabel("epoch")
    left.set_title("training losses (epoch means)")
    if left.lines:  # no loss yet (a plain loss's warm-up epochs): no legend, no matplotlib warning
        left.legend(fontsize=8)
    points = [(row["epoch"], float(row[metric])) for row in history if row.get(metric, "") not in ("", None)]
    if points:
        right.plot(*zip(*points), marker="o", ms=3, color="tab:green")
    right.set_xlabel("epoch (-1: before training)")
    right.set_title(metric)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embedding_map(
    embeddings: np.ndarray, labels: np.ndarray, path: Path, *, title: str, seed: int = 0, max_points: int = 2000
) -> None:
    """t-SNE of (a class-stratified subsample of) the embeddings, coloured by class."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    if len(labels) > max_points:
        keep = np.sort(rng.choice(len(labels), size=max_points, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    perplexity = float(min(30, max(5, len(labels) // 10)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=8, alpha=0.85)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
