"""The training loop: epochs of adversarial steps, evaluation, checkpoints, logs, resume, plots.

Per epoch (docs/reference.md §1.10): re-seed from (seed, epoch); for each batch one `train_step`; step the schedules
unless the epoch was a warm-up; evaluate every `eval_every` epochs; write `metrics.csv`, `summary.json`,
`checkpoints/last.pt` (and `best.pt` on improvement). A resumed run restarts at the epoch after the last
completed one and ends with exactly the metrics of an uninterrupted run on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from termcolor import colored
from torch import nn

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import build_training_data
from engine.evaluation import Evaluation, evaluate_model, evaluation_splits
from engine.forward import ForwardPolicy
from engine.grids import WORST_QUERIES_FILE, WORST_QUERIES_TOP, write_worst_queries
from engine.interrupts import StopControl, TrainingStopped
from engine.optim import build_optimizers, build_schedulers, learning_rates, schedule_steps_after
from engine.run_folder import new_run_folder, write_config, write_metrics_csv, write_summary
from engine.runtime import resolve_device
from engine.settings import RunSettings
from engine.step import StepContext, train_step
from utilities.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown_distributed,
)
from utilities.errors import UserError
from utilities.logs import progress, stop_tee, tee_to_file
from utilities.seeding import derive_seed, rng_state, seed_everything, set_rng_state

LOG_FILE = "train.log"
"""Everything rank 0 prints, in the run folder."""

if TYPE_CHECKING:  # annotations only: the configuration package sits above the engine
    from config import Config


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


@dataclass
class RunState:
    """What a run carries from epoch to epoch (all of it goes into `last.pt`)."""

    epoch: int = 0  # next epoch to train
    history: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    nonfinite_streak: int = 0


@dataclass(frozen=True)
class Resume:
    """A run to continue: its checkpoint file (`last.pt`), the checkpoint read from it, and the network with the
    checkpoint's weights, built by the one checkpoint -> model path (`config.checkpoints.resume_point`)."""

    path: str
    state: dict[str, Any]
    network: nn.Module


@dataclass(kw_only=True)
class Run:
    """The live objects of a training run."""

    cfg: Config
    folder: Path | None
    device: torch.device
    dist: DistInfo
    model: nn.Module
    wrapped: nn.Module
    criterion: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler | None
    splits: dict[str, Any]
    state: RunState
    partial: dict[str, Any] | None = None  # the position inside `state.epoch` of a mid-epoch checkpoint
    stopper: StopControl | None = None

    @property
    def adversarial(self) -> bool:
        return bool(getattr(self.criterion, "adversarial", False))


def _checkpoint_state(run: Run, full: bool) -> dict[str, Any]:
    state: dict[str, Any] = {
        "config": run.cfg.to_dict(),
        "epoch": run.state.epoch,
        "model": run.model.state_dict(),
        "criterion": run.criterion.state_dict(),
        "metrics": dict(run.state.last),
    }
    if full:
        state.update(
            optimizers={k: v.state_dict() for k, v in run.optimizers.items()},
            schedulers={k: v.state_dict() for k, v in run.schedulers.items()},
            scaler=run.scaler.state_dict() if run.scaler is not None else {},
            run_state={k: v for k, v in dataclasses.asdict(run.state).items() if k != "epoch"},
        )
    return state


def _restore(run: Run, checkpoint: dict[str, Any]) -> None:
    """Everything of the checkpoint but the network's weights (`Resume.network` holds them already)."""
    run.criterion.load_state_dict(checkpoint["criterion"])
    for name, optimizer in run.optimizers.items():
        optimizer.load_state_dict(checkpoint["optimizers"][name])
    for name, scheduler in run.schedulers.items():
        scheduler.load_state_dict(checkpoint["schedulers"][name])
    if run.scaler is not None and checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    stored = checkpoint["run_state"]
    expected = {f.name for f in dataclasses.fields(RunState)} - {"epoch"}
    if set(stored) != expected:
        missing, unknown = sorted(expected - set(stored)), sorted(set(stored) - expected)
        raise UserError(
            f"--resume: the checkpoint's run state does not match this version (missing {missing}, unknown {unknown})"
        )
    run.state = RunState(epoch=checkpoint["epoch"], **stored)
    run.partial = checkpoint.get("in_epoch")


def _criterion_generators(criterion: nn.Module) -> dict[str, torch.Generator]:
    """The criterion's own random generators (e.g. the seeded Beta source of the mixup), by attribute path."""
    found: dict[str, torch.Generator] = {}
    for name, module in criterion.named_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}.{attribute}"] = value
            elif isinstance(getattr(value, "generator", None), torch.Generator):
                found[f"{name}.{attribute}.generator"] = value.generator
    return found


def _position_state(run: Run, loader, epoch: int, position: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of a position inside `epoch` (on rank 0; None elsewhere): the full state plus what the rest
    of the epoch needs to draw exactly what an uninterrupted run draws (every rank's global RNGs, the criterion's
    generators, the loader's generator, the next batch and the epoch's running loss sums)."""
    randomness = {
        "global": rng_state(run.device),
        "criterion": {k: g.get_state() for k, g in _criterion_generators(run.criterion).items()},
        "loader": loader.generator.get_state(),
    }
    per_rank = gather_objects(randomness, run.dist)
    if not run.dist.is_main:
        return None
    state = _checkpoint_state(run, full=True)
    sums = {k: v.detach().cpu() for k, v in position["sums"].items()}
    state["in_epoch"] = {**position, "epoch": epoch, "sums": sums, "randomness": per_rank}
    return state


def _restore_position(run: Run, loader, partial: dict[str, Any]) -> None:
    """Set this rank's generators to what they were at the saved position (rank 0's if the rank count changed)."""
    stored = partial["randomness"]
    randomness = stored[run.dist.rank] if len(stored) == run.dist.world_size else stored[0]
    set_rng_state(randomness["global"], run.device)
    generators = _criterion_generators(run.criterion)
    if set(generators) != set(randomness["criterion"]):
        raise UserError("--resume: the mid-epoch checkpoint's criterion generators do not match this criterion")
    for name, generator in generators.items():
        generator.set_state(randomness["criterion"][name])
    loader.generator.set_state(randomness["loader"])


def _build_run(cfg: Config, resume: Resume | None, folder: Path | None = None) -> Run:
    from architectures import build_model, input_spec_for
    from compat.weights import REFERENCE_READER
    from criteria import build_criterion
    from datasets import build_datasets

    probe = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    dist = init_distributed(probe)
    device = resolve_device(cfg.device, cfg.gpu, dist.local_rank if dist.enabled else None)
    splits = build_datasets(cfg, input_spec_for(cfg.arch))
    seed_everything(cfg.seed)
    policy = ForwardPolicy(device, cfg.precision, cfg.channels_last)
    model = policy.place_model(resume.network if resume else build_model(cfg, reference=REFERENCE_READER))
    criterion = build_criterion(cfg, splits["train"].num_classes).to(device)
    wrapped: nn.Module = model
    if dist.enabled:
        if cfg.sync_bn and not cfg.frozen_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            wrapped = model
        elif cfg.sync_bn and not cfg.frozen_bn and dist.is_main:
            print(
                "sync_bn: SyncBatchNorm needs CUDA devices; on the CPU each rank keeps its own BatchNorm statistics",
                file=sys.stderr,
                flush=True,
            )
        wrapped = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.warmup > cfg.d_warmup,
        )
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    optimizers = build_optimizers(cfg, model, criterion)
    schedulers = build_schedulers(cfg, optimizers)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    run = Run(
        cfg=cfg,
        folder=None,
        device=device,
        dist=dist,
        model=model,
        wrapped=wrapped,
        criterion=criterion,
        optimizers=optimizers,
        schedulers=schedulers,
        scaler=scaler,
        splits=splits,
        state=RunState(),
    )
    if resume:
        # optimizers and modules copy the stored tensors onto their own device when loading
        _restore(run, resume.state)
        run.folder = Path(resume.path).resolve()
        run.folder = run.folder if run.folder.is_dir() else run.folder.parent.parent
    elif dist.is_main and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        run.folder = folder.resolve()
    elif dist.is_main:
        run.folder = new_run_folder(cfg.save_path, cfg.dataset, cfg.save_name)
    run.folder = Path(broadcast_object(str(run.folder), dist))
    return run


def _evaluate(run: Run, use_val: bool, drawn: bool = False) -> Evaluation:
    """The evaluation of the model; with `plots`, the search of the evaluation `drawn` at the end (the last one)
    also keeps what `worst_queries.png` shows."""
    cfg = run.cfg
    return evaluate_model(
        run.model,
        run.splits,
        evaluation_splits(run.splits, use_val),
        metrics=cfg.evaluation_metrics,
        device=run.device,
        backend=cfg.eval_backend,
        batch_size=cfg.eval_batch_size,
        workers=min(cfg.workers, 8),
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        normalize=cfg.eval_normalize,
        dist=run.dist,
        keep_top=WORST_QUERIES_TOP if cfg.plots and drawn else 0,
    )


def _train_epoch(run: Run, loader, batches, epoch: int) -> dict[str, float]:
    """One epoch (or its rest, when `run.partial` holds a saved position inside it); the loss means."""
    cfg = run.cfg
    seed_everything(derive_seed(cfg.seed, epoch))
    run.criterion.set_epoch(epoch)
    partial, run.partial = run.partial, None
    warmup, d_warmup = epoch < cfg.warmup, epoch < cfg.d_warmup
    if d_warmup and not run.adversarial:
        # only the discriminators train in a d_warmup epoch: without DADA nothing does, as in the reference's
        # baseline (`loss: oproxy`), so a baseline and a DADA run share their schedule
        return {"skipped_updates": 0}
    sums: dict[str, torch.Tensor] = {}
    steps, skipped, earlier_seconds = 0, 0, 0.0
    if partial is not None:
        _restore_position(run, loader, partial)
        sums = {k: v.to(run.device) for k, v in partial["sums"].items()}
        steps, skipped, earlier_seconds = partial["steps"], partial["skipped"], partial["seconds"]
    batches.set_epoch(epoch, start=steps)
    ctx = StepContext(
        model=run.wrapped,
        criterion=run.criterion,
        optimizers=run.optimizers,
        device=run.device,
        precision=cfg.precision,
        scaler=run.scaler,
        d_step=cfg.d_step,
        g_step=cfg.g_step,
        dist=run.dist,
    )
    run.model.train()
    run.criterion.train()
    phase = "discriminators only" if d_warmup else ("head + proxies only" if warmup else "full")
    total = len(batches.sampler)
    bar = progress(
        loader,
        desc=f"epoch {epoch} ({phase})",
        total=total,
        initial=steps,
        unit="img",
        unit_scale=cfg.batch_size,
        enabled=run.dist.is_main,
    )
    started = time.perf_counter()
    for images, labels, _ in bar:
        images = ForwardPolicy(run.device, cfg.precision, cfg.channels_last).place_inputs(images)
        labels = labels.to(run.device, non_blocking=True)
        result = train_step(ctx, images, labels, warmup=warmup, d_warmup=d_warmup)
        steps += 1
        skipped += result.skipped
        run.state.nonfinite_streak = run.state.nonfinite_streak + 1 if result.skipped else 0
        if run.state.nonfinite_streak >= cfg.max_nonfinite:
            raise TrainingDiverged(
                f"stopped: {run.state.nonfinite_streak} consecutive iterations with a non-finite loss in epoch "
                f"{epoch}; the last good checkpoint is {run.folder / 'checkpoints' / 'last.pt'}"
            )
        for key, value in result.logs.items():
            sums[key] = sums.get(key, 0) + value.detach()
        if steps % 10 == 1:
            bar.set_postfix({k: f"{float(v) / steps:.4f}" for k, v in sums.items() if k.endswith("_loss")})
        decision = run.stopper.poll(run.dist) if run.stopper is not None else None
        if decision is not None and decision.save:
            seconds = earlier_seconds + time.perf_counter() - started
            position = {"steps": steps, "skipped": skipped, "seconds": seconds, "sums": sums}
            state = _position_state(run, loader, epoch, position)
            path = run.folder / "checkpoints" / "last.pt"
            if state is not None:
                save_checkpoint(state, path)
            run.stopper.saved()
            barrier(run.dist)
            if decision.signum:
                raise TrainingStopped(decision.signum, epoch, steps, total, str(path))
    means = {key: float(value) / max(steps, 1) for key, value in sums.items()}
    means["skipped_updates"] = skipped
    means["earlier_seconds"] = earlier_seconds
    return means


def _maybe_improved(state: RunState, metrics: dict[str, float], metric: str, epoch: int) -> bool:
    value = metrics.get(metric)
    if value is None or (state.best and value <= state.best.get(metric, -math.inf)):
        return False
    state.best, state.best_epoch = dict(metrics), epoch
    return True


def _summary(run: Run) -> dict[str, Any]:
    return {
        "initial": run.state.initial,
        "last": run.state.last,
        "best": run.state.best,
        "best_epoch": run.state.best_epoch,
        "best_metric": run.cfg.best_metric,
        "epochs_completed": run.state.epoch,
    }


def _print_epoch(epoch: int, row: dict[str, Any], metrics: dict[str, float], improved: bool) -> None:
    losses = "  ".join(f"{k}={row[k]:.4f}" for k in ("discriminator_loss", "generator_loss", "proxy_loss") if k in row)
    shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    star = colored(" *best*", "green") if improved else ""
    print(colored(f"[epoch {epoch}]", "cyan"), f"{row['time']:.1f}s", losses, "|", shown + star, flush=True)


EvaluationHook = Callable[[int, dict[str, float]], None]


def train(
    cfg: Config,
    resume: Resume | None = None,
    *,
    folder: Path | None = None,
    on_evaluation: EvaluationHook | None = None,
) -> dict[str, Any]:
    """Train according to `cfg` (or continue the run of `resume`); returns the summary.

    `folder`: the run folder of a new run (created if missing; default: a new `<save_path>/<dataset>/<save_name>[_N]`).
    `on_evaluation(epoch, metrics)`: called on rank 0 after each epoch's evaluation, once its files are written
    (the metrics of the validation split where there is one); an exception it raises ends the run there.

    SIGTERM, SIGUSR1 and SIGINT stop every rank at the same iteration, after the position inside the epoch is
    saved in `checkpoints/last.pt` (`engine.interrupts.TrainingStopped` is raised); `checkpoint_minutes`
    also saves that position every so many minutes.
    """
    run = _build_run(cfg, resume, folder)
    run.stopper = StopControl(cfg.checkpoint_minutes, run.device)
    run.stopper.install()
    try:
        return _train(run, on_evaluation)
    finally:
        run.stopper.restore()
        if run.dist.is_main:
            stop_tee()
        shutdown_distributed()


def _train(run: Run, on_evaluation: EvaluationHook | None = None) -> dict[str, Any]:
    cfg, state = run.cfg, run.state
    main = run.dist.is_main
    folder = run.folder
    checkpoints = folder / "checkpoints"
    writer = _tensorboard(cfg, folder) if main else None
    if main:
        tee_to_file(folder / LOG_FILE)
        write_config(cfg.to_dict(), folder / "config.yaml")
        print(colored(f"run folder: {folder}", "cyan"), flush=True)
        if run.partial is not None:
            print(f"resuming epoch {state.epoch} after iteration {run.partial['steps']}", flush=True)
    use_val = "val" in run.splits
    loader, batches = build_training_data(cfg, run.splits["train"], run.device, run.dist)
    last: Evaluation | None = None  # the last evaluation, drawn at the end
    if state.epoch == 0 and not state.history:
        last = _evaluate(run, use_val, drawn=cfg.epochs == 0)
        state.initial = last.values
        state.history.append({"epoch": -1, **state.initial})
        if main:
            print(colored("[before training]", "cyan"), "  ".join(f"{k}={v:.4f}" for k, v in state.initial.items()))
    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        means = _train_epoch(run, loader, batches, epoch)
        earlier = means.pop("earlier_seconds", 0.0)  # the epoch's time before a stop, when resumed inside it
        if schedule_steps_after(epoch, cfg.warmup, cfg.d_warmup):
            for scheduler in run.schedulers.values():
                scheduler.step()
        row: dict[str, Any] = {"epoch": epoch, **means, **learning_rates(run.optimizers)}
        metrics: dict[str, float] = {}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            last = _evaluate(run, use_val, drawn=epoch + 1 == cfg.epochs)
            metrics = state.last = last.values
        row["time"] = earlier + time.perf_counter() - start
        row.update(metrics)
        state.history.append(row)
        state.epoch = epoch + 1
        improved = _maybe_improved(state, metrics, cfg.best_metric, epoch)
        run.stopper.saved()
        if main:
            save_checkpoint(_checkpoint_state(run, full=True), checkpoints / "last.pt")
            if improved:
                save_checkpoint(_checkpoint_state(run, full=False), checkpoints / "best.pt")
            write_metrics_csv(state.history, folder / "metrics.csv")
            write_summary(_summary(run), folder / "summary.json")
            if cfg.plots:
                from engine.plots import plot_curves

                plot_curves(state.history, cfg.best_metric, folder / "curves.png")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, int | float):
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            _print_epoch(epoch, row, metrics, improved)
            if on_evaluation is not None and metrics:
                on_evaluation(epoch, metrics)
        barrier(run.dist)
    summary = _summary(run)
    if use_val and state.best_epoch >= 0:
        summary["test_of_best"] = _test_of_best(run, checkpoints / "best.pt")
    if main:
        write_summary(summary, folder / "summary.json")
        if cfg.plots and last is not None:
            _plot_map(run, last.embedded, folder / "embedding_map.png")
            write_worst_queries(last.ranking, last.embedded, run.splits, folder / WORST_QUERIES_FILE)
        if writer is not None:
            writer.close()
    return summary


def _test_of_best(run: Run, best_path: Path) -> dict[str, float]:
    """With a validation split, the selected model's metrics on the test split (reported, never selected on).

    Rank 0 reads best.pt and shares the weights (other machines may not see its disk); every rank evaluates.
    """
    weights = load_checkpoint(best_path)["model"] if run.dist.is_main else None
    run.model.load_state_dict(broadcast_object(weights, run.dist))
    return _evaluate(run, use_val=False).values


def _plot_map(run: Run, embedded: dict[str, Any], path: Path) -> None:
    from engine.plots import plot_embedding_map

    name = "query" if "query" in embedded else next(iter(embedded))
    embeddings, labels = embedded[name]
    plot_embedding_map(
        embeddings.cpu().numpy(), labels, path, title=f"{run.cfg.dataset} {name} embeddings (t-SNE)", seed=run.cfg.seed
    )


def _tensorboard(cfg: RunSettings, folder: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        message = "key 'tensorboard' is true but the tensorboard package is missing: pip install tensorboard"
        raise UserError(message) from None
    return SummaryWriter(str(folder / "tensorboard"))
