"""Claim files: one live run per job, stale claims of dead runs taken over, leftovers swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edmgrid.run import claims as claims_module
from edmgrid.run.claims import Claims, active_run, pid_alive


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_claim(root: Path, name: str, pid: int, host: str, age: float = 0.0) -> Path:
    path = root / "claims" / f"{name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "time": time.time() - age}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_claim_is_held_by_one_run_until_released(tmp_path: Path) -> None:
    first, second = Claims(tmp_path), Claims(tmp_path)
    assert first.acquire("abc")
    assert not second.acquire("abc")
    assert second.taken("abc")
    first.release("abc")
    assert second.acquire("abc")


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    pid = dead_pid()
    assert not pid_alive(pid)
    claims = Claims(tmp_path)
    write_claim(tmp_path, "abc", pid, claims.host)
    assert not claims.taken("abc")
    assert claims.acquire("abc")
    owner = json.loads(claims.path("abc").read_text())
    assert owner["pid"] == os.getpid()


def test_a_claim_from_another_host_is_stale_only_once_its_heartbeat_is_old(
    tmp_path: Path,
) -> None:
    claims = Claims(tmp_path)
    write_claim(tmp_path, "fresh", 1, "elsewhere")
    write_claim(tmp_path, "old", 1, "elsewhere", age=claims_module.STALE_AFTER_S + 5)
    assert not claims.acquire("fresh")
    assert claims.acquire("old")


def test_the_heartbeat_keeps_held_claims_fresh(tmp_path: Path) -> None:
    claims = Claims(tmp_path)
    claims.acquire("abc")
    old = time.time() - 1000
    os.utime(claims.path("abc"), (old, old))
    claims.touch()
    assert claims.path("abc").stat().st_mtime > old + 900


def test_leaving_the_block_releases_every_claim(tmp_path: Path) -> None:
    with Claims(tmp_path) as claims:
        claims.acquire("a")
        claims.acquire("b")
    assert not list((tmp_path / "claims").glob("*.claim"))


def test_a_run_alone_sweeps_leftover_claims_and_tmp_files(tmp_path: Path) -> None:
    write_claim(tmp_path, "left", os.getpid(), "h")
    (tmp_path / "runs").mkdir()
    tmp = tmp_path / "runs" / ".x.parquet.abc.tmp"
    tmp.write_text("partial")
    kept = tmp_path / "runs" / "0123456789abcdef.parquet"
    kept.write_text("row")
    with active_run(tmp_path) as alone:
        assert alone
    assert not tmp.exists() and not (tmp_path / "claims" / "left.claim").exists()
    assert kept.exists()


def test_a_run_beside_a_live_one_sweeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir(parents=True)
    tmp = tmp_path / "runs" / ".x.parquet.abc.tmp"
    with active_run(tmp_path):
        tmp.write_text("being written by the first run")
        with active_run(tmp_path) as alone:
            assert not alone
        assert tmp.exists()


def test_an_empty_claim_left_by_a_crash_is_stale(tmp_path: Path) -> None:
    claims = Claims(tmp_path)
    claims.path("abc").parent.mkdir(parents=True)
    claims.path("abc").write_text("")
    assert claims.acquire("abc")
