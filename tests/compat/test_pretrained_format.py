"""`pretrained_format`: what a `pretrained_path` file holds is said (or decided from its content, read once),
never found out by a failed load: a state dict, a checkpoint of the reference implementation, and the errors."""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import pytest
import timm
import torch

from architectures import ReferenceReader, build_model
from compat.weights import REFERENCE_READER
from utilities.errors import UserError


def model_config(path: Path, fmt: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        arch="test_resnet", pretrained=True, pretrained_path=str(path), pretrained_format=fmt, pooling="avgmax",
        embed_dim=24, embed_norm="layernorm", frozen_bn=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A timm state dict, a checkpoint holding one under `model`, and a checkpoint of the reference
    implementation's layout (the backbone under ``model.``, its options namespace `opt`), each with a marked
    first convolution."""
    tmp = tmp_path_factory.mktemp("weights")
    source = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.nn.init.constant_(source.conv1[0].weight, 0.25)
    state = source.state_dict()
    paths = {"state_dict": tmp / "timm.pth", "holder": tmp / "holder.pt", "reference": tmp / "reference.pth.tar"}
    torch.save(state, paths["state_dict"])
    torch.save({"epoch": 3, "model": state}, paths["holder"])
    reference_state = {f"model.{key}": value * 2 for key, value in state.items() if not key.startswith("fc.")}
    reference_state["model.last_linear.weight"] = torch.zeros(24, 8)
    opt = argparse.Namespace(arch="resnet50_frozen_layernorm_double", embed_dim=24)
    torch.save({"state_dict": reference_state, "opt": opt, "epoch": 7}, paths["reference"])
    return paths


def first_weight(model) -> float:
    return float(model.trunk.conv1[0].weight.detach().flatten()[0])


@pytest.mark.parametrize("fmt", ["auto", "state_dict"])
def test_a_state_dict_loads_as_state_dict_and_as_auto(files, fmt: str) -> None:
    for name in ("state_dict", "holder"):
        assert first_weight(build_model(model_config(files[name], fmt), reference=REFERENCE_READER)) == 0.25
        assert first_weight(build_model(model_config(files[name], fmt))) == 0.25  # no reader plugged in


@pytest.mark.parametrize("fmt", ["auto", "reference"])
def test_a_reference_checkpoint_loads_its_backbone(files, fmt: str) -> None:
    model = build_model(model_config(files["reference"], fmt), reference=REFERENCE_READER)
    assert first_weight(model) == 0.5


def test_the_file_is_read_once_and_never_retried(files, monkeypatch) -> None:
    """auto reads a torch zip checkpoint once, with the restricted reader (which reads both kinds); torch.load
    is never tried first."""
    reads: list[Path] = []
    loads: list[object] = []
    counting = ReferenceReader(
        read=lambda path: reads.append(path) or REFERENCE_READER.read(path),
        is_reference=REFERENCE_READER.is_reference,
        trunk_state=REFERENCE_READER.trunk_state,
    )
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    for name, expected in (("reference", 0.5), ("state_dict", 0.25)):
        assert first_weight(build_model(model_config(files[name], "auto"), reference=counting)) == expected
    assert reads == [files["reference"], files["state_dict"]] and loads == []


def test_formats_that_do_not_fit_the_file_are_user_errors_naming_it(files) -> None:
    with pytest.raises(UserError, match=r"pretrained_format: reference: .*timm.pth is not a checkpoint of the "):
        build_model(model_config(files["state_dict"], "reference"), reference=REFERENCE_READER)
    with pytest.raises(UserError, match=r"cannot read weights from .*reference.pth.tar as a state dict .*"):
        build_model(model_config(files["reference"], "state_dict"), reference=REFERENCE_READER)
    with pytest.raises(UserError, match="no reader of the reference's checkpoints is plugged in"):
        build_model(model_config(files["reference"], "reference"))
    text = files["state_dict"].parent / "notes.txt"
    text.write_text("not weights")
    for fmt in ("auto", "reference"):
        with pytest.raises(UserError, match="notes.txt"):
            build_model(model_config(text, fmt), reference=REFERENCE_READER)
