"""A sweep worker: claims the sweep's waiting trials one at a time, runs each as main.py would, records its result.

`run_worker(spec, index)` is the whole unit of work of a process (or of a cluster job): any number of them, on
one machine or many, cooperate through the storage. A claim moves a trial from WAITING to RUNNING, which the
storage grants to one worker only. While a trial runs its worker writes a heartbeat; a trial whose worker is gone
(no heartbeat for `grace` seconds, or a dead process on this host) is failed and re-enqueued by one worker, and
its replacement resumes the run folder's `checkpoints/last.pt`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments import storage as st
from experiments.results import latest_trials
from experiments.space import suggest
from experiments.spec import (
    BEST_SETTING,
    SweepSpec,
    first_difference,
    run_config,
    run_tokens,
    setting_name,
    settings,
)
from utilities.errors import UserError, one_line

POLL_SECONDS = 2.0
ATTR_RESULT, ATTR_WORKER, ATTR_HEARTBEAT = "result", "worker", "heartbeat"


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_min_trials=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


@dataclass
class Claimed:
    study: optuna.Study
    trial: FrozenTrial
    search: bool


class Sweep:
    """The studies of one sweep as a worker sees them."""

    def __init__(self, spec: SweepSpec, index: int = 0) -> None:
        self.spec = spec
        self.out = Path(spec.out)
        self.storage = st.open_storage(spec.out, spec.storage)
        self.prefix = spec.study_prefix
        self.runs = st.study(self.storage, self.prefix, st.RUNS)
        self.search: optuna.Study | None = None
        if spec.search is not None:
            base = run_config(spec, {}, spec.seeds[0])
            self.search = st.study(
                self.storage,
                self.prefix,
                st.SEARCH,
                sampler=optuna.samplers.TPESampler(seed=spec.seeds[0] + index),
                pruner=make_pruner(spec.pruner, base.epochs),
            )
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    def studies(self) -> list[tuple[optuna.Study, bool]]:
        return [(self.runs, False)] + ([(self.search, True)] if self.search is not None else [])

    def check_recorded(self, given: dict[str, Any]) -> None:
        """Record the sweep's fingerprint in the storage, or refuse one that differs from the recorded."""
        recorded = self.runs.user_attrs.get("sweep")
        if recorded is None:
            self.runs.set_user_attr("sweep", given)
            return
        difference = first_difference(recorded, given)
        if difference is not None:
            raise UserError(
                f"study {self.prefix}.{st.RUNS} in the storage holds another sweep: {difference} differs; "
                "use another --out (or --study)"
            )

    # ---- enqueueing (one worker only, through storage.once) ----

    def enqueue_initial(self) -> None:
        if self.search is not None:
            if st.once(self.storage, self.prefix, "enqueue.search"):
                for slot in range(self.spec.trials):
                    attrs = {"setting": f"trial{slot}", "seed": self.spec.seeds[0], "folder": f"search/trial{slot}"}
                    self.search.enqueue_trial({}, user_attrs=attrs)
            return
        if st.once(self.storage, self.prefix, "enqueue.runs"):
            for values in settings(self.spec.grid):
                self._enqueue_runs(setting_name(values), values)

    def _enqueue_runs(self, name: str, values: dict[str, Any]) -> None:
        for seed in self.spec.seeds:
            attrs = {"setting": name, "seed": seed, "values": values, "folder": f"runs/{name}/seed{seed}"}
            self.runs.enqueue_trial({}, user_attrs=attrs)

    def retry_failed(self) -> int:
        """Enqueue once more every run whose latest trial failed (once per failed trial); returns how many."""
        count = 0
        for study, search in self.studies():
            for trial in latest_trials(study):
                if trial.state == TrialState.FAIL and st.once(self.storage, self.prefix, f"retry.{trial._trial_id}"):
                    self._reenqueue(study, trial, search)
                    count += 1
        return count

    def _reenqueue(self, study: optuna.Study, trial: FrozenTrial, search: bool) -> None:
        attrs = {k: trial.user_attrs[k] for k in ("setting", "seed", "values", "folder") if k in trial.user_attrs}
        study.enqueue_trial(dict(trial.params) if search else {}, user_attrs=attrs)

    def enqueue_final(self) -> bool:
        """After the search: its best parameters over the seeds (one worker enqueues them)."""
        if self.search is None or self.runs.get_trials(deepcopy=False):
            return False
        trials = self.search.get_trials(deepcopy=False)
        if len(trials) < self.spec.trials or any(not t.state.is_finished() for t in trials):
            return False
        if not st.once(self.storage, self.prefix, "enqueue.final"):
            return False
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            self.runs.set_user_attr("error", "no search trial completed: nothing to re-run over the seeds")
            return False
        best = max(complete, key=lambda t: t.value)
        self.runs.set_user_attr("best_params", dict(best.params))
        self.runs.set_user_attr("best_trial", best.user_attrs.get("setting"))
        self._enqueue_runs(BEST_SETTING, dict(best.params))
        return True

    # ---- claiming, running, taking over ----

    def claim(self) -> Claimed | None:
        for study, search in self.studies():
            for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                try:
                    granted = self.storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
                except optuna.exceptions.UpdateFinishedTrialError:
                    granted = False
                if granted:
                    self.storage.set_trial_user_attr(trial._trial_id, ATTR_WORKER, self.identity)
                    self.storage.set_trial_user_attr(trial._trial_id, ATTR_HEARTBEAT, time.time())
                    return Claimed(study, self.storage.get_trial(trial._trial_id), search)
        return None

    def take_over_lost(self) -> bool:
        for study, search in self.studies():
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if self.is_lost(trial) and st.once(self.storage, self.prefix, f"takeover.{trial._trial_id}"):
                    worker = trial.user_attrs.get(ATTR_WORKER, "?")
                    result = {"error": f"worker {worker} lost; the run was taken over by {self.identity}"}
                    try:
                        self.storage.set_trial_user_attr(trial._trial_id, ATTR_RESULT, result)
                        self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        continue  # it finished meanwhile: not lost after all
                    self._reenqueue(study, trial, search)
                    return True
        return False

    def is_lost(self, trial: FrozenTrial) -> bool:
        host, _, pid = str(trial.user_attrs.get(ATTR_WORKER, "")).rpartition(":")
        # on this host: a dead process, or this very process (which is not running it, since it is looking: an
        # earlier process of the same id, as restarted containers reuse ids, left it)
        local = host == socket.gethostname() and pid.isdigit()
        if local and (int(pid) == os.getpid() or not _alive(int(pid))):
            return True
        beat = trial.user_attrs.get(ATTR_HEARTBEAT)
        if beat is None:
            beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        return time.time() - float(beat) > self.spec.grace

    def all_enqueued(self) -> bool:
        """Whether every run of the sweep is in the storage (another worker may be enqueueing them right now)."""
        runs = {t.user_attrs.get("folder") for t in self.runs.get_trials(deepcopy=False)}
        if self.search is None:
            return len(runs) >= len(settings(self.spec.grid)) * len(self.spec.seeds)
        if len(self.search.get_trials(deepcopy=False)) < self.spec.trials:
            return False
        return len(runs) >= len(self.spec.seeds) or "error" in self.runs.user_attrs

    def any_running(self) -> bool:
        return any(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for study, _ in self.studies())

    def execute(self, claimed: Claimed) -> bool:
        """Run a claimed trial to its end; record its result and state. Returns False when it failed."""
        from config.checkpoints import resume_point
        from engine.interrupts import TrainingStopped
        from engine.trainer import train
        from experiments.distributed import train_on_processes

        trial_id, attrs = claimed.trial._trial_id, claimed.trial.user_attrs
        folder = self.out / attrs["folder"]
        live = optuna.trial.Trial(claimed.study, trial_id) if claimed.search else None
        values = suggest(live, self.spec.search or {}) if live is not None else attrs.get("values", {})
        resumable = (folder / "checkpoints" / "last.pt").is_file()
        start = time.perf_counter()
        state, result = TrialState.COMPLETE, {}
        with Heartbeat(self.storage, trial_id, self.spec.heartbeat):
            try:
                cfg = run_config(self.spec, values, int(attrs["seed"]))
                hook = _pruning_hook(live, cfg.best_metric) if live is not None else None
                if self.spec.gpus_per_run > 1:
                    tokens = run_tokens(self.spec, values, int(attrs["seed"]))
                    continued = str(folder) if resumable else None
                    processes, threads = self.spec.gpus_per_run, self.spec.threads
                    summary = train_on_processes(
                        processes, folder, continued, tokens, threads, on_evaluation=hook, metric=cfg.best_metric
                    )
                else:
                    resume = resume_point(folder, cfg) if resumable else None
                    summary = train(cfg, resume=resume, folder=folder, on_evaluation=hook)
                result = result_of(summary, cfg.val_classes > 0)
            except TrainingStopped as stop:
                self._hand_over(claimed, stop)
                raise
            except optuna.TrialPruned:
                state, result = TrialState.PRUNED, result_of(_read_summary(folder), True, pruned=True)
            except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
                state, result = TrialState.FAIL, {"error": one_line(exc)}
        result["seconds"] = round(time.perf_counter() - start, 3)
        value = result.get("objective")
        if state == TrialState.COMPLETE and value is None:
            state, result["error"] = TrialState.FAIL, "the run ended without an evaluation of best_metric"
        self.storage.set_trial_user_attr(trial_id, ATTR_RESULT, result)
        try:
            if state == TrialState.COMPLETE:
                claimed.study.tell(claimed.trial.number, value)
            else:
                claimed.study.tell(claimed.trial.number, state=state)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError) as exc:
            print(f"sweep: trial {claimed.trial.number} could not be recorded ({one_line(exc)})", flush=True)
        return state != TrialState.FAIL

    def _hand_over(self, claimed: Claimed, stop: Exception) -> None:
        """A run stopped by a signal (preemption, a time limit, Ctrl-C): enqueued again at once, so that the next
        worker (the requeued job, the same command) resumes it from the position saved in `last.pt`."""
        result = {"error": f"{one_line(stop)}; continued by the next worker"}
        self.storage.set_trial_user_attr(claimed.trial._trial_id, ATTR_RESULT, result)
        self.storage.set_trial_state_values(claimed.trial._trial_id, TrialState.FAIL)
        self._reenqueue(claimed.study, claimed.trial, claimed.search)


def result_of(summary: dict[str, Any], validation: bool, pruned: bool = False) -> dict[str, Any]:
    """The recorded result: test metrics of the selected model, with a validation split also those that selected it."""
    best = summary.get("best") or {}
    metric = summary.get("best_metric")
    result: dict[str, Any] = {"best_epoch": summary.get("best_epoch", -1), "objective": best.get(metric)}
    if validation:
        result["val"] = dict(best)
        result["metrics"] = dict(summary.get("test_of_best") or {}) if not pruned else {}
    else:
        result["metrics"] = dict(best)
    return result


def _read_summary(folder: Path) -> dict[str, Any]:
    import json

    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _pruning_hook(trial: optuna.trial.Trial, metric: str):
    """`on_evaluation` of a search's run, in this process (`train`) or reading its `metrics.csv` (under torchrun):
    reports `metric` at step `epoch`; raises `optuna.TrialPruned` when the pruner stops the trial."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(metric)
        if value is None:
            return
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    return report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Writes the trial's heartbeat every `interval` seconds from a background thread while the run lasts."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                self.storage.set_trial_user_attr(self.trial_id, ATTR_HEARTBEAT, time.time())

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_worker(spec: SweepSpec, index: int = 0, cuda_device: str | None = None) -> int:
    """Run trials of the sweep until none is left to run or wait for; returns the number that failed here.

    Plain, picklable arguments: a process, a torchrun-free cluster job or submitit can call it as it is.
    """
    if cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_device
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    from experiments.results import write_outputs

    sweep = Sweep(spec, index)
    failures = 0
    while True:
        claimed = sweep.claim()
        if claimed is not None:
            failures += not sweep.execute(claimed)
            write_outputs(spec, sweep)
        elif sweep.enqueue_final() or sweep.take_over_lost():
            continue
        elif sweep.any_running() or not sweep.all_enqueued():
            time.sleep(POLL_SECONDS)
        else:
            return failures
