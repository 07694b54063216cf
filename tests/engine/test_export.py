"""export.py: ONNX (run with onnxruntime) and TorchScript files give load_model's embeddings, with the
preprocessing recorded; user errors exit 2 with one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from inference_fixtures import tiny_config, write_checkpoint

import export
from config.checkpoints import load_model
from datasets import build_datasets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tmp / "data")
    test = build_datasets(cfg)["test"]
    checkpoint = write_checkpoint(tmp / "run" / "checkpoints" / "best.pt", cfg)
    model = load_model(checkpoint, device="cpu")
    paths = test.paths[:5]
    return {
        "tmp": tmp,
        "checkpoint": checkpoint,
        "expected": model.embed(paths).numpy(),
        "batch": torch.stack([model.preprocess(p) for p in paths]),
    }


EXPECTED_METADATA = {
    "resolution": "32",
    "resize": "37",
    "crop": "32",
    "mean": "[0.5, 0.5, 0.5]",  # test_resnet's timm configuration
    "std": "[0.5, 0.5, 0.5]",
    "channel_order": "RGB",
    "embed_dim": "16",
    "arch": "test_resnet",
}


def test_onnx_export_runs_in_onnxruntime(tiny, capsys) -> None:
    output = tiny["tmp"] / "model.onnx"
    assert export.main(["--checkpoint", str(tiny["checkpoint"]), "--format", "onnx", "--output", str(output)]) == 0
    assert "output N x 16 L2-normalised embeddings" in capsys.readouterr().out
    metadata = {entry.key: entry.value for entry in onnx.load(str(output)).metadata_props}
    assert EXPECTED_METADATA.items() <= metadata.items()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for rows in (slice(0, 5), slice(0, 1)):  # the batch size is dynamic
        (embeddings,) = session.run(None, {"images": tiny["batch"][rows].numpy()})
        np.testing.assert_allclose(embeddings, tiny["expected"][rows], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


def test_torchscript_export_loads_with_torch_jit(tiny) -> None:
    output = tiny["tmp"] / "model.ts.pt"
    argv = ["--checkpoint", str(tiny["tmp"] / "run"), "--format", "torchscript", "--output", str(output)]
    assert export.main(argv) == 0
    extra = {export.EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(output), _extra_files=extra)
    assert EXPECTED_METADATA.items() <= json.loads(extra[export.EXTRA_FILE]).items()
    with torch.no_grad():
        for rows in (slice(0, 5), slice(0, 2)):
            embeddings = module(tiny["batch"][rows]).numpy()
            np.testing.assert_allclose(embeddings, tiny["expected"][rows], atol=1e-4, rtol=0)


def test_export_user_errors(tiny, capsys) -> None:
    tmp = tiny["tmp"]
    notes = tmp / "notes.pt"
    notes.write_text("not a checkpoint")
    cases = [
        (["--checkpoint", str(tmp / "absent.pt"), "--format", "onnx", "--output", "m.onnx"], "absent.pt"),
        (["--checkpoint", str(notes), "--format", "torchscript", "--output", "m.pt"], "notes.pt"),
        (["--checkpoint", str(tiny["checkpoint"]), "--format", "tflite", "--output", "m"], "invalid choice"),
        (["--checkpoint", str(tiny["checkpoint"]), "--format", "onnx", "--output", str(tmp)], "is a folder"),
    ]
    for argv, message in cases:
        assert export.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not Path("m.onnx").exists() and not Path("m.pt").exists()
