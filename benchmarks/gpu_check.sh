#!/usr/bin/env bash
# The GPU check: one entry point, under 8 minutes on one H100/H200 (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh [--small]
#
# 1. pytest -m gpu (CUDA paths of the criterion, the kNN backends, the training step in bf16 and fp16);
# 2. seconds per iteration of the CUB step (ResNet-50, 224 px, batch 90): two-forward fp32, fused fp32,
#    fused bf16 + channels_last, and the same with torch.compile;
# 3. full evaluation of a CUB-sized and an SOP-sized embedding set (torch kNN backend on the GPU);
# 4. per-core images/s of the data pipelines and the cores that feed the measured bf16 step;
# 5. main.py with configs/cub200.yaml for two epochs on a CUB-sized synthetic JPEG set written on the spot.
#
# Prints one markdown table; writes $OUT/gpu_check.json when OUT is set. --small shrinks every size so the
# whole script runs in < 60 s on a CPU (tests/test_benchmarks.py runs it that way). Uses the machine's own
# python3 (override with PYTHON=...); missing packages are pip-installed when possible, else the part that
# needs them is skipped and the table says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
