"""The README's commands work in the order given on a fresh store (issue #15).

Every line of the README's ``bash`` blocks runs, in order, in a temporary folder that holds a
copy of ``spaces/``, except by these rules (``SKIPPED``, each of which must still match a
line, so that the list stays current): the install lines (the test runs in the installed
environment), the checks line (it runs this suite), and the commands that name a space other
than ``quickstart`` (``table2``: 12 trainings, about 16 minutes; ``sampler-ablation``: a
512-step reference per job), its ``run`` included. ``edmgrid sql`` lines always run: on the
quickstart's store a query about another space returns no rows, but a wrong column or an
ambiguous name still fails. ``JOB_ID`` stands for a job of the store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A command is skipped when it starts with one of these or names one of these spaces.
SKIPPED = {
    "python3 -m venv": "install",
    "python -m pip install": "install",
    "ruff check .": "the checks and this very test suite",
    "table2": "12 trainings, about 16 minutes",
    "sampler-ablation": "42 jobs, each with a 512-step reference",
}


def readme_commands() -> list[str]:
    """The lines of the README's ``bash`` blocks (continuations joined)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


def skip_reason(command: str) -> str | None:
    if command.startswith("edmgrid sql "):
        return None
    for key, reason in SKIPPED.items():
        if command.startswith(key) or (" " not in key and re.search(rf"\b{key}\b", command)):
            return reason
    return None


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_every_skip_rule_still_matches_a_readme_command() -> None:
    commands = readme_commands()
    for key in SKIPPED:
        assert any(key in c for c in commands), f"no README command matches {key!r}: drop it"


def test_the_readme_commands_run_in_order_on_a_fresh_store_and_the_store_can_move(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "spaces", tmp_path / "spaces")
    ran = []
    for command in readme_commands():
        if skip_reason(command) is not None:
            continue
        if "JOB_ID" in command:
            job = sorted((tmp_path / "results" / "runs").glob("*.parquet"))[0].stem
            command = command.replace("JOB_ID", job)
        done = shell(command, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr and "error" not in done.stderr.lower(), command
        ran.append((command, done.stdout))
    names = " ".join(c for c, _ in ran)
    for needed in ("edmgrid run spaces/quickstart.yaml", "select family", "duckdb", "samples"):
        assert needed in names, needed
    (duck,) = [(c, out) for c, out in ran if "import duckdb" in c]
    assert "18" in duck[1]  # count(*) of the quickstart's rows

    moved = tmp_path / "moved" / "old results"
    moved.parent.mkdir()
    (tmp_path / "results").rename(moved)
    again = shell(duck[0].replace("cd results", f"cd '{moved}'"), tmp_path)
    assert again.returncode == 0 and "18" in again.stdout, again.stderr
    sql = shell(f"edmgrid sql 'select count(*) AS n from runs' -r '{moved}' --format csv", tmp_path)
    assert sql.returncode == 0 and sql.stdout.split() == ["n", "18"], sql.stderr


@pytest.mark.parametrize(
    ("command", "skipped"),
    [
        ("python -m pip install -e .", True),
        ("edmgrid run spaces/table2.yaml -w 2", True),
        ("edmgrid compare --space sampler-ablation --value fd", True),
        ("edmgrid run spaces/quickstart.yaml", False),
        ('edmgrid sql "select family, config from runs"', False),
        ("edmgrid sql \"select fd from runs where space = 'table2'\"", False),
    ],
)
def test_the_skip_rule_names_installs_checks_and_long_spaces_only(
    command: str, skipped: bool
) -> None:
    assert (skip_reason(command) is not None) == skipped
