"""End-to-end training on a tiny synthetic benchmark: run files, learning, eval.py parity, exact resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine.trainer
import main as main_module

REPO = Path(__file__).resolve().parents[2]


def tiny_args(tmp: Path, name: str, epochs: int = 4) -> list[str]:
    # A tiny model trained from scratch: the proxy loss leads (r = 1, gamma = 0.1), as in configs/demo.yaml.
    return [
        "--dataset", "synthetic", "--source_path", str(tmp / "data"), "--save_path", str(tmp / "runs"),
        "--save_name", name, "--synthetic_classes", "8", "--synthetic_images_per_class", "12",
        "--synthetic_image_size", "48", "--arch", "test_resnet", "--pretrained", "false", "--frozen_bn", "false",
        "--resolution", "48", "--batch_size", "16", "--iterations_per_epoch", "8", "--epochs", str(epochs),
        "--kernels", "0", "--device", "cpu", "--embed_dim", "32", "--lr", "0.01", "--warmup", "0",
        "--d_warmup", "1", "--pos_class_mix", "true", "--domain_hidden", "32", "--class_hidden1", "32",
        "--class_hidden2", "16", "--domain_out_bn", "true", "--class_out_bn", "true",
        "--proxy_loss_weight", "1", "--adv_weight", "0.1",
        "--evaluation_metrics", "recall@1", "recall@2", "map@r", "nmi", "f1", "--eval_batch_size", "64",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    assert main_module.main(tiny_args(tmp, "full")) == 0
    return tmp


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_run_writes_every_file_and_lowers_the_loss(tiny_run: Path):
    folder = tiny_run / "runs" / "synthetic" / "full"
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "curves.png",
        "embedding_map.png",
        "worst_queries.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (folder / name).is_file(), name
    rows = read_rows(folder / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [-1, 0, 1, 2, 3]
    assert rows[1]["generator_loss"] == "" and rows[2]["generator_loss"] != ""  # epoch 0: discriminators only
    for key in (
        "discriminator_loss",
        "proxy_loss",
        "lr_backbone",
        "lr_proxy",
        "lr_discriminator",
        "time",
        "skipped_updates",
        "recall@1",
        "map@r",
    ):
        assert key in rows[-1]
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) >= {"initial", "last", "best", "best_epoch", "epochs_completed"}
    assert summary["epochs_completed"] == 4
    # the objective falls (retrieval gains on unseen classes need the demo's budget: test_demo_learns)
    assert float(rows[-1]["proxy_loss"]) < float(rows[2]["proxy_loss"]) - 1.0
    # checkpoints hold only tensors and plain values
    last = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and set(last["optimizers"]) == {"backbone", "proxy", "discriminator"}
    best = torch.load(folder / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] + 1


def test_eval_py_on_best_checkpoint_reproduces_the_summary(tiny_run: Path, tmp_path: Path):
    folder = tiny_run / "runs" / "synthetic" / "full"
    output = tmp_path / "metrics.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "--checkpoint", str(folder / "checkpoints" / "best.pt"),
         "--output", str(output), "--save_embeddings", str(tmp_path / "emb.npz")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "a checkpoint of this project (read with weights_only=True)" in result.stdout
    best = json.loads((folder / "summary.json").read_text())["best"]
    values = json.loads(output.read_text())
    for key, value in best.items():
        assert values[key] == pytest.approx(value, abs=1e-6), key
    # the stored embeddings give the same numbers without a model
    again = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), "--embeddings", str(tmp_path / "emb.npz"),
         "--evaluation_metrics", "recall@1", "map@r", "--output", str(tmp_path / "again.json")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    stored = json.loads((tmp_path / "again.json").read_text())
    assert stored["recall@1"] == pytest.approx(best["recall@1"], abs=1e-6)


def interrupted_after(last_epoch: int, args: list[str], monkeypatch) -> int:
    """main.py's exit code for a run that Ctrl-C stops once epoch `last_epoch` is saved."""
    original = engine.trainer._print_epoch

    def interrupt(epoch, *rest):
        original(epoch, *rest)
        if epoch == last_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.trainer, "_print_epoch", interrupt)
    try:
        return main_module.main(args)
    finally:
        monkeypatch.setattr(engine.trainer, "_print_epoch", original)


def test_interrupted_run_resumes_to_exactly_the_same_result(tiny_run: Path, monkeypatch):
    reference = tiny_run / "runs" / "synthetic" / "full"
    assert interrupted_after(1, tiny_args(tiny_run, "interrupted"), monkeypatch) == 130
    folder = tiny_run / "runs" / "synthetic" / "interrupted"
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert main_module.main(["--resume", str(folder)]) == 0

    assert without_time(read_rows(folder / "metrics.csv")) == without_time(read_rows(reference / "metrics.csv"))
    resumed = json.loads((folder / "summary.json").read_text())
    uninterrupted = json.loads((reference / "summary.json").read_text())
    assert resumed == uninterrupted
    a = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "criterion"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key


def test_resume_takes_its_network_from_the_checkpoint_path_and_never_reads_the_pretrained_weights(
    tmp_path: Path, monkeypatch
):
    """--resume builds the network by `config.checkpoints.model_from_checkpoint` (the one checkpoint -> model
    path): the run's `pretrained_path` is not read again (here it is gone by then), the weights are the
    checkpoint's."""
    import timm

    import config.checkpoints

    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), weights)
    args = [*tiny_args(tmp_path, "pretrained", epochs=2), "--pretrained", "true", "--pretrained_path", str(weights),
            "--plots", "false", "--iterations_per_epoch", "2"]  # fmt: skip
    assert interrupted_after(0, args, monkeypatch) == 130
    weights.unlink()
    folder = tmp_path / "runs" / "synthetic" / "pretrained"
    stored = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    built = []
    from_checkpoint = config.checkpoints.model_from_checkpoint

    def spy(state, file, overrides=None):
        cfg, network = from_checkpoint(state, file, overrides)
        built.append(network)
        return cfg, network

    monkeypatch.setattr(config.checkpoints, "model_from_checkpoint", spy)
    seen = []
    monkeypatch.setattr(engine.trainer, "_restore", lambda run, state, f=engine.trainer._restore: seen.append(
        {k: v.clone() for k, v in run.model.state_dict().items()}) or f(run, state))  # fmt: skip
    assert main_module.main(["--resume", str(folder)]) == 0
    assert len(built) == 1 and len(seen) == 1
    assert all(torch.equal(value, stored["model"][key]) for key, value in seen[0].items())
    assert json.loads((folder / "summary.json").read_text())["epochs_completed"] == 2


def without_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_run_killed_at_an_epoch_boundary_resumes_exactly_with_loader_workers(tmp_path: Path):
    """SIGKILL right after the first checkpoint, as a crash would; the resumed run, with 2 persistent loader
    workers, ends with exactly the metrics, losses and weights of an uninterrupted run with 2 workers."""

    def args(name: str) -> list[str]:
        return [*tiny_args(tmp_path, name, epochs=3), "--kernels", "2", "--plots", "false"]

    assert main_module.main(args("full")) == 0
    folder = tmp_path / "runs" / "synthetic" / "killed"
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args("killed")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 900  # a liveness bound only: loaded CI machines are slow
    while not (folder / "checkpoints" / "last.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    stored_epoch = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert stored_epoch < 3
    assert main_module.main(["--resume", str(folder)]) == 0

    reference = tmp_path / "runs" / "synthetic" / "full"
    assert without_time(read_rows(folder / "metrics.csv")) == without_time(read_rows(reference / "metrics.csv"))
    assert json.loads((folder / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    a = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "criterion"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key


def test_baseline_trains_nothing_in_its_discriminator_warmup(tmp_path: Path):
    """Without DADA, a d_warmup epoch trains nothing (as the reference's `loss: oproxy`) and holds the schedule."""
    args = [*tiny_args(tmp_path, "baseline", epochs=2), "--dada", "false", "--d_warmup", "1", "--plots", "false",
            "--scheduler", "step", "--lr_step", "1", "--lr_gamma", "0.5"]  # fmt: skip
    assert main_module.main(args) == 0
    rows = read_rows(tmp_path / "runs" / "synthetic" / "baseline" / "metrics.csv")
    before, idle, trained = rows
    metric_keys = ("recall@1", "recall@2", "map@r", "nmi", "f1")
    assert all(idle[k] == before[k] for k in metric_keys), (before, idle)
    assert any(trained[k] != idle[k] for k in metric_keys), (idle, trained)
    assert float(idle["lr_backbone"]) == float(trained["lr_backbone"]) * 2 == 0.01  # stepped after epoch 1 only


def test_a_second_run_gets_a_new_folder_and_tensorboard_scalars(tiny_run: Path):
    assert main_module.main([*tiny_args(tiny_run, "full", epochs=1), "--plots", "false", "--tensorboard", "true"]) == 0
    assert (tiny_run / "runs" / "synthetic" / "full_1" / "summary.json").is_file()
    assert not (tiny_run / "runs" / "synthetic" / "full_1" / "worst_queries.png").exists()  # plots: false
    assert list((tiny_run / "runs" / "synthetic" / "full_1" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tiny_run / "runs" / "synthetic" / "full" / "summary.json").is_file()


def test_dry_run_prints_the_split_summary(tiny_run: Path, capsys):
    assert main_module.main([*tiny_args(tiny_run, "dry"), "--dry_run", "--check_images"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {
        "dataset": "synthetic",
        "splits": {"train": {"classes": 4, "images": 48}, "test": {"classes": 4, "images": 48}},
    }


def test_wrong_checkpoints_exit_2(tmp_path: Path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for path in ("other.pt", "garbage.pt", "missing.pt"):
        result = subprocess.run(
            [sys.executable, str(REPO / "eval.py"), "--checkpoint", str(tmp_path / path)],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and path in result.stderr


@pytest.mark.slow
def test_demo_learns(tmp_path: Path):
    """The demo (docs/training.md; about 3.5 minutes on 2 cores) improves recall@1 on unseen classes by 10+ points."""
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--source_path", str(tmp_path / "data"),
            "--save_path", str(tmp_path / "runs"), "--plots", "false"]  # fmt: skip
    assert main_module.main(args) == 0
    summary = json.loads((tmp_path / "runs" / "synthetic" / "demo" / "summary.json").read_text())
    assert summary["best"]["recall@1"] >= summary["initial"]["recall@1"] + 0.10, summary


def test_many_non_finite_losses_stop_the_run_and_keep_the_last_checkpoint(tmp_path: Path, monkeypatch, capsys):
    import engine.step

    calls = {"n": 0}

    def finite_in_first_epoch_only(loss):
        calls["n"] += 1
        return calls["n"] <= 8 * 3  # epoch 0 (discriminators only): 8 iterations x 3 d-steps

    monkeypatch.setattr(engine.step, "_finite", finite_in_first_epoch_only)
    assert main_module.main([*tiny_args(tmp_path, "nan"), "--max_nonfinite", "3", "--plots", "false"]) == 1
    assert "3 consecutive iterations with a non-finite loss in epoch 1" in capsys.readouterr().err
    last = torch.load(tmp_path / "runs" / "synthetic" / "nan" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1


def test_every_run_state_field_survives_a_checkpoint():
    """A field added to RunState is saved and restored without being listed anywhere (no silent default)."""
    import dataclasses
    from types import SimpleNamespace

    from engine.trainer import RunState, _checkpoint_state, _restore
    from utilities.errors import UserError

    state = RunState()
    for number, f in enumerate(dataclasses.fields(RunState), start=3):
        value = getattr(state, f.name)
        changed = {list: [{"epoch": number}], dict: {"recall@1": number / 10}, int: number}[type(value)]
        setattr(state, f.name, changed)
    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    run = SimpleNamespace(cfg=SimpleNamespace(to_dict=dict), model=module, criterion=torch.nn.Linear(2, 1),
                          optimizers={"backbone": optimizer}, schedulers={}, scaler=None, state=state)  # fmt: skip
    stored = _checkpoint_state(run, full=True)
    run.state = RunState()
    _restore(run, stored)
    assert run.state == state

    del stored["run_state"]["best_epoch"]
    with pytest.raises(UserError, match=r"missing \['best_epoch'\]"):
        _restore(run, stored)


def test_discriminator_normalisation_and_evaluation_normalisation_are_separate_switches(monkeypatch):
    """Turning off the DADA ablation knob `normalize_features` leaves the evaluation embeddings normalised."""
    from types import SimpleNamespace

    from config import config_from_dict

    seen = []
    monkeypatch.setattr(engine.trainer, "evaluate_model", lambda *args, **kwargs: seen.append(kwargs["normalize"]))
    for values, expected in (({"normalize_features": False}, True), ({"eval_normalize": False}, False)):
        run = SimpleNamespace(cfg=config_from_dict(values), model=None, splits={}, device="cpu", dist=None)
        monkeypatch.setattr(engine.trainer, "evaluation_splits", lambda splits, use_val: [])
        engine.trainer._evaluate(run, use_val=False)
        assert seen[-1] is expected, values
