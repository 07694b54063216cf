"""The training curves picture: written for any history, without warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

from engine.plots import plot_curves


def test_curves_of_epochs_without_losses_are_drawn_without_a_warning(tmp_path: Path) -> None:
    history = [{"epoch": -1, "recall@1": 0.1}, {"epoch": 0, "recall@1": 0.2, "generator_loss": ""}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" fails here
        plot_curves(history, "recall@1", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    plot_curves([*history, {"epoch": 1, "recall@1": 0.3, "proxy_loss": 1.5}], "recall@1", tmp_path / "more.png")
    assert (tmp_path / "more.png").stat().st_size > 0
