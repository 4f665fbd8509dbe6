"""A single-node Slurm on localhost for the tests (Debian's ``slurm-wlm`` and ``munge``).

``start(folder)`` writes a minimal ``slurm.conf`` (no cgroups, no accounting, state in
``folder``), starts ``munged`` if none runs, then ``slurmctld`` and ``slurmd``, and waits for
``sinfo`` to show the node idle; it returns a ``Cluster`` (``SLURM_CONF`` set for this process
and its children) or raises ``Unavailable`` with the reason. ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONF = """\
ClusterName=edmgrid-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldPort={port}
SlurmdPort={port2}
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdTimeout=30
NodeName=localhost CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """Slurm cannot run here; the message says why."""


@dataclass
class Cluster:
    folder: Path
    conf: Path
    seconds: float  # how long starting took
    pids: list[int] = field(default_factory=list)  # the daemons this started

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        os.environ.pop("SLURM_CONF", None)


def _pid(path: Path, deadline: float) -> int:
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise Unavailable(f"{path.name} never appeared")
        time.sleep(0.05)
    return int(path.read_text().split()[0])


def start(folder: Path, cpus: int = 2, port: int = 16817, timeout: float = 30.0) -> Cluster:
    """Start Slurm with state in ``folder`` (see the module docstring)."""
    missing = [d for d in ("munged", "slurmctld", "slurmd", "sinfo") if not _which(d)]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root")
    begin = time.monotonic()
    deadline = begin + timeout
    pids = []
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        shutil.chown(run, "munge", "munge")
        started = subprocess.run(
            ["runuser", "-u", "munge", "--", _which("munged")], capture_output=True, text=True
        )
        if started.returncode != 0:
            raise Unavailable(f"munged did not start: {started.stderr.strip()}")
        pids.append(_pid(run / "munged.pid", deadline))
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(CONF.format(folder=folder, port=port, port2=port + 1, cpus=cpus))
    os.environ["SLURM_CONF"] = str(conf)
    cluster = Cluster(folder, conf, 0.0, pids)
    try:
        for daemon, args in (("slurmctld", ["-i"]), ("slurmd", ["-N", "localhost"])):
            out = subprocess.run([_which(daemon), *args], capture_output=True, text=True)
            if out.returncode != 0:
                raise Unavailable(f"{daemon} did not start: {out.stderr.strip()}")
            cluster.pids.append(_pid(folder / f"{daemon}.pid", deadline))
        while "idle" not in _sinfo():
            if time.monotonic() > deadline:
                log = (folder / "slurmctld.log").read_text()[-500:]
                raise Unavailable(f"the node never became idle: {_sinfo()!r}; {log}")
            time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    cluster.seconds = time.monotonic() - begin
    return cluster


def _sinfo() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _which(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or ""
