"""After a search: Optuna's parameter importances (search_importances.csv) and the optimisation history
(search_history.png), with a few lines for report.md."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from utilities.errors import one_line
from utilities.files import atomic_write


def write_search_outputs(sweep, out: Path) -> list[str]:
    study = sweep.search
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    lines = [f"## Search: {len(complete)} trials complete, {len(pruned)} pruned (objective on validation classes)"]
    best = sweep.runs.user_attrs.get("best_params")
    if best is not None:
        lines.append("")
        lines.append(f"Best parameters ({sweep.runs.user_attrs.get('best_trial')}), re-run over the seeds above: "
                     + ", ".join(f"`{k}={v}`" for k, v in best.items()))  # fmt: skip
    if len(complete) < 2:
        return ["\n".join(lines)]
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        lines += ["", f"Parameter importances unavailable: {one_line(exc)}"]
        importances = {}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["parameter", "importance"])
            writer.writerows(importances.items())

    if importances:
        atomic_write(out / "search_importances.csv", write)
        lines += ["", "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importances.items()]
    _plot_history(study, out / "search_history.png")
    written = "; importances: search_importances.csv" if importances else ""
    lines += ["", f"Optimisation history: search_history.png{written}."]
    return ["\n".join(lines)]


def _plot_history(study: optuna.Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study)
    fig = ax.figure
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
