"""eval.py --embeddings as a subprocess: table, JSON output equal to compute_metrics, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metrics import compute_metrics, compute_query_gallery_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    # block-buffered standard streams, as when a user pipes the output (eval.py ends without the interpreter's
    # teardown, so it must flush them itself)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "eval.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(20), 4), [99]])  # one singleton class
    x = rng.standard_normal((20, 16))[np.minimum(labels, 19)] + 0.8 * rng.standard_normal((81, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_embeddings_mode_prints_table_and_writes_json(tmp_path: Path) -> None:
    x, y = _data()
    np.savez(tmp_path / "emb.npz", embeddings=x, labels=y)
    names = ["recall@1", "recall@4", "map@r", "r_precision", "nmi", "f1"]
    done = _run(
        "--embeddings",
        str(tmp_path / "emb.npz"),
        "--output",
        str(tmp_path / "out.json"),
        "--evaluation_metrics",
        "['e_recall@1',",
        "'e_recall@4']",
        "map@r",
        "r_precision",
        "nmi",
        "f1",
    )
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "out.json").read_text())
    assert written == compute_metrics(x, y, names)
    assert list(written) == names
    assert f"| recall@1    | {written['recall@1']:.4f} |" in done.stdout
    assert "1 excluded" in done.stdout


def test_query_gallery_file_uses_default_metrics(tmp_path: Path) -> None:
    x, y = _data(1)
    np.savez(
        tmp_path / "qg.npz",
        query_embeddings=x[0::2],
        query_labels=y[0::2],
        gallery_embeddings=x[1::2],
        gallery_labels=y[1::2],
    )
    done = _run(
        "--embeddings", str(tmp_path / "qg.npz"), "--output", str(tmp_path / "out.json"), "--eval_backend", "torch"
    )
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "out.json").read_text())
    assert list(written) == [*(f"recall@{k}" for k in (1, 10, 20, 30, 40, 50)), "map@50_inshop", "map@r"]
    assert written == compute_query_gallery_metrics(x[0::2], y[0::2], x[1::2], y[1::2], list(written))
    assert 0.3 < written["recall@1"] <= written["recall@10"] == 1.0


def _bad_files(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    x, y = _data()
    np.savez(tmp_path / "wrong_keys.npz", feats=x, labels=y)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02not a zip archive at all")
    x_nan = x.copy()
    x_nan[3, 0] = np.nan
    np.savez(tmp_path / "nan.npz", embeddings=x_nan, labels=y)
    np.savez(tmp_path / "short.npz", embeddings=x, labels=y[:-3])
    np.savez(tmp_path / "ok.npz", embeddings=x, labels=y)
    return {
        "missing": (["--embeddings", str(tmp_path / "absent.npz")], "does not exist"),
        "wrong_keys": (["--embeddings", str(tmp_path / "wrong_keys.npz")], "expected"),
        "not_npz": (["--embeddings", str(tmp_path / "checkpoint.pt")], "not a readable .npz"),
        "nan": (["--embeddings", str(tmp_path / "nan.npz")], "NaN"),
        "lengths": (["--embeddings", str(tmp_path / "short.npz")], "lengths must match"),
        "unknown_metric": (
            ["--embeddings", str(tmp_path / "ok.npz"), "--evaluation_metrics", "recal@1"],
            "unknown metric",
        ),
        "no_source": ([], "exactly one of --embeddings or --checkpoint"),
        "both_sources": (["--embeddings", str(tmp_path / "ok.npz"), "--checkpoint", "x.pt"], "not allowed"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "wrong_keys", "not_npz", "nan", "lengths", "unknown_metric", "no_source", "both_sources"]
)
def test_user_errors_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    args, message = _bad_files(tmp_path)[case]
    done = _run(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
