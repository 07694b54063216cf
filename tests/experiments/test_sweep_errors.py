"""sweep.py's user errors: one line, exit code 2, before any run starts (no training here)."""

from __future__ import annotations

import pytest
from sweep_helpers import tiny_keys

import sweep


@pytest.fixture
def keys(tmp_path):
    return ["--out", str(tmp_path / "out"), *tiny_keys(tmp_path / "data")]


def fails(capsys, argv, *fragments):
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_grid_and_key_errors(capsys, keys, tmp_path):
    fails(capsys, [*keys, "--grid", "dadda=true,false"], "dadda", "dada")  # unknown key, with the closest
    fails(capsys, [*keys, "--grid", "dada=true,maybe"], "dada", "maybe")  # a bad value, main.py's message
    fails(capsys, [*keys, "--grid", "lr"], "key=value1,value2")
    fails(capsys, [*keys, "--grid", "seed=1,2"], "--seeds")
    fails(capsys, [*keys, "--epochz", "3"], "epochz")  # an extra key: main.py's validation
    fails(capsys, [*keys, "--epochs", "-1"], "epochs")
    fails(capsys, [*keys, "--resume", "x"], "--resume")
    fails(capsys, [*keys, "--grid", "dada=true,false", "--baseline", "dada=perhaps"], "--baseline")
    assert not (tmp_path / "out").exists()  # nothing started


def test_search_errors(capsys, keys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    line = fails(capsys, [*keys, "--search", str(space), "--trials", "2"], "val_classes")
    assert "test classes" in line
    with_val = [*keys, "--val_classes", "0.25", "--search", str(space)]
    for text, fragment in [
        ("lrr: {type: float, low: 0.1, high: 1}\n", "lrr"),
        ("lr: {type: floaty, low: 0.1, high: 1}\n", "type"),
        ("lr: {type: float, low: 1, high: 0.1}\n", "below"),
        ("lr: {type: float, low: 0, high: 1, log: true}\n", "log"),
        ("lr: {type: float, low: 0.1, high: 1, choices: [1]}\n", "choices"),
        ("mix_mode: {type: categorical, choices: [bogus]}\n", "mix_mode"),  # a value main.py refuses
        ("epochs: {type: int, low: -3, high: 2}\n", "epochs"),
        ("[1, 2]\n", "map configuration keys"),
    ]:
        space.write_text(text)
        fails(capsys, with_val, fragment)


def test_another_sweep_in_out_and_a_bad_storage_are_refused(capsys, keys, tmp_path, monkeypatch):
    import experiments.worker

    monkeypatch.setattr(experiments.worker, "run_worker", lambda spec, index=0, cuda_device=None: 0)
    assert sweep.main([*keys, "--grid", "dada=true,false", "--jobs", "1"]) == 0  # records the sweep, runs nothing
    capsys.readouterr()
    fails(capsys, [*keys, "--grid", "dada=true,false", "--epochs", "5"], "epochs", "another sweep", "--out")
    fails(capsys, [*keys, "--grid", "dada=true"], "grid")
    url = "postgresql://alice:s3cret@127.0.0.1:9/nowhere"
    line = fails(capsys, ["--out", str(tmp_path / "other"), *keys[2:], "--storage", url], "cannot be opened")
    assert "s3cret" not in line and "alice:***@127.0.0.1:9/nowhere" in line


def test_launch_errors_come_before_anything_is_submitted_or_recorded(capsys, keys, tmp_path):
    fails(capsys, [*keys, "--jobs", "0"], "--jobs must be at least 1")
    fails(capsys, [*keys, "--gpus_per_run", "0"], "--gpus_per_run must be at least 1")
    fails(capsys, [*keys, "--slurm_partition", "test", "--slurm_time", "0"], "--slurm_time must be at least 1")
    fails(capsys, [*keys, "--slurm_partition", "test", "--slurm_cpus_per_task", "-1"], "--slurm_cpus_per_task")
    fails(capsys, [*keys, "--slurm_partition", "test", "--slurm_nodes", "2"], "one task on one machine")
    fails(capsys, [*keys, "--slurm_partition", "test", "--slurm_gpus_per_node", "1", "--gpus_per_run", "2"], "exceeds")
    fails(capsys, [*keys, "--slurm_time", "30"], "--slurm_time needs --slurm_partition")
    fails(capsys, [*keys, "--wait"], "--wait needs --slurm_partition")
    assert not (tmp_path / "out").exists()  # nothing recorded, nothing submitted
