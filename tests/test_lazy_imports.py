"""Commands that only read specs load neither torch nor pandas (``edmgrid/lazy.py``): ``show``,
``axes``, an ``edmgrid run`` with nothing to do, and planning a space of trained models; the
lazy torch is the real module once used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_training import ROOT, toy_space

from edmgrid.run.executors import SerialExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

#: Printed last by a probe: which of the heavy modules the process loaded.
HEAVY = ("torch._C", "pandas")
REPORT = f"atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules])))"


def probe(code: str, *args: str | Path) -> tuple[list[str], str]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``); the heavy modules it
    loaded, and its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", f"import atexit, json, sys; {REPORT}; {code}", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    *output, last = proc.stdout.splitlines()
    return json.loads(last), "\n".join(output)


def edmgrid(*args: str | Path) -> tuple[list[str], str]:
    return probe("from edmgrid.cli import main; main()", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "spaces/table2.yaml"],
        ["show", "spaces/sampler-ablation.yaml", "--json"],
        ["axes"],
    ],
)
def test_show_and_axes_load_neither_torch_nor_pandas(args: list[str]) -> None:
    loaded, output = edmgrid(*args)
    assert loaded == []
    assert output


def test_a_run_of_an_edited_space_with_nothing_to_do_loads_neither_torch_nor_pandas(
    tmp_path: Path,
) -> None:
    # VP time steps: their default σ range is checked when the space is validated
    space = toy_space(tmp_path, "edited", {"sampler.timesteps.name": ["vp", "edm"]}, seeds="0-3")
    results = tmp_path / "r"
    first = run_space(space, Store(results), executor=SerialExecutor(), show_progress=False)
    assert first.ok and first.counts["done"] == 2
    path = Path(space.source)
    path.write_text(path.read_text() + "# edited: the fingerprint differs, the jobs do not\n")
    loaded, output = edmgrid("run", path, "-r", results)  # the default local executor
    assert loaded == []
    assert "│ 0    │ 2       │ 0" in output  # done, skipped, failed


def test_planning_the_trainings_of_table2_loads_no_torch(tmp_path: Path) -> None:
    code = (
        "from edmgrid.run.jobs import EngineTrainer; from edmgrid.run.runner import plan; "
        "from edmgrid.run.store import Store; from edmgrid.config.space import load_space; "
        "p = plan(load_space('spaces/table2.yaml'), Store(sys.argv[1]), EngineTrainer()); "
        "print(len(p.trains), len(p.evaluations))"
    )
    loaded, output = probe(code, tmp_path / "r")
    assert loaded == []
    assert output == "12 12"


def test_the_lazy_torch_computes_on_first_use_and_is_then_the_real_module() -> None:
    code = (
        "from edmgrid.design.timesteps import EDMSteps; from edmgrid.lazy import torch; "
        "assert 'torch._C' not in sys.modules; "
        "steps = EDMSteps(num_steps=18).sigma_steps(None, 0.002, 80.0); "
        "print(steps[0].item(), steps[-1].item(), steps.dtype); "
        "import torch as real; assert real is torch and type(torch) is type(sys)"
    )
    loaded, output = probe(code)
    assert loaded == ["torch._C"]
    first, last, dtype = output.split()
    assert float(first) == pytest.approx(80.0, rel=1e-12)
    assert float(last) == pytest.approx(0.002, rel=1e-12)
    assert dtype == "torch.float64"
