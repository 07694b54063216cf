"""Checkpoints of the reference implementation: read without executing anything, mapped onto our ResNet-50,
evaluated by eval.py with the reference's command line.

The test writes such a file itself: the reference's network layout (pretrainedmodels ResNet-50 as ``model``,
its residual stages again under ``layer_blocks``, docs/reference.md §2.1) with random weights, an options namespace, a
logger object of a class the loader must not import, optimizer state, and an object whose unpickling would
run a shell command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretrainedmodels
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from architectures import build_model
from compat.checkpoint import reference_eval_config
from compat.options import translate_arch
from compat.unpickler import Placeholder, load_restricted
from compat.weights import REFERENCE_READER, load_reference_weights
from config import config_from_dict
from config.checkpoints import read_checkpoint
from eval import CheckpointEvaluation, evaluate_checkpoint
from metrics import compute_metrics
from utilities.errors import UserError

REPO = Path(__file__).resolve().parents[2]
EMBED_DIM = 64


class ReferenceResNet50(nn.Module):
    """The reference's `resnet50_frozen_layernorm_double` network, written from docs/reference.md §2.1."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.model = pretrainedmodels.resnet50(num_classes=1000, pretrained=None)
        self.model.last_linear = nn.Linear(self.model.last_linear.in_features, embed_dim)
        self.lnorm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.layer_blocks = nn.ModuleList([self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.maxpool(self.model.relu(self.model.bn1(self.model.conv1(x))))
        for block in self.layer_blocks:
            x = block(x)
        y = F.adaptive_max_pool2d(x, 1) + F.adaptive_avg_pool2d(x, 1)
        return self.lnorm(self.model.last_linear(y.flatten(1)))


class ReferenceLogger:
    """Stands for the reference's own classes (its logger): the loader must not import this module."""

    def __init__(self) -> None:
        self.history = {"e_recall@1": [0.5, 0.6]}


class ReferenceDataset(torch.utils.data.Dataset):
    """Stands for the reference's datasets, which its checkpoints pickle inside their data loaders."""

    def __init__(self) -> None:
        self.image_dict = {0: ["a.jpg", "b.jpg"]}
        self.avail_classes = np.array([0])
        self.transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return index


class RunsACommand:
    """Unpickling this object with the standard pickle module would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def reference_network(seed: int = 0) -> ReferenceResNet50:
    torch.manual_seed(seed)
    net = ReferenceResNet50(EMBED_DIM)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a misplaced tensor shows
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return net.eval()


def write_reference_checkpoint(path: Path, net: nn.Module, marker: Path, **options) -> None:
    opt = argparse.Namespace(
        arch="resnet50_frozen_layernorm_double",
        embed_dim=EMBED_DIM,
        dataset="cub200",
        source_path="../dml_data/cub200",
        device=torch.device("cuda"),
        n_classes=4,
        evaluation_metrics=["e_recall@1", "e_recall@2"],
    )
    vars(opt).update(options)
    optimizer = torch.optim.Adam(net.model.last_linear.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.45)
    loader = torch.utils.data.DataLoader(ReferenceDataset(), batch_size=2)
    torch.save(
        {
            "state_dict": net.state_dict(),
            "opt": opt,
            "progress": ReferenceLogger(),
            "aux": {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "dataloaders": {"testing": loader},
                "tags": ({"train", "test"}, b"\x00\xff"),
                "hook": RunsACommand(marker),
            },
            "proxy": torch.randn(4, EMBED_DIM),
            "saved_batch_mix": torch.empty(0),
        },
        path,
    )


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> tuple[Path, ReferenceResNet50, Path]:
    folder = tmp_path_factory.mktemp("reference")
    net = reference_network()
    marker = folder / "command_ran"
    write_reference_checkpoint(folder / "checkpoint_cub_embeds_e_recall@1.pth.tar", net, marker)
    return folder / "checkpoint_cub_embeds_e_recall@1.pth.tar", net, marker


def test_the_file_would_run_a_command_under_the_standard_unpickler(reference_file, tmp_path):
    """The guard of the tests below: plain pickle really executes the command."""
    path, _, _ = reference_file
    marker = tmp_path / "ran"
    net = ReferenceResNet50(4)
    write_reference_checkpoint(tmp_path / "unsafe.pth", net, marker)
    torch.load(tmp_path / "unsafe.pth", weights_only=False)
    assert marker.exists()


def test_reference_weights_give_the_reference_networks_embeddings(reference_file):
    path, net, marker = reference_file
    own, reference = read_checkpoint(path)
    assert own is None and reference is not None
    assert not marker.exists()
    assert any(name.endswith("system") for name in reference.placeholders)
    assert any(name.endswith("ReferenceLogger") for name in reference.placeholders)
    assert "torch.utils.data.dataloader.DataLoader" in reference.placeholders

    values = reference_eval_config(reference, dataset=None, source_path=None)
    assert values["source_path"] == "../dml_data" and values["dataset"] == "cub200"
    cfg = config_from_dict(values)
    assert (cfg.arch, cfg.frozen_bn, cfg.pooling, cfg.embed_norm) == ("resnet50.tv_in1k", True, "avgmax", "layernorm")
    model = build_model(cfg)
    load_reference_weights(model, reference.state_dict, cfg.arch)
    model.eval()
    images = torch.randn(3, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(images), net(images), rtol=1e-5, atol=1e-5)


class ReferenceBNInception(nn.Module):
    """The reference's `bninception_frozen_layernorm_double` network, written from docs/reference.md §2.2."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.model = pretrainedmodels.bninception(num_classes=1000, pretrained=None)
        self.model.last_linear = nn.Linear(self.model.last_linear.in_features, embed_dim)
        self.lnorm = nn.LayerNorm(embed_dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.features(x)
        y = F.avg_pool2d(x, kernel_size=x.shape[-1]) + F.max_pool2d(x, kernel_size=x.shape[-1])
        return self.lnorm(self.model.last_linear(y.flatten(1)))


def test_bninception_weights_give_the_reference_networks_embeddings():
    torch.manual_seed(1)
    net = ReferenceBNInception(EMBED_DIM).eval()
    cfg = config_from_dict(
        {**translate_arch("bninception_frozen_layernorm_double"), "pretrained": False, "embed_dim": EMBED_DIM}
    )
    model = build_model(cfg)
    load_reference_weights(model, net.state_dict(), cfg.arch)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), net(images), rtol=1e-5, atol=1e-5)


def test_dataset_comes_from_the_checkpoint_or_the_command_line(reference_file):
    _, reference = read_checkpoint(reference_file[0])
    assert reference_eval_config(reference, "cars196", "/data")["dataset"] == "cars196"
    assert reference_eval_config(reference, None, "/data")["source_path"] == "/data"
    reference.options["dataset"] = None
    with pytest.raises(UserError, match="pass --dataset"):
        reference_eval_config(reference, None, None)
    inshop = reference_eval_config(reference, "inshop", None)
    assert inshop["evaluation_metrics"][:2] == ["recall@1", "recall@10"]


def test_reference_checkpoint_as_pretrained_path_initialises_the_backbone(reference_file):
    path, net, marker = reference_file
    cfg = config_from_dict({"arch": "resnet50.tv_in1k", "pretrained": True, "pretrained_path": str(path)})
    model = build_model(cfg, reference=REFERENCE_READER)  # as the trainer plugs it in
    assert not marker.exists()
    torch.testing.assert_close(model.trunk.conv1.weight, net.model.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.trunk.layer4[2].bn3.running_var, net.model.layer4[2].bn3.running_var)
    assert model.head.weight.shape == (cfg.embed_dim, 2048)  # the embedding layer starts fresh


def test_a_damaged_duplicate_or_a_wrong_size_is_a_user_error(reference_file):
    path, net, _ = reference_file
    _, reference = read_checkpoint(path)
    cfg = config_from_dict(reference_eval_config(reference, None, None))
    state = dict(reference.state_dict)
    state["layer_blocks.0.0.conv1.weight"] = state["layer_blocks.0.0.conv1.weight"] + 1
    with pytest.raises(UserError, match="does not repeat model.layer1.0.conv1.weight"):
        load_reference_weights(build_model(cfg), state, cfg.arch)
    smaller = config_from_dict({**reference_eval_config(reference, None, None), "embed_dim": 32})
    with pytest.raises(UserError, match="head.weight has shape"):
        load_reference_weights(build_model(smaller), reference.state_dict, smaller.arch)


def write_cub(root: Path) -> None:
    """A CUB-200 layout whose test classes (the second half) hold distinct random images."""
    rng = np.random.default_rng(0)
    for number in range(1, 5):
        for k in range(3):
            pixels = rng.integers(0, 256, size=(40 + 4 * k, 48, 3), dtype=np.uint8)
            path = root / "cub200" / "images" / f"{number:03d}.Bird_{number}" / f"bird_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


def reference_embeddings(net: nn.Module, root: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Test images through the reference's evaluation transforms (PIL) and network, unnormalised."""
    transform = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    paths = sorted((root / "cub200" / "images").glob("00[34]*/*.jpg"))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    labels = np.array([0 if "003." in str(p) else 1 for p in paths])
    with torch.no_grad():
        return net(batch), labels


def test_eval_py_with_the_reference_readme_command(reference_file, tmp_path):
    path, net, marker = reference_file
    write_cub(tmp_path / "dml_data")
    result = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "--source_path", str(tmp_path / "dml_data"), "--dataset", "cub200",
         "--test_path", str(path), "--evaluation_metrics", "['e_recall@1',", "'e_recall@2',", "'e_recall@4',",
         "'e_recall@10',", "'f1',", "'mAP_R']", "--gpu", "0", "--output", str(tmp_path / "metrics.json"),
         "--save_embeddings", str(tmp_path / "embeddings.npz")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "a checkpoint of the reference implementation" in result.stdout
    assert "not L2-normalised" in result.stdout
    assert not marker.exists()
    embeddings, labels = reference_embeddings(net, tmp_path / "dml_data")
    with np.load(tmp_path / "embeddings.npz") as saved:  # the reference's transforms, network and no normalisation
        torch.testing.assert_close(torch.from_numpy(saved["embeddings"]), embeddings, rtol=1e-5, atol=1e-5)
        assert saved["labels"].tolist() == labels.tolist()
    expected = compute_metrics(embeddings, labels, ["recall@1", "recall@2", "f1", "map@r_legacy"])
    measured = json.loads((tmp_path / "metrics.json").read_text())
    assert set(measured) == {"recall@1", "recall@2", "recall@4", "recall@10", "f1", "map@r_legacy"}
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, abs=1e-6), name


def test_normal_flag_normalises_like_the_reference_eval(reference_file, tmp_path):
    path, net, _ = reference_file
    write_cub(tmp_path / "dml_data")
    lines: list[str] = []
    request = CheckpointEvaluation(
        str(path),
        source_path=str(tmp_path / "dml_data"),
        metrics=["recall@1"],
        workers=0,
        normalize=True,
        save_embeddings=str(tmp_path / "normal.npz"),
        report=lines.append,
    )
    evaluate_checkpoint(request)
    embeddings, _ = reference_embeddings(net, tmp_path / "dml_data")
    with np.load(tmp_path / "normal.npz") as saved:
        normalised = F.normalize(embeddings, dim=-1)
        torch.testing.assert_close(torch.from_numpy(saved["embeddings"]), normalised, rtol=1e-5, atol=1e-5)
    assert len(lines) == 1 and "a checkpoint of the reference implementation" in lines[0]


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "eval.py"), *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_files_that_are_not_checkpoints_exit_2(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    odd = reference_network()
    write_reference_checkpoint(tmp_path / "lp.pth", odd, tmp_path / "x", arch="bninception_frozen_lp2")
    cases = {
        "other.pth": "neither a checkpoint of this project nor one of the reference implementation",
        "text.pth": "not a torch checkpoint in the zip format",
        "lp.pth": "LP pooling (lp2 / lp3) has no equivalent here",
    }
    for name, message in cases.items():
        result = run_eval("--test_path", str(tmp_path / name), "--source_path", str(tmp_path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (name, result.stderr)


def test_plain_values_are_rebuilt_exactly(tmp_path):
    net = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    grid = torch.arange(12.0).reshape(3, 4)
    value = {
        "optimizer": optimizer.state_dict(),
        "shared": (grid, grid[1:, 1:].t()),  # two views of one storage
        "half": torch.ones(2, dtype=torch.half),
        "misc": [{1, 2}, frozenset({3}), b"\x00\xff", 1.5, None, "text", torch.float16],
        "opt": argparse.Namespace(arch="resnet50", device=torch.device("cuda", 1)),
    }
    torch.save(value, tmp_path / "plain.pth")
    loaded = load_restricted(tmp_path / "plain.pth")
    assert loaded.placeholders == []
    restored = loaded.obj
    assert restored["misc"] == value["misc"] and vars(restored["opt"]) == vars(value["opt"])
    torch.testing.assert_close(restored["optimizer"]["state"][0]["exp_avg"], value["optimizer"]["state"][0]["exp_avg"])
    assert restored["optimizer"]["param_groups"] == value["optimizer"]["param_groups"]
    torch.testing.assert_close(restored["shared"][1], grid[1:, 1:].t())
    assert restored["shared"][1].untyped_storage().data_ptr() == restored["shared"][0].untyped_storage().data_ptr()
    assert restored["half"].dtype == torch.half


def test_placeholders_are_inert():
    kind = type("system", (Placeholder,), {"origin": "os.system"})
    instance = kind("rm -rf /")
    instance.__setstate__({"a": 1})
    instance["key"] = "value"
    instance.append(3)
    assert instance.args == ("rm -rf /",) and instance.state == {"a": 1} and instance.items == {"key": "value"}
    assert not callable(instance)
