"""The run folder: where a run writes its configuration, metrics, summary, checkpoints and plots.

```
<save_path>/<dataset>/<save_name>/
    config.yaml            the resolved configuration
    metrics.csv            one row per epoch: epoch, losses, learning rates, time, skipped updates, metrics
    summary.json           initial (untrained), last and best metrics, best epoch
    checkpoints/last.pt    everything needed to resume
    checkpoints/best.pt    model + criterion of the best evaluation
    curves.png, embedding_map.png
```
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import yaml

from utilities.files import atomic_write


def new_run_folder(save_path: str, dataset: str, save_name: str) -> Path:
    """A folder that did not exist: `<save_name>`, else `<save_name>_1`, `_2`, ... (never overwrites a run)."""
    parent = Path(save_path) / dataset
    name = save_name or time.strftime("%Y%m%d-%H%M%S")
    candidate, suffix = parent / name, 0
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = parent / f"{name}_{suffix}"


def write_config(values: dict[str, Any], path: Path) -> None:
    """The resolved configuration (every key, in schema order) as YAML."""
    text = yaml.safe_dump(values, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    """Rewrite the whole CSV from the history (so a resumed run never keeps rows of a lost epoch)."""
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
