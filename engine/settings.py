"""The configuration keys of a run and of its optimisation, declared once with their default, help and bounds
(`utilities.settings`); the configuration package joins them to the other parts' keys."""

from __future__ import annotations

from dataclasses import dataclass

from engine.forward import PRECISIONS
from engine.optim import OPTIMIZERS, SCHEDULES
from utilities.errors import UserError
from utilities.settings import setting


@dataclass
class RunSettings:
    """Where a run writes, what it runs on, and how."""

    save_path: str = setting("runs", "root folder of the runs (<save_path>/<dataset>/<save_name>)")
    save_name: str = setting("", "run folder name; empty: a date-stamped name")
    seed: int = setting(0, "seed of sampling, augmentation, mixing draws and initialisation")
    device: str = setting("auto", "where to train: auto (CUDA when available), cuda or cpu", ("auto", "cuda", "cpu"))
    gpu: list[int] = setting([0], "CUDA device index (single-process runs; torchrun sets it per rank)")
    workers: int = setting(4, "data-loader worker processes", at_least=0, aliases=("kernels",))
    precision: str = setting("fp32", "fp32, or autocast in bf16 / fp16 (loss math stays fp32)", tuple(PRECISIONS))
    channels_last: bool = setting(True, "channels_last memory format for CNN backbones on CUDA")
    compile: bool = setting(False, "torch.compile the backbone (CUDA)")
    tensorboard: bool = setting(False, "also write TensorBoard scalars to <run>/tensorboard")
    plots: bool = setting(True, "write learning curves and a 2-D embedding map to the run folder")
    sync_bn: bool = setting(
        False, "SyncBatchNorm for trainable backbone BatchNorm under torchrun on CUDA (CPU ranks keep their own)"
    )
    max_nonfinite: int = setting(20, "stop the run after this many consecutive non-finite losses", at_least=1)
    checkpoint_minutes: float = setting(
        30.0,
        "also save the position inside an epoch every this many minutes (0: only at epoch ends and on signals)",
        at_least=0,
    )
    resume: str = setting(
        "",
        "auto: continue <save_path>/<dataset>/<save_name> when its checkpoints/last.pt exists, else start it there "
        "(--resume also takes a checkpoint or run folder)",
        ("", "auto"),
    )


@dataclass
class OptimSettings:
    """The optimizers, their learning rates and the one schedule applied to all of them (each `scheduler`
    entry of `engine.optim.SCHEDULES` checks the keys it reads)."""

    epochs: int = setting(50, "training epochs", at_least=1)
    optim: str = setting("adam", "backbone optimizer (proxies and discriminators always use Adam)", tuple(OPTIMIZERS))
    lr: float = setting(1e-4, "backbone and embedding-head learning rate", at_least=0)
    weight_decay: float = setting(4e-4, "backbone weight decay (coupled L2 for adam, decoupled for adamw)", at_least=0)
    proxy_lr: float = setting(0.04, "learning rate of the proxies", at_least=0)
    disc_lr: float = setting(5e-4, "learning rate of the discriminators (and of the learnable mix weights)", at_least=0)
    disc_decay: float = setting(1e-4, "weight decay of the discriminators", at_least=0)
    d_step: int = setting(3, "discriminator updates per batch", at_least=1)
    g_step: int = setting(1, "generator updates per batch", at_least=1)
    scheduler: str = setting("step", "learning-rate schedule of all three optimizers", tuple(SCHEDULES))
    lr_step: int = setting(5, "step schedule: epochs between decays", at_least=0)
    lr_gamma: float = setting(0.5, "step / multi schedule: decay factor")
    lr_milestones: list[int] = setting([20, 45, 70], "multi schedule: epochs (counted after warm-up) of decay")
    lr_linear_start: float = setting(1.0, "linear schedule: learning-rate factor of the first epoch")
    lr_linear_end: float = setting(0.01, "linear schedule: final learning-rate factor")
    lr_linear_length: int = setting(20, "linear schedule: epochs (counted after warm-up) to reach the final factor")
    warmup: int = setting(1, "epochs that train only the embedding head and the proxies", at_least=0)
    d_warmup: int = setting(
        1, "epochs that train only the discriminators (without DADA: nothing, as the reference)", at_least=0
    )


def check_run(cfg: RunSettings) -> None:
    """`resume: auto` names its run folder: it needs an explicit save_name."""
    if cfg.resume == "auto" and not cfg.save_name:
        raise UserError("resume: auto needs an explicit save_name (the run folder it continues or starts)")


def check_optimisation(cfg: OptimSettings) -> None:
    """The chosen schedule's own check of the keys it reads."""
    SCHEDULES[cfg.scheduler].check(cfg)
