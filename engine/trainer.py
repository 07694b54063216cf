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
from typing import Any

import torch
from termcolor import colored
from torch import nn
from tqdm import tqdm

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import build_train_loader
from engine.evaluation import evaluate_model, evaluation_splits
from engine.grids import WORST_QUERIES_FILE, write_worst_queries
from engine.optim import build_optimizers, build_schedulers, learning_rates, schedule_steps_after
from engine.run_folder import new_run_folder, write_metrics_csv, write_summary
from engine.runtime import resolve_device
from engine.step import StepContext, train_step
from utilities.config import Config, write_yaml
from utilities.distributed import DistInfo, barrier, broadcast_object, init_distributed, shutdown_distributed
from utilities.errors import UserError
from utilities.seeding import derive_seed, seed_everything


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
    run.model.load_state_dict(checkpoint["model"])
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


def _build_run(cfg: Config, resume: str | None, resume_state: dict[str, Any] | None, folder: Path | None = None) -> Run:
    from architectures import build_model, input_spec_for
    from criteria import build_criterion
    from datasets import build_datasets

    probe = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    dist = init_distributed(probe)
    device = resolve_device(cfg.device, cfg.gpu, dist.local_rank if dist.enabled else None)
    splits = build_datasets(cfg, input_spec_for(cfg.arch))
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    criterion = build_criterion(cfg, splits["train"].num_classes).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
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
        _restore(run, resume_state if resume_state is not None else load_checkpoint(resume))
        run.folder = Path(resume).resolve()
        run.folder = run.folder if run.folder.is_dir() else run.folder.parent.parent
    elif dist.is_main and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        run.folder = folder.resolve()
    elif dist.is_main:
        run.folder = new_run_folder(cfg.save_path, cfg.dataset, cfg.save_name)
    run.folder = Path(broadcast_object(str(run.folder), dist))
    return run


def _evaluate(run: Run, use_val: bool) -> tuple[dict[str, float], dict[str, Any]]:
    cfg = run.cfg
    return evaluate_model(
        run.model,
        run.splits,
        evaluation_splits(run.splits, use_val),
        metrics=cfg.evaluation_metrics,
        device=run.device,
        backend=cfg.eval_backend,
        batch_size=cfg.eval_batch_size,
        workers=min(cfg.kernels, 8),
        precision=cfg.precision,
        normalize=cfg.eval_normalize,
        dist=run.dist,
    )


def _train_epoch(run: Run, loader, batches, epoch: int) -> dict[str, float]:
    cfg = run.cfg
    seed_everything(derive_seed(cfg.seed, epoch))
    run.criterion.set_epoch(epoch)
    batches.set_epoch(epoch)
    warmup, d_warmup = epoch < cfg.warmup, epoch < cfg.d_warmup
    if d_warmup and not run.adversarial:
        # only the discriminators train in a d_warmup epoch: without DADA nothing does, as in the reference's
        # baseline (`loss: oproxy`), so a baseline and a DADA run share their schedule
        return {"skipped_updates": 0}
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
    sums: dict[str, torch.Tensor] = {}
    steps, skipped = 0, 0
    phase = "discriminators only" if d_warmup else ("head + proxies only" if warmup else "full")
    progress = tqdm(
        loader, desc=f"epoch {epoch} ({phase})", leave=False, disable=not run.dist.is_main, dynamic_ncols=True
    )
    for images, labels, _ in progress:
        images = images.to(run.device, non_blocking=True)
        if run.device.type == "cuda" and cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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
            progress.set_postfix({k: f"{float(v) / steps:.4f}" for k, v in sums.items() if k.endswith("_loss")})
    means = {key: float(value) / max(steps, 1) for key, value in sums.items()}
    means["skipped_updates"] = skipped
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
    resume: str | None = None,
    resume_state: dict[str, Any] | None = None,
    *,
    folder: Path | None = None,
    on_evaluation: EvaluationHook | None = None,
) -> dict[str, Any]:
    """Train according to `cfg` (or continue the run of `resume`, whose checkpoint may be passed already
    loaded as `resume_state`); returns the summary.

    `folder`: the run folder of a new run (default: a new `<save_path>/<dataset>/<save_name>`).
    `on_evaluation(epoch, metrics)`: called on rank 0 after each epoch's evaluation, once its files are written
    (the metrics of the validation split where there is one); an exception it raises ends the run there.
    """
    run = _build_run(cfg, resume, resume_state, folder)
    try:
        return _train(run, on_evaluation)
    finally:
        shutdown_distributed()


def _train(run: Run, on_evaluation: EvaluationHook | None = None) -> dict[str, Any]:
    cfg, state = run.cfg, run.state
    main = run.dist.is_main
    folder = run.folder
    checkpoints = folder / "checkpoints"
    writer = _tensorboard(cfg, folder) if main else None
    if main:
        write_yaml(cfg, folder / "config.yaml")
        print(colored(f"run folder: {folder}", "cyan"), flush=True)
    use_val = "val" in run.splits
    from datasets import build_batch_sampler

    sampler = build_batch_sampler(
        cfg.data_sampler,
        run.splits["train"].labels,
        cfg.batch_size,
        cfg.samples_per_class,
        cfg.seed,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
        num_batches=cfg.iterations_per_epoch or None,
    )
    loader, batches = build_train_loader(
        run.splits["train"], sampler, seed=cfg.seed, workers=cfg.kernels, device=run.device, dist=run.dist
    )
    embedded: dict[str, Any] = {}
    if state.epoch == 0 and not state.history:
        state.initial, embedded = _evaluate(run, use_val)
        state.history.append({"epoch": -1, **state.initial})
        if main:
            print(colored("[before training]", "cyan"), "  ".join(f"{k}={v:.4f}" for k, v in state.initial.items()))
    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        means = _train_epoch(run, loader, batches, epoch)
        if schedule_steps_after(epoch, cfg.warmup, cfg.d_warmup):
            for scheduler in run.schedulers.values():
                scheduler.step()
        row: dict[str, Any] = {"epoch": epoch, **means, **learning_rates(run.optimizers)}
        metrics: dict[str, float] = {}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            metrics, embedded = _evaluate(run, use_val)
            state.last = metrics
        row["time"] = time.perf_counter() - start
        row.update(metrics)
        state.history.append(row)
        state.epoch = epoch + 1
        improved = _maybe_improved(state, metrics, cfg.best_metric, epoch)
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
        if cfg.plots and embedded:
            _plot_map(run, embedded, folder / "embedding_map.png")
            write_worst_queries(embedded, run.splits, folder / WORST_QUERIES_FILE)  # the last evaluation's
        if writer is not None:
            writer.close()
    return summary


def _test_of_best(run: Run, best_path: Path) -> dict[str, float]:
    """With a validation split, the selected model's metrics on the test split (reported, never selected on).

    Rank 0 reads best.pt and shares the weights (other machines may not see its disk); every rank evaluates.
    """
    weights = load_checkpoint(best_path)["model"] if run.dist.is_main else None
    run.model.load_state_dict(broadcast_object(weights, run.dist))
    test_metrics, _ = _evaluate(run, use_val=False)
    return test_metrics


def _plot_map(run: Run, embedded: dict[str, Any], path: Path) -> None:
    from engine.plots import plot_embedding_map

    name = "query" if "query" in embedded else next(iter(embedded))
    embeddings, labels = embedded[name]
    plot_embedding_map(
        embeddings.cpu().numpy(), labels, path, title=f"{run.cfg.dataset} {name} embeddings (t-SNE)", seed=run.cfg.seed
    )


def _tensorboard(cfg: Config, folder: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        message = "key 'tensorboard' is true but the tensorboard package is missing: pip install tensorboard"
        raise UserError(message) from None
    return SummaryWriter(str(folder / "tensorboard"))
