"""A throwaway single-node SLURM cluster for tests: munged, slurmctld and slurmd on loopback ports.

Everything lives in one temporary folder (munge key and socket, slurm.conf, state, spool, logs); the daemons
run in the foreground as children of the test process and are stopped, by their process ids, when the
context ends, also on failure. Needs Debian's `slurm-wlm` and `munge` packages and root (slurmd starts jobs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ports import free_port

INSTALL = "apt-get install -y slurm-wlm munge"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def missing() -> str | None:
    """Why the cluster cannot start here (None: it can)."""
    absent = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return f"SLURM binaries missing ({', '.join(absent)}): {INSTALL}"
    if os.geteuid() != 0:
        return "the test SLURM cluster starts slurmd, which runs jobs as their user: run the test as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _config(folder: Path, node: str, cpus: int) -> str:
    return f"""\
ClusterName=dadatest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge.socket"}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _wait(condition, seconds: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise RuntimeError(f"test SLURM cluster: {what} not within {seconds:.0f} s\n{tails}")
        time.sleep(0.2)


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Start the cluster; yields the environment that points SLURM's commands (and submitit) at it."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node, os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = [folder / "munged.log", folder / "slurmctld.log", folder / "slurmd.log"]
    commands = [
        [_binary("munged"), "-F", "-f", f"--key-file={key}", f"--socket={folder / 'munge.socket'}",
         f"--pid-file={folder / 'munged.pid'}", f"--log-file={logs[0]}", f"--seed-file={folder / 'munge.seed'}"],
        [_binary("slurmctld"), "-D", "-c", "-i", "-f", str(conf)],
        [_binary("slurmd"), "-D", "-f", str(conf)],
    ]  # fmt: skip
    daemons: list[subprocess.Popen] = []
    try:
        for command in commands:
            daemons.append(
                subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
            )
            if command[0].endswith("munged"):
                _wait((folder / "munge.socket").exists, 30, "munged's socket", logs)

        def node_ready() -> bool:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return state.stdout.strip() == "idle"

        _wait(node_ready, 60, "an idle node", logs)
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=20)
