"""Rows say what made them, and a re-run tells rows of other code apart (issue #15)."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from fake_training import toy_space

import edmgrid
from edmgrid.run import provenance
from edmgrid.run.provenance import code_fingerprint
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ran(tmp_path: Path, cli: Callable[..., Any]) -> tuple[Path, Store]:
    space = Path(toy_space(tmp_path, "tiny", {"sampler.timesteps.num_steps": [2, 3]}).source)
    store = Store(tmp_path / "results")
    assert cli("run", space, "-r", store.root, "-x", "serial").code == 0
    return space, store


def test_every_row_records_versions_machine_checkout_and_code(ran: tuple[Path, Store]) -> None:
    _, store = ran
    row = store.row(store.job_ids()[0])
    assert row is not None
    assert row["edmgrid_version"] == edmgrid.__version__
    assert row["torch_version"] == torch.__version__
    assert row["python_version"] == platform.python_version()
    assert row["host"] == platform.node()
    assert row["code_fingerprint"] == code_fingerprint()
    checkout = Path(edmgrid.__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # run from a checkout (as the test suite is)
        assert row["git_commit"] == head.stdout.strip()
        assert isinstance(row["git_dirty"], bool)


def _copy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "edmgrid"
    shutil.copytree(provenance.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE", copy)
    return copy


def test_the_fingerprint_changes_with_computing_code_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy_package(tmp_path, monkeypatch)
    fingerprint = provenance.code_fingerprint.__wrapped__
    before = fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", before)
    for harmless in ("run/runner.py", "cli.py", "files.py"):
        (copy / harmless).write_text((copy / harmless).read_text() + "\n# edited\n")
    assert fingerprint() == before
    for computing in ("engine/sample.py", "design/solver.py", "config/metrics.py"):
        text = (copy / computing).read_text()
        (copy / computing).write_text(text + "\n# edited\n")
        assert fingerprint() != before, computing
        (copy / computing).write_text(text)


def test_outside_a_checkout_commit_and_dirty_are_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_package(tmp_path, monkeypatch)
    inside = subprocess.run(["git", "-C", str(tmp_path), "rev-parse"], capture_output=True)
    if inside.returncode == 0:
        pytest.skip(f"{tmp_path} is inside a git work tree")
    assert provenance.git_state.__wrapped__() == (None, None)


def test_rows_of_other_code_are_kept_with_a_warning_and_redone_with_rerun_stale(
    ran: tuple[Path, Store], cli: Callable[..., Any]
) -> None:
    space, store = ran
    old, kept = store.job_ids()
    path = store.result_path(old)
    frame = pd.read_parquet(path)
    frame["code_fingerprint"] = "0123456789abcdef"  # as if an older edmgrid had computed it
    frame.to_parquet(path)
    stamp = path.stat().st_mtime_ns

    again = cli("run", space, "-r", store.root, "-x", "serial")  # space and code as before
    assert again.code == 0
    assert "warning: 1 of 2 rows of space tiny were computed by other code" in again.err
    assert "--rerun-stale" in again.err
    assert path.stat().st_mtime_ns == stamp  # kept as it is

    kept_stamp = store.result_path(kept).stat().st_mtime_ns
    redo = cli("run", space, "-r", store.root, "-x", "serial", "--rerun-stale")
    assert redo.code == 0, redo.err
    assert "re-running 1 of 2 rows of space tiny" in redo.err
    row = store.row(old)
    assert row is not None and row["code_fingerprint"] == code_fingerprint()
    assert store.result_path(kept).stat().st_mtime_ns == kept_stamp  # current rows stay

    quiet = cli("run", space, "-r", store.root, "-x", "serial")
    assert quiet.code == 0 and "other code" not in quiet.err
