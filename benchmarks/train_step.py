"""Seconds per training iteration: the fused DADA step, the reference's two-forward ordering, plain Proxy-Anchor.

    python benchmarks/train_step.py [--arch resnet50.tv_in1k] [--resolution 128] [--batch_size 30]
        [--iterations 10] [--device auto|cpu|cuda] [--precision fp32|bf16|fp16] [--channels_last] [--compile]
        [--threads N] [--variants fused two_forward proxy_anchor] [--output FILE.json]

All three rows use the criterion settings of ``configs/cub200.yaml`` (random backbone weights, 100 training
classes), the same initial weights and the same in-memory random batch (``batch_size / samples_per_class``
classes, two images each, as the class sampler draws them):

* ``fused``: ``train_step(..., fused=True)``: one backbone forward shared by the 3 discriminator updates and
  the generator update;
* ``two_forward``: ``train_step(..., fused=False)``: the reference ordering, a no-grad forward for the
  discriminators, then a second forward with gradient for the generator;
* ``proxy_anchor``: ``dada: false``, the plain Proxy-Anchor baseline (one forward, no discriminators).

Every variant runs one untimed warm-up iteration; then the variants take turns, iteration by iteration, so a
change of machine load hits all of them alike. The reported value is the median seconds per iteration (CUDA
is synchronised around each iteration). Prints a markdown table; ``--output`` writes
``{"fused": s, "two_forward": s, "proxy_anchor": s}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from config import Config, config_from_dict, read_yaml  # noqa: E402
from engine.step import StepContext, train_step  # noqa: E402

CUB_CONFIG = REPO_ROOT / "configs" / "cub200.yaml"
CUB_TRAIN_CLASSES = 100
VARIANTS = ("fused", "two_forward", "proxy_anchor")


@dataclass
class Variant:
    """One timed configuration: its step context and whether it runs the fused ordering."""

    name: str
    ctx: StepContext
    fused: bool


def benchmark_config(
    arch: str, resolution: int, batch_size: int, precision: str = "fp32", dada: bool = True, **extra: Any
) -> Config:
    """The CUB configuration with random weights and the benchmark's model and batch settings."""
    values = read_yaml(CUB_CONFIG)
    values.update(
        arch=arch, pretrained=False, resolution=resolution, batch_size=batch_size, precision=precision, dada=dada
    )
    values.update(extra)
    return config_from_dict(values, f"{CUB_CONFIG} with benchmark overrides")


def random_batch(
    batch_size: int, samples_per_class: int, resolution: int, n_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N(0, 1) and labels of `batch_size / samples_per_class` random classes, consecutive repeats."""
    generator = torch.Generator().manual_seed(seed)
    draws = batch_size // samples_per_class
    classes = torch.randperm(n_classes, generator=generator)[:draws] if draws <= n_classes else None
    if classes is None:
        classes = torch.randint(n_classes, (draws,), generator=generator)
    labels = classes.repeat_interleave(samples_per_class)
    images = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
    return images, labels


def build_context(cfg: Config, device: torch.device, n_classes: int, *, channels_last: bool, compile: bool):
    """Model, criterion, optimizers (and an fp16 GradScaler) as the trainer builds them, seeded identically."""
    from architectures import build_model
    from criteria import build_criterion
    from engine.optim import build_optimizers

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    criterion = build_criterion(cfg, n_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = build_optimizers(cfg, model, criterion)
    model.train()
    criterion.train()
    runner = torch.compile(model) if compile else model
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    return StepContext(
        model=runner,
        criterion=criterion,
        optimizers=optimizers,
        device=device,
        precision=cfg.precision,
        scaler=scaler,
        d_step=cfg.d_step,
        g_step=cfg.g_step,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    variants: list[Variant], images: torch.Tensor, labels: torch.Tensor, iterations: int
) -> dict[str, list[float]]:
    """Seconds of each iteration per variant, after one untimed warm-up each, variants interleaved."""
    device = variants[0].ctx.device
    for variant in variants:
        train_step(variant.ctx, images, labels, fused=variant.fused)
    _synchronize(device)
    seconds: dict[str, list[float]] = {variant.name: [] for variant in variants}
    for _ in range(iterations):
        for variant in variants:
            _synchronize(device)
            start = time.perf_counter()
            result = train_step(variant.ctx, images, labels, fused=variant.fused)
            _synchronize(device)
            seconds[variant.name].append(time.perf_counter() - start)
            if result.skipped:
                print(f"warning: {variant.name}: {result.skipped} update(s) skipped (non-finite loss)")
    return seconds


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(device)


def run_benchmark(
    arch: str = "resnet50.tv_in1k",
    resolution: int = 128,
    batch_size: int = 30,
    iterations: int = 10,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Median seconds per iteration of each requested variant, plus every sample and the settings."""
    target = resolve(device)
    channels_last = channels_last and arch != "bninception"
    dada_cfg = benchmark_config(arch, resolution, batch_size, precision)
    plain_cfg = benchmark_config(arch, resolution, batch_size, precision, dada=False)
    built = []
    for name in variants:
        cfg = plain_cfg if name == "proxy_anchor" else dada_cfg
        ctx = build_context(cfg, target, CUB_TRAIN_CLASSES, channels_last=channels_last, compile=compile)
        built.append(Variant(name, ctx, fused=name != "two_forward"))
    images, labels = random_batch(batch_size, dada_cfg.samples_per_class, resolution, CUB_TRAIN_CLASSES)
    images, labels = images.to(target), labels.to(target)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    seconds = time_variants(built, images, labels, iterations)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "medians": medians,
        "samples": seconds,
        "settings": {
            "arch": arch,
            "resolution": resolution,
            "batch_size": batch_size,
            "iterations": iterations,
            "device": str(target),
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile,
            "torch_threads": torch.get_num_threads(),
        },
    }


def markdown_table(result: dict[str, Any]) -> str:
    """One row per variant: median and min seconds per iteration, images/s, speed-up over two_forward."""
    medians, samples, settings = result["medians"], result["samples"], result["settings"]
    reference = medians.get("two_forward")
    lines = [
        f"train step, {settings['arch']} {settings['resolution']} px, batch {settings['batch_size']}, "
        f"{settings['device']}, {settings['precision']}"
        + (", channels_last" if settings["channels_last"] else "")
        + (", compiled" if settings["compile"] else "")
        + f", {settings['iterations']} timed iterations",
        "",
        "| variant | median s/iter | min s/iter | images/s | speed-up vs two_forward |",
        "|---|---|---|---|---|",
    ]
    for name, median in medians.items():
        speedup = f"{reference / median:.2f}x" if reference else "-"
        lines.append(
            f"| {name} | {median:.4f} | {min(samples[name]):.4f} | {settings['batch_size'] / median:.1f} | {speedup} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50.tv_in1k", help="backbone (any `arch` of the config)")
    parser.add_argument("--resolution", type=int, default=128, help="input side in pixels")
    parser.add_argument("--batch_size", type=int, default=30, help="images per batch (even)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per variant")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels_last", action="store_true", help="channels_last model and input")
    parser.add_argument("--compile", action="store_true", help="torch.compile the embedding network")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output", help="write {variant: median seconds per iteration} to this JSON file")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.batch_size < 2 or args.batch_size % 2 or args.resolution < 8:
        parser.error("--iterations >= 1, an even --batch_size >= 2 and --resolution >= 8 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    from utilities.errors import UserError

    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        result = run_benchmark(
            args.arch,
            args.resolution,
            args.batch_size,
            args.iterations,
            args.device,
            args.precision,
            args.channels_last,
            args.compile,
            tuple(args.variants),
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result["medians"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
