"""The GPU check behind ``bash benchmarks/gpu_check.sh [--small]``: tests, step timings, evaluation, end to end.

Parts (each one a row group of the printed markdown table; a part that cannot run says why in its row):

1. ``pytest -m gpu tests``: the CUDA paths of the criterion, the kNN backends and the training step under
   bf16 and fp16 (on a machine without CUDA they are reported as skipped).
2. Seconds per training iteration of the CUB configuration (ResNet-50, 224 px, batch 90, random weights,
   in-memory tensors): the reference's two-forward ordering in float32, the fused step in float32, the fused
   step in bf16 with channels_last, and the same compiled with ``torch.compile``.
3. The full evaluation (the configs' metric lists, torch kNN backend) of a CUB-sized (5,924 x 512) and an
   SOP-sized (60,502 x 512) embedding set.
4. Data: per-core images/s of the default (torchvision) and the PIL training pipeline on 500 x 375 JPEGs,
   and the cores that feed the measured bf16 step rate.
5. ``main.py --config configs/cub200.yaml`` for two epochs (real data loader + evaluation) on a CUB-sized
   synthetic JPEG set written on the spot (5,864 train / 5,924 test images, 500 x 375, 200 classes).

``--small`` shrinks every size (test_resnet backbone, 32-64 px, a few images) so the whole check runs in well
under a minute on a laptop CPU; the test suite runs it that way. Results go to ``$OUT/gpu_check.json`` when
``OUT`` is set (or ``--output``). Missing optional packages are installed with pip when a registry answers;
otherwise ``termcolor`` (colours only) is replaced by a plain stub and parts needing anything else are
skipped with the reason in the table.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# import name -> pip name; the parts that need each (termcolor can be stubbed: it only colours text)
PACKAGES = {
    "yaml": "pyyaml",
    "timm": "timm",
    "PIL": "pillow",
    "torchvision": "torchvision",
    "termcolor": "termcolor",
    "tqdm": "tqdm",
    "sklearn": "scikit-learn",
    "pytest": "pytest",
}
NEEDS = {
    "tests": ("yaml", "timm", "pytest", "PIL", "torchvision"),
    "step": ("yaml", "timm", "PIL", "torchvision"),
    "eval": ("yaml",),
    "data": ("yaml", "PIL", "torchvision"),
    "end_to_end": ("yaml", "timm", "PIL", "torchvision", "termcolor", "tqdm"),
}
STUB_TERMCOLOR = "def colored(text, *args, **kwargs):\n    return str(text)\n\n\ncprint = print\n"


@dataclass
class Sizes:
    """Every size of the check; `small()` is the CPU test's."""

    arch: str = "resnet50.tv_in1k"
    resolution: int = 224
    batch_size: int = 90
    iterations: int = 20
    compile: bool = True
    cub_eval: tuple[int, int, int] = (5924, 100, 512)  # items, classes, dim
    sop_eval: tuple[int, int, int] = (60502, 11316, 512)
    data_images: int = 64
    data_rounds: int = 3
    e2e_classes: int = 200
    e2e_train: int = 5864
    e2e_test: int = 5924
    e2e_size: tuple[int, int] = (500, 375)
    e2e_overrides: list[str] = field(default_factory=lambda: ["--kernels", "16"])
    test_paths: list[str] = field(default_factory=list)  # empty: every test file that has gpu-marked tests

    @classmethod
    def small(cls) -> Sizes:
        return cls(
            arch="test_resnet",
            resolution=32,
            batch_size=8,
            iterations=2,
            compile=False,
            cub_eval=(600, 30, 64),
            sop_eval=(2000, 400, 64),
            data_images=6,
            data_rounds=1,
            e2e_classes=8,
            e2e_train=16,
            e2e_test=16,
            e2e_size=(64, 48),
            e2e_overrides=[
                "--kernels",
                "2",
                "--arch",
                "test_resnet",
                "--resolution",
                "32",
                "--batch_size",
                "8",
                "--eval_batch_size",
                "16",
                "--embed_dim",
                "32",
                "--domain_hidden",
                "16",
                "--class_hidden1",
                "16",
                "--class_hidden2",
                "8",
            ],  # fmt: skip
            test_paths=["tests/engine/test_gpu.py"],
        )


@dataclass
class Report:
    """Table rows (part, item, value, note) and the JSON payload."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, part: str, item: str, value: str, note: str = "") -> None:
        self.rows.append((part, item, value, note))
        print(f"  [{part}] {item}: {value} {note}".rstrip(), flush=True)

    def table(self) -> str:
        lines = ["| part | item | value | note |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


# --- environment ----------------------------------------------------------------------------------------


def missing_modules(names: list[str]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_packages(report: Report, scratch: Path) -> tuple[set[str], dict[str, str]]:
    """Install what is missing (quietly, giving up fast without a registry); stub termcolor if need be.

    Returns the modules still missing and the environment for subprocesses (PYTHONPATH with the stub).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    missing = missing_modules(list(PACKAGES))
    if missing:
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "0"]
        command += ["--timeout", "5", *(PACKAGES[name] for name in missing)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=240)
            outcome = "installed" if done.returncode == 0 else "pip failed (no registry?)"
        except (subprocess.TimeoutExpired, OSError) as error:
            outcome = f"pip unavailable ({type(error).__name__})"
        importlib.invalidate_caches()
        still = missing_modules(missing)
        report.add("env", "missing packages", ", ".join(missing), f"{outcome}; still missing: {still or 'none'}")
        missing = still
    if "termcolor" in missing:
        stub = scratch / "stubs"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "termcolor.py").write_text(STUB_TERMCOLOR)
        sys.path.insert(0, str(stub))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), env.get("PYTHONPATH", "")]))
        missing.remove("termcolor")
        report.add("env", "termcolor", "stubbed", "plain-text stand-in (colours only)")
    return set(missing), env


def blocked(part: str, missing: set[str]) -> str | None:
    lacking = [name for name in NEEDS[part] if name in missing]
    return f"skipped: missing {', '.join(PACKAGES[n] for n in lacking)}" if lacking else None


# --- part 1: tests --------------------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    """Test files that hold `gpu`-marked tests (collecting only these keeps unrelated optional imports, e.g.
    pytorch-metric-learning, from failing the run on a bare GPU machine)."""
    files = sorted((REPO_ROOT / "tests").rglob("test_*.py"))
    return [str(path.relative_to(REPO_ROOT)) for path in files if "pytest.mark.gpu" in path.read_text()]


def run_gpu_tests(report: Report, sizes: Sizes, env: dict[str, str], out: Path | None) -> None:
    paths = sizes.test_paths or gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *paths]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    if out is not None:
        (out / "gpu_tests.log").write_text(done.stdout + done.stderr)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
    report.data["tests"] = {"returncode": done.returncode, "summary": summary, "counts": counts, "seconds": seconds}
    ok = done.returncode == 0 or (done.returncode == 5 and not counts.get("failed"))
    note = ("ok" if ok else "FAILED") + f", {seconds:.0f} s, {' '.join(Path(p).name for p in paths)}"
    fixtures = os.environ.get("DADA_REFERENCE_DIR") or str(REPO_ROOT / "tests" / "fixtures" / "dada")
    if not sizes.test_paths and not list(Path(fixtures).glob("*.json")):
        note += f"; no reference fixtures in {fixtures} (set DADA_REFERENCE_DIR): their CUDA cases did not run"
    report.add("1 tests", "pytest -m gpu", summary.strip("= "), note)


# --- part 2: training step -------------------------------------------------------------------------------


def time_step_variants(report: Report, sizes: Sizes, device) -> float | None:
    """Seconds per iteration of the four step variants; returns the images/s of the fused bf16 step."""
    import statistics

    import torch

    from benchmarks.train_step import (
        CUB_TRAIN_CLASSES,
        Variant,
        benchmark_config,
        build_context,
        random_batch,
        time_variants,
    )

    cuda = device.type == "cuda"
    plans = [
        ("two_forward fp32", "fp32", False, False, False),
        ("fused fp32", "fp32", False, False, True),
        ("fused bf16 channels_last", "bf16", True, False, True),
    ]
    if sizes.compile:
        plans.append(("fused bf16 channels_last compiled", "bf16", True, True, True))
    images, labels = random_batch(sizes.batch_size, 2, sizes.resolution, CUB_TRAIN_CLASSES)
    results: dict[str, float] = {}
    if cuda:
        torch.backends.cudnn.benchmark = True
    for name, precision, channels_last, compiled, fused in plans:
        cfg = benchmark_config(sizes.arch, sizes.resolution, sizes.batch_size, precision)
        start = time.perf_counter()
        try:
            ctx = build_context(cfg, device, CUB_TRAIN_CLASSES, channels_last=channels_last, compile=compiled)
            batch = images.to(device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            if compiled:  # the first calls compile (forward, backward); keep them out of the timing
                time_variants([Variant(name, ctx, fused)], batch, labels.to(device), 1)
            seconds = time_variants([Variant(name, ctx, fused)], batch, labels.to(device), sizes.iterations)[name]
        except Exception as error:  # noqa: BLE001 - report any failure of one variant, keep going
            report.add("2 step", name, "failed", f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
            continue
        median = statistics.median(seconds)
        results[name] = median
        note = (
            f"{sizes.batch_size / median:.0f} img/s; setup+warm-up {time.perf_counter() - start - sum(seconds):.0f} s"
        )
        if "two_forward fp32" in results and name != "two_forward fp32":
            note += f"; {results['two_forward fp32'] / median:.2f}x vs two_forward fp32"
        report.add("2 step", name, f"{median:.4f} s/iter", note)
        del ctx
        if cuda:
            torch.cuda.empty_cache()
    report.data["step_seconds"] = results
    best_bf16 = [v for k, v in results.items() if "bf16" in k]
    return sizes.batch_size / min(best_bf16) if best_bf16 else None


# --- part 3: evaluation ----------------------------------------------------------------------------------


def clustered_embeddings(items: int, classes: int, dim: int, seed: int = 0):
    """L2-normalised class centres plus noise, classes of near-equal size (a stand-in for real embeddings)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(items) % classes)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + (1.5 / np.sqrt(dim)) * rng.standard_normal((items, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def time_evaluation(report: Report, sizes: Sizes, device) -> None:
    import torch

    from config import read_yaml
    from metrics import compute_metrics

    warm_x, warm_y = clustered_embeddings(512, 16, 64, seed=9)
    compute_metrics(warm_x, warm_y, ["recall@1", "f1"], backend="torch", device=device)  # CUDA init, kernels
    timings = {}
    for name, shape, config in (
        ("CUB-sized", sizes.cub_eval, "cub200"),
        ("SOP-sized", sizes.sop_eval, "online_products"),
    ):
        metrics = read_yaml(REPO_ROOT / "configs" / f"{config}.yaml")["evaluation_metrics"]
        x, y = clustered_embeddings(*shape)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        values = compute_metrics(x, y, metrics, backend="torch", device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        timings[name] = {"seconds": seconds, "metrics": values}
        shown = ", ".join(f"{k}={v:.3f}" for k, v in list(values.items())[:3])
        report.add("3 eval", f"{name} {shape[0]} x {shape[2]}, {shape[1]} classes", f"{seconds:.2f} s", shown)
    report.data["evaluation"] = timings


# --- part 4: data pipeline -------------------------------------------------------------------------------


def time_data(report: Report, sizes: Sizes, scratch: Path, step_rate: float | None) -> None:
    from benchmarks.data_speed import GPU_CORES, RESERVED_CORES, run_data_speed

    rate_for = step_rate or 3000.0
    result = run_data_speed(
        scratch / "data_speed",
        sizes.data_images,
        sizes.data_rounds,
        sizes.resolution,
        (500, 375),
        (rate_for,),
        ("pil", "torchvision"),
    )
    report.data["data"] = result
    source = "measured bf16 step" if step_rate else "assumed"
    for name, rate in result["rates"].items():
        cores = rate_for / rate
        fits = "fits" if cores <= GPU_CORES - RESERVED_CORES else "does NOT fit"
        report.add(
            "4 data",
            f"{name} pipeline, 1 core",
            f"{rate:.0f} img/s",
            f"{cores:.1f} cores for {rate_for:.0f} img/s ({source}): {fits} in {GPU_CORES - RESERVED_CORES}",
        )


# --- part 5: end to end ----------------------------------------------------------------------------------


def end_to_end(report: Report, sizes: Sizes, env: dict[str, str], scratch: Path, out: Path | None) -> None:
    from benchmarks.data_speed import cub_layout_paths, write_jpegs

    root = scratch / "e2e"
    paths = cub_layout_paths(root, sizes.e2e_classes, sizes.e2e_train, sizes.e2e_test)
    start = time.perf_counter()
    write_jpegs(paths, *sizes.e2e_size, workers=min(os.cpu_count() or 1, 16))
    report.add(
        "5 e2e",
        f"write {len(paths)} JPEGs {sizes.e2e_size[0]}x{sizes.e2e_size[1]}",
        f"{time.perf_counter() - start:.1f} s",
    )
    command = [
        sys.executable, "main.py", "--config", "configs/cub200.yaml", "--dataset", "cub200",
        "--source_path", str(root), "--save_path", str(root / "runs"), "--save_name", "gpu_check",
        "--pretrained", "false", "--epochs", "2", "--precision", "bf16", "--plots", "false",
        *sizes.e2e_overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if out is not None:
        (out / "end_to_end.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        report.add("5 e2e", "main.py cub200, 2 epochs", f"FAILED (exit {done.returncode})", tail)
        report.data["end_to_end"] = {"returncode": done.returncode, "seconds": seconds}
        return
    rows = list(csv.DictReader((root / "runs" / "cub200" / "gpu_check" / "metrics.csv").open()))
    epochs = [row for row in rows if row["epoch"] != "-1"]
    report.data["end_to_end"] = {"returncode": 0, "seconds": seconds, "metrics": rows}
    for row in epochs:
        report.add(
            "5 e2e",
            f"epoch {row['epoch']} (train + eval)",
            f"{float(row['time']):.1f} s",
            f"recall@1={float(row['recall@1']):.4f}",
        )
    report.add("5 e2e", "main.py cub200, 2 epochs, whole process", f"{seconds:.1f} s", "exit 0")


# --- main ------------------------------------------------------------------------------------------------


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"


def run_check(small: bool, output: Path | None) -> Report:
    import torch

    sizes = Sizes.small() if small else Sizes()
    report = Report()
    out = output.parent if output is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if small:  # tiny tensors: one thread avoids oversubscribing a busy small machine
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    started = time.perf_counter()
    try:
        missing, env = ensure_packages(report, scratch)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        report.data.update(device=device_line(), small=small, sizes=sizes.__dict__ | {})
        print(f"gpu_check on {report.data['device']}{' (--small)' if small else ''}", flush=True)
        step_rate = None
        parts = (
            ("tests", "1 tests", lambda: run_gpu_tests(report, sizes, env, out)),
            ("step", "2 step", lambda: time_step_variants(report, sizes, device)),
            ("eval", "3 eval", lambda: time_evaluation(report, sizes, device)),
            ("data", "4 data", lambda: time_data(report, sizes, scratch, step_rate)),
            ("end_to_end", "5 e2e", lambda: end_to_end(report, sizes, env, scratch, out)),
        )
        for key, label, action in parts:
            reason = blocked(key, missing)
            if reason:
                report.add(label, key, "-", reason)
                continue
            try:
                value = action()
            except Exception as error:  # noqa: BLE001 - one broken part must not hide the others
                report.add(label, key, "failed", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
                continue
            if key == "step" and device.type == "cuda":
                step_rate = value
        report.add("all", "total wall time", f"{time.perf_counter() - started:.0f} s", report.data["device"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU test): the whole check in < 60 s")
    parser.add_argument("--output", help="JSON results file (default: $OUT/gpu_check.json when OUT is set)")
    args = parser.parse_args(argv)
    output = (
        Path(args.output)
        if args.output
        else (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    )
    report = run_check(args.small, output)
    print()
    print(report.table())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**report.data, "rows": report.rows}, indent=2, default=str) + "\n")
    failed = any(row[2].startswith(("failed", "FAILED")) or row[3].startswith("FAILED") for row in report.rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
