"""The many-machine path: a throwaway PostgreSQL server (initdb + pg_ctl, a non-root user, a loopback port) and two
sweep.py commands in two processes cooperating through it."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from ports import free_port
from sweep_helpers import REPO, read_csv, sweep_command, tiny_keys

from experiments.storage import open_storage

INSTALL = "PostgreSQL server binaries (initdb, pg_ctl) missing: apt-get install postgresql"


def postgres_binary(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package puts them (/usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found or (candidates[-1] if candidates else None)


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(INSTALL)
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: a throwaway cluster of an unprivileged user
        user = pwd.getpwnam("nobody")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "nobody", "--"]
    data, port = folder / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {folder} -F"
        pg(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_processes_share_a_postgresql_study(postgres_url, tmp_path):
    # two "machines": each its own OUT, one study in the database
    args = ["--seeds", "0", "--grid", "dada=true,false", "--study", "pg_sweep", "--storage", postgres_url,
            "--threads", "1", *tiny_keys(tmp_path / "data", epochs=1)]  # fmt: skip
    outs = [tmp_path / "machine_a", tmp_path / "machine_b"]
    processes = [
        subprocess.Popen(
            sweep_command("--out", str(out), *args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for out in outs
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="pg_sweep.runs", storage=postgres_url).get_trials()
    assert sorted(t.user_attrs["setting"] for t in trials) == ["dada=false", "dada=true"]  # each run once
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for setting in ("dada=true", "dada=false"):
        trained = [out for out in outs if (out / "runs" / setting / "seed0" / "summary.json").is_file()]
        assert len(trained) == 1, setting  # trained on one machine only
    for out in outs:  # both machines' results.csv hold the whole sweep, from the database
        assert [r["status"] for r in read_csv(out / "results.csv")] == ["done", "done"]


def test_workers_opening_a_new_database_together_all_get_the_storage(postgres_url):
    """Every worker of a new sweep creates Optuna's tables at once; the losers of that race open it again."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE DATABASE opened_together")
    url = postgres_url.rpartition("/")[0] + "/opened_together"
    start = threading.Barrier(6)

    def open_at_once() -> None:
        start.wait()
        open_storage("unused", url)

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(open_at_once) for _ in range(6)]:
            future.result()  # a UserError here: a worker lost the race and gave up
