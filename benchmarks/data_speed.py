"""Decoded, augmented training images per second per worker for the CUB pipeline, on JPEG files.

    python benchmarks/data_speed.py [--images 64] [--rounds 3] [--resolution 224] [--size 500x375]
        [--gpu_rates 2500 3500] [--output FILE.json]

Writes a synthetic JPEG set at CUB's typical size (500 x 375, photo-like content: smooth shapes, texture and
sensor noise; quality 90, ~55 KB a file), then runs each pipeline in ONE process with
``torch.set_num_threads(1)`` (what one DataLoader worker does), the pipelines taking turns round by round
(so machine-load changes hit all alike); reports the median rate over the rounds.

Pipelines (all the `base` augmentation: RandomResizedCrop(224, scale (0.08, 1), bilinear) -> horizontal
flip -> ImageNet normalisation, float32 3 x 224 x 224 out):

* ``pil``: the plain torchvision-PIL pipeline (``image_decoder: pil``): PIL decode, PIL resampling,
  ToTensor, Normalize.
* ``pil_draft``: as ``pil``, but the crop box is drawn first (same generator calls) and the JPEG is decoded
  with ``Image.draft`` at 1/2, 1/4 or 1/8 scale when the crop stays >= the output size in both dimensions
  at that scale. The crop must be drawn on the full-size image, so draft may only shrink by k when the crop
  is >= k x 224 on both sides: a 500 x 375 image never qualifies (375 < 448), so on CUB it decodes at full
  size (the table's "draft used" column) and gains nothing; it would pay on large photos (SOP) or small
  crops (128 px).
* ``pil+uint8``: PIL decode, then the uint8 tensor transforms (separates the decoder from the transforms).
* ``torchvision``: the project default (``image_decoder: torchvision``): ``torchvision.io.decode_jpeg``
  (same pixels as PIL) to uint8, uint8 crop/resize with the antialiased uint8 kernel, one float op to
  normalise.
* ``*_eval`` rows: the evaluation pipeline Resize(256) -> CenterCrop(224) of both decoders.

The table gives, for each pipeline, how many worker cores sustain a GPU consuming ``--gpu_rates`` images/s
(e.g. the fused bf16 ResNet-50 step at batch 90 on an H100, ~2,500-3,500 images/s); a 16-core GPU machine
keeps ~2 cores for the training process itself. Per-core rates differ between CPUs: rerun on the GPU
machine (``benchmarks/gpu_check.sh`` does) for its numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from datasets.base import load_rgb, load_rgb_uint8  # noqa: E402
from datasets.transforms import IMAGENET, ImagePipeline, build_transform  # noqa: E402

GPU_CORES = 16
RESERVED_CORES = 2  # the training process (and its pin-memory thread) on the GPU machine


# --- synthetic JPEG files ----------------------------------------------------------------------------------


def photo_like(seed: int, width: int, height: int) -> np.ndarray:
    """A height x width x 3 uint8 image with a photo-like spectrum: smooth colour fields, texture, noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid_size = (max(width // 8, 1), max(height // 8, 1))
    mid = Image.fromarray(rng.integers(0, 256, (mid_size[1], mid_size[0], 3), dtype=np.uint8))
    mid = mid.resize((width, height), Image.BILINEAR)
    pixels = 0.7 * np.asarray(coarse, dtype=np.float32) + 0.3 * np.asarray(mid, dtype=np.float32)
    pixels += rng.normal(0.0, 6.0, pixels.shape).astype(np.float32)
    return pixels.clip(0, 255).astype(np.uint8)


def write_jpeg(path: Path, seed: int, width: int = 500, height: int = 375, quality: int = 90) -> None:
    """One synthetic photo as a JPEG file (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like(seed, width, height)).save(path, quality=quality)


def _write_one(job: tuple[str, int, int, int]) -> None:
    path, seed, width, height = job
    write_jpeg(Path(path), seed, width, height)


def write_jpegs(paths: list[Path], width: int, height: int, workers: int = 1, seed: int = 0) -> None:
    """Write every path (seeded by its position) with `workers` processes."""
    jobs = [(str(path), seed * 1_000_003 + i, width, height) for i, path in enumerate(paths)]
    if workers <= 1:
        for job in jobs:
            _write_one(job)
        return
    # a process that already holds a CUDA context must not fork workers
    cuda_live = "torch" in sys.modules and torch.cuda.is_available() and torch.cuda.is_initialized()
    context = multiprocessing.get_context("spawn") if cuda_live else None
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_write_one, jobs, chunksize=64))


def cub_layout_paths(root: Path, classes: int, train_images: int, test_images: int) -> list[Path]:
    """Paths of a CUB-style set under `root/cub200/images/NNN.class_NNN/`: the first half of the classes
    share `train_images`, the second half `test_images`, as evenly as possible."""
    half = classes // 2
    paths: list[Path] = []
    for first, count, n_classes in ((1, train_images, half), (half + 1, test_images, classes - half)):
        for offset in range(n_classes):
            per_class = count // n_classes + (offset < count % n_classes)
            number = first + offset
            folder = root / "cub200" / "images" / f"{number:03d}.class_{number:03d}"
            paths.extend(folder / f"img_{k:04d}.jpg" for k in range(per_class))
    return paths


# --- pipelines ------------------------------------------------------------------------------------------


class DraftPipeline:
    """The PIL training pipeline with JPEG DCT-domain downscaling (`Image.draft`) where it is lossless for
    the crop: the box is drawn on the full-size image first (same generator calls as RandomResizedCrop)."""

    def __init__(self, resolution: int) -> None:
        from torchvision import transforms as T

        self.crop = T.RandomResizedCrop(resolution)
        self.rest = T.Compose([T.RandomHorizontalFlip(0.5), T.ToTensor(), T.Normalize(IMAGENET.mean, IMAGENET.std)])
        self.resolution = resolution
        self.drafted = 0
        self.calls = 0

    def __call__(self, path: str) -> torch.Tensor:
        with Image.open(path) as image:
            full_width, full_height = image.size
            top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
            factor = next((k for k in (8, 4, 2) if min(height, width) >= k * self.resolution), 1)
            if factor > 1 and image.format == "JPEG":
                image.draft("RGB", (math.ceil(full_width / factor), math.ceil(full_height / factor)))
                self.drafted += int(image.size[0] < full_width)
            sx, sy = image.size[0] / full_width, image.size[1] / full_height
            image = image.convert("RGB")
        self.calls += 1
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        out = image.resize((self.resolution, self.resolution), Image.BILINEAR, box=box)
        return self.rest(out)


def _loaded(loader: Callable[[str], Any], transform: ImagePipeline) -> Callable[[str], torch.Tensor]:
    return lambda path: transform(loader(path))


def build_pipelines(resolution: int) -> dict[str, Callable[[str], torch.Tensor]]:
    """Path -> normalised tensor, by pipeline name (see the module docstring)."""
    pil_train = build_transform("base", True, resolution, IMAGENET, "pil")
    uint8_train = build_transform("base", True, resolution, IMAGENET, "torchvision")
    return {
        "pil": _loaded(load_rgb, pil_train),
        "pil_draft": DraftPipeline(resolution),
        "pil+uint8": _loaded(load_rgb, uint8_train),
        "torchvision": _loaded(load_rgb_uint8, uint8_train),
        "pil_eval": _loaded(load_rgb, build_transform("base", False, resolution, IMAGENET, "pil")),
        "torchvision_eval": _loaded(load_rgb_uint8, build_transform("base", False, resolution, IMAGENET)),
    }


def measure(
    pipelines: dict[str, Callable[[str], torch.Tensor]], paths: list[str], rounds: int, seed: int = 0
) -> dict[str, list[float]]:
    """Images per second of every pipeline in every round, one thread, pipelines interleaved per round."""
    torch.set_num_threads(1)
    for pipeline in pipelines.values():
        for path in paths[:4]:
            pipeline(path)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_number in range(rounds):
        for name, pipeline in pipelines.items():
            torch.manual_seed(seed + round_number)
            start = time.perf_counter()
            for path in paths:
                out = pipeline(path)
            rates[name].append(len(paths) / (time.perf_counter() - start))
            assert out.dtype == torch.float32 and out.dim() == 3
    return rates


def cores_needed(per_core: float, gpu_rate: float) -> float:
    return gpu_rate / per_core


def markdown_table(result: dict[str, Any]) -> str:
    rates, gpu_rates = result["rates"], result["gpu_rates"]
    baseline = rates.get("pil")
    head = "| pipeline | images/s per core | ms/image | vs pil |"
    head += "".join(f" cores for {rate:,.0f} img/s |" for rate in gpu_rates)
    lines = [
        f"data pipeline, {result['images']} JPEGs {result['size']}, crop {result['resolution']}, "
        f"1 thread, median of {result['rounds']} rounds; GPU machine: {GPU_CORES} cores, "
        f"{RESERVED_CORES} kept for the training process",
        "",
        head,
        "|---|---|---|---|" + "---|" * len(gpu_rates),
    ]
    for name, rate in rates.items():
        speedup = f"{rate / baseline:.2f}x" if baseline and not name.endswith("_eval") else "-"
        cells = []
        for gpu_rate in gpu_rates:
            cores = cores_needed(rate, gpu_rate)
            cells.append(f"{cores:.1f}" + ("" if cores <= GPU_CORES - RESERVED_CORES else " (too many)"))
        lines.append(f"| {name} | {rate:.0f} | {1000 / rate:.2f} | {speedup} | " + " | ".join(cells) + " |")
    drafted = result.get("draft_used")
    if drafted is not None:
        lines += ["", f"pil_draft: draft (DCT downscale) applicable to {drafted:.1%} of the crops at this size"]
    return "\n".join(lines)


def run_data_speed(
    folder: Path,
    images: int = 64,
    rounds: int = 3,
    resolution: int = 224,
    size: tuple[int, int] = (500, 375),
    gpu_rates: tuple[float, ...] = (2500.0, 3500.0),
    pipelines: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Write `images` JPEGs into `folder` (if not there), measure, return rates and settings."""
    paths = [folder / f"photo_{i:04d}.jpg" for i in range(images)]
    missing = [p for p in paths if not p.is_file()]
    write_jpegs(missing, *size, seed=len(paths))
    available = build_pipelines(resolution)
    chosen = {name: available[name] for name in (pipelines or tuple(available))}
    samples = measure(chosen, [str(p) for p in paths], rounds)
    result: dict[str, Any] = {
        "rates": {name: statistics.median(values) for name, values in samples.items()},
        "samples": samples,
        "images": images,
        "rounds": rounds,
        "resolution": resolution,
        "size": f"{size[0]}x{size[1]}",
        "mean_file_kb": float(np.mean([p.stat().st_size for p in paths]) / 1024),
        "gpu_rates": list(gpu_rates),
    }
    draft = chosen.get("pil_draft")
    if isinstance(draft, DraftPipeline) and draft.calls:
        result["draft_used"] = draft.drafted / draft.calls
    return result


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="JPEG files decoded per pipeline and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--size", type=parse_size, default=(500, 375), help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--gpu_rates", type=float, nargs="+", default=[2500.0, 3500.0])
    parser.add_argument("--folder", help="where to write/reuse the JPEGs (default: a temporary folder)")
    parser.add_argument("--output", help="write the rates and settings to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch)
        result = run_data_speed(folder, args.images, args.rounds, args.resolution, args.size, tuple(args.gpu_rates))
    print(markdown_table(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
