"""The reference implementation's YAML files and command line, unchanged, through `compat.options`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from paper_settings import PAPER_SETTINGS, SHARED, parse
from test_reference_checkpoint import write_cub

from compat.options import REFERENCE_OPTIONS, markdown_table, translate_arch
from config import Config
from engine.optim import build_schedulers
from utilities.errors import UserError

REPO = Path(__file__).resolve().parents[2]

# The reference's configs/*.yaml as published (cub200.yaml sets n_epochs twice; YAML keeps the last).
REFERENCE_YAML = {
    "cub200": """# parameters for cub
dataset: "cub200"
pos_class_mix: true
batch_size: 90
n_epochs: 80
lr: 0.00012
fd2_bn: true
fc2_bn: true
n_epochs: 60
d_dis_ratio: 0.005
decay: 0.0001
dis_decay: 0.0004
loss_oproxy_pos_alpha: 40
loss_oproxy_neg_alpha: 100
lr_reduce_step: 4
lr_reduce_rate: 0.45
mix_alpha: 3
mix_beta: 0.5
oproxy_ratio: 0.0075
evaluation_metrics: ['e_recall@1', 'e_recall@2', 'e_recall@4', 'f1', 'mAP_R']
store_improvements: true""",
    "cars196": """# parameters for cars
dataset: "cars196"
n_epochs: 60
fd2_bn: true
d_dis_ratio: 0.01
decay: 0.0001
augmentation: auto
lr: 0.00012
lr_reduce_step: 10
mix_alpha: 2
mix_beta: 1
oproxy_ratio: 0.0075
warmup: 5
evaluation_metrics: ['e_recall@1', 'e_recall@2', 'e_recall@4', 'f1', 'mAP_R']
store_improvements: true""",
    "online_products": """# for sop
dataset: "online_products"
n_epochs: 200
batch_size: 180
d_dis_ratio: 0.05
decay: 0.00005
lr: 0.00012
dis_decay: 0.0001
fc_fc1_dim: 1024
fc_fc2_dim: 8192
fd_fc1_dim: 128
loss_oproxy_neg_alpha: 200
loss_oproxy_pos_alpha: 100
lr_reduce_rate: 0.1
lr_reduce_step: 20
mix_alpha: 2
mix_beta: 5
oproxy_ratio: 0.03
pos_class_mix: true
fd2_bn: true
scheduler: "multi"
arch: resnet50_layernorm_double
evaluation_metrics: ['e_recall@1', 'e_recall@10', 'e_recall@100']
store_improvements: true
""",
    "inshop": """# for inshop
dataset: "inshop"
n_epochs: 200
batch_size: 180
fd2_bn: true
fc2_bn: true
pos_class_mix: true
arch: resnet50_layernorm_double
d_dis_ratio: 0.01
decay: 0.0001
dis_decay: 0.00005
fc_fc2_dim: 4096
fd_fc1_dim: 512
loss_oproxy_neg_alpha: 200
loss_oproxy_pos_alpha: 40
lr: 0.00012
lr_reduce_rate: 0.25
lr_reduce_step: 40
oproxy_ratio: 0.0075
mix_alpha: 3
mix_beta: 3
warmup: 5
store_improvements: true""",
}


def write_reference_yaml(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(REFERENCE_YAML[name])
    return path


@pytest.mark.parametrize("name", sorted(REFERENCE_YAML))
def test_reference_yaml_gives_the_paper_setting_and_our_config(name, tmp_path, capsys):
    cfg = parse("--config", str(write_reference_yaml(tmp_path, name)))
    for key, value in {**SHARED, **PAPER_SETTINGS[name]}.items():
        assert getattr(cfg, key) == value, key
    ours = parse("--config", str(REPO / "configs" / f"{name}.yaml")).to_dict()
    theirs = cfg.to_dict()
    differing = {key for key in ours if ours[key] != theirs[key]}
    # ours add the standard map@r (In-Shop: the reference's fixed list is the default here too), and
    # SyncBatchNorm for the trainable BatchNorm of SOP / In-Shop under torchrun
    allowed = {"sync_bn"} if name == "inshop" else {"evaluation_metrics", "sync_bn"}
    assert differing <= allowed, differing
    # one line per translated option, none for the keys both projects share
    lines = capsys.readouterr().err.strip().splitlines()
    translated = {key for key in yaml.safe_load(REFERENCE_YAML[name]) if key in REFERENCE_OPTIONS}
    translated -= {"arch"} if name in ("cub200", "cars196") else set()
    assert sorted(line.split(":")[0].removeprefix("reference option ") for line in lines) == sorted(translated)


def test_cub_lines_say_what_each_option_became(tmp_path, capsys):
    parse("--config", str(write_reference_yaml(tmp_path, "cub200")))
    lines = capsys.readouterr().err.splitlines()
    assert "reference option n_epochs: 60 -> epochs: 60" in lines
    assert "reference option d_dis_ratio: 0.005 -> class_ratio: 0.005" in lines
    assert any(line.startswith("reference option store_improvements: true -> no effect here") for line in lines)


def test_sop_arch_becomes_trainable_batchnorm_and_the_reference_head(tmp_path):
    cfg = parse("--config", str(write_reference_yaml(tmp_path, "online_products")))
    assert (cfg.arch, cfg.frozen_bn, cfg.pooling, cfg.embed_norm) == ("resnet50.tv_in1k", False, "avgmax", "layernorm")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet50_frozen_layernorm_double", ("resnet50.tv_in1k", True, "avgmax", "layernorm")),
        ("resnet50_layernorm_double", ("resnet50.tv_in1k", False, "avgmax", "layernorm")),
        ("resnet50_frozen_normalize", ("resnet50.tv_in1k", True, "avg", "l2")),
        ("resnet50", ("resnet50.tv_in1k", False, "avg", "none")),
        ("bninception_frozen_double", ("bninception", True, "avgmax", "none")),
    ],
)
def test_reference_architecture_names(name, expected):
    keys = translate_arch(name)
    assert (keys["arch"], keys["frozen_bn"], keys["pooling"], keys["embed_norm"]) == expected


def test_timm_names_pass_through_unchanged():
    assert parse("--arch", "resnet50").arch == "resnet50"  # timm's resnet50, not the reference's
    assert parse("--arch", "resnet50_frozen_double").frozen_bn is True


def test_reference_flags_on_the_command_line():
    cfg = parse("--normal", "--fd2_bn", "--not_pretrained", "--proxy_dim", "1", "--dis_decay", "0.0002")
    assert cfg.normalize_features is cfg.eval_normalize is False  # store_false in the reference's main.py
    assert (cfg.domain_out_bn, cfg.pretrained, cfg.loss, cfg.disc_decay) == (True, False, "softplus_proxy", 0.0002)
    baseline = parse("--lr", "0.0002", "--loss", "oproxy")
    assert baseline.dada is False and baseline.proxy_lr == pytest.approx(0.0002 * 200)
    assert parse("--loss", "proxy_nca").loss == "proxy_nca"  # this project's values of a shared name pass


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mix_extension: true", "reference option 'mix_extension'"),
        ("no_train_metrics: false", "train-split metrics (no_train_metrics: false) have no equivalent"),
        ("save_results: true", "save_results (per-class prediction statistics) has no equivalent"),
        ("arch: resnet50_normalize_layernorm", "L2 normalisation followed by LayerNorm has no equivalent"),
        ("storage_metrics: ['e_recall@1', 'nmi']", "several storage metrics have no equivalent"),
        ("proxy_dim: 2", "reference value 2 has no equivalent"),
        # the reference raises NotImplementedError for a discrepancy other than l1 / nwd (at its first step)
        ("dis_mode: wasserstein", "reference option 'dis_mode' in"),
        ("proxy_init_mode: uniform", "only 'norm'"),
        ("n_epochs: 5\nepochs: 6", "sets both 'epochs' and the reference option 'n_epochs'"),
    ],
)
def test_options_without_an_equivalent_are_refused(text, message, tmp_path):
    path = tmp_path / "reference.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse("--config", str(path))


def run_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_refused_option_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(REFERENCE_YAML["cub200"] + "\nmix_extension: true\n")
    result = run_main("--config", str(tmp_path / "bad.yaml"), "--no_train_metrics", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "mix_extension" in lines[0], result.stderr


def test_the_seed_readme_training_command_with_the_reference_yaml(tmp_path):
    """`python main.py --source_path ../dml_data --save_path ../Results --save_name NAME --config ... --gpu 0`,
    with a tiny network and two epochs so that it runs on a CPU in seconds."""
    write_cub(tmp_path / "dml_data")
    config = write_reference_yaml(tmp_path, "cub200")
    work = tmp_path / "repo"
    work.mkdir()
    result = run_main(
        "--source_path", "../dml_data", "--save_path", "../Results", "--save_name", "NAME", "--config", str(config),
        "--gpu", "0", "--arch", "test_resnet", "--not_pretrained", "--frozen_bn", "false", "--n_epochs", "2",
        "--batch_size", "4", "--resolution", "32", "--kernels", "0", "--device", "cpu",
        cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "reference option fd2_bn: true -> domain_out_bn: true" in result.stderr
    run = tmp_path / "Results" / "cub200" / "NAME"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    resolved = (stored["epochs"], stored["domain_out_bn"], stored["class_ratio"], stored["pos_alpha"])
    assert resolved == (2, True, 0.005, 40)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2


def test_linear_schedule_uses_the_reference_keys():
    cfg = Config(scheduler="linear", lr_linear_start=0.5, lr_linear_end=0.1, lr_linear_length=4)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_schedulers(cfg, {"backbone": optimizer})["backbone"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.1])


def test_docs_hold_the_table():
    assert markdown_table() in (REPO / "docs" / "reference.md").read_text()
