"""The one forward policy (engine.forward): precision and memory format, the same for training, evaluation and
inference, and written in one place only."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from engine.forward import ForwardPolicy

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_channels_last_only_on_cuda_and_only_when_configured() -> None:
    assert ForwardPolicy(torch.device("cuda"), channels_last=True).uses_channels_last
    assert not ForwardPolicy(torch.device("cuda"), channels_last=False).uses_channels_last
    assert not ForwardPolicy(torch.device("cpu"), channels_last=True).uses_channels_last
    images = ForwardPolicy(torch.device("cpu")).place_inputs(
        torch.zeros(2, 3, 4, 4, dtype=torch.float64), torch.float32
    )
    assert images.dtype == torch.float32 and images.is_contiguous()


def test_precision_sets_the_autocast_of_the_forward_pass() -> None:
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with ForwardPolicy(torch.device("cpu"), "bf16").autocast():
        assert layer(x).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16), ForwardPolicy(torch.device("cpu"), "fp32").autocast():
        assert layer(x).dtype == torch.float32  # fp32 is float32 even inside an outer autocast


def test_no_other_module_sets_precision_or_memory_format() -> None:
    """Training, evaluation, inference and eval.py go through the policy instead of their own rules."""
    pattern = re.compile(r"torch\.autocast\(|memory_format=torch\.channels_last")
    allowed = {"engine/forward.py", "criteria/precision.py"}  # the criterion keeps its math in float32
    offending = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("engine", "architectures", "criteria", "metrics", "datasets", "config")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if str(path.relative_to(REPO_ROOT)) not in allowed and pattern.search(path.read_text())
    ]
    offending += [
        name for name in ("eval.py", "retrieve.py", "export.py") if pattern.search((REPO_ROOT / name).read_text())
    ]
    assert offending == []
