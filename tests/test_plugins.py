"""Plugins: a researcher's own choices on any axis, from a space, --plugin or an entry point."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from edmgrid.config import plugins
from edmgrid.config.axes import all_registries
from edmgrid.config.job import JobSpec
from edmgrid.run.store import Store

EXAMPLE = ROOT / "examples" / "plugin"


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test's plugins register, import or put on the path is gone after it."""
    saved = {reg: dict(reg._choices) for reg in all_registries().values()}
    modules = set(sys.modules)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    yield
    for reg, choices in saved.items():
        reg._choices = choices
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    plugins._rebuild("the test's")


def edmgrid(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """``python -m edmgrid ARGS`` in a fresh process (plugins are imported per process)."""
    done = subprocess.run(
        [sys.executable, "-m", "edmgrid", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=600,
    )
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr}


def test_example_plugin_space_runs_end_to_end_and_an_edited_plugin_reruns_its_jobs(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "plugin")
    here = tmp_path / "plugin"
    first = edmgrid("run", "space.yaml", "-w", "1", cwd=here)
    assert first["code"] == 0, first["err"]
    query = "select solver, schedule, schedule_p, solver_plugin, nfe, ode_error, job_id from runs"
    rows = Store(here / "results").query(query).to_dict("records")
    assert len(rows) == 4
    assert {r["nfe"] for r in rows if r["solver"] == "kutta3"} == {3 * 8 - 2}  # measured
    assert {r["nfe"] for r in rows if r["solver"] == "heun"} == {2 * 8 - 1}
    assert {r["solver_plugin"] for r in rows if r["solver"] == "kutta3"} == {
        f"my_lab.choices:{_sha(here)}"
    }
    error = {(r["solver"], r["schedule"]): r["ode_error"] for r in rows}
    for schedule in ("linear", "power"):  # third order beats second at 8 steps
        assert error["kutta3", schedule] < error["heun", schedule] / 10
    kutta3 = next(r["job_id"] for r in rows if r["solver"] == "kutta3")
    drawn = edmgrid("samples", kutta3, "--n", "4", "--out", "grid.png", cwd=here)
    assert drawn["code"] == 0 and (here / "grid.png").exists(), drawn["err"]  # plugin reloaded
    again = edmgrid("run", "space.yaml", cwd=here)
    assert again["code"] == 0 and "│ 0    │ 4 " in again["out"]  # nothing re-ran
    with (here / "my_lab" / "choices.py").open("a") as f:
        f.write("# edited\n")
    edited = edmgrid("run", "space.yaml", "-x", "serial", cwd=here)
    # the jobs with a choice of the plugin re-run; heun on linear uses none and is kept
    assert edited["code"] == 0 and "│ 3    │ 1 " in edited["out"], edited["out"]
    ids = Store(here / "results").query(query).to_dict("records")
    assert len(ids) == 7 and len({r["job_id"] for r in ids}) == 7  # old rows kept apart


def _sha(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "my_lab" / "choices.py").read_bytes()).hexdigest()[:12]


def test_plugin_choices_validate_and_are_listed_in_errors_like_built_ins(tmp_path, cli, registries):
    space = tmp_path / "space.yaml"
    shutil.copytree(EXAMPLE / "my_lab", tmp_path / "my_lab")
    text = (EXAMPLE / "space.yaml").read_text()
    space.write_text(text.replace("[heun, kutta3]", "[heun, kutta4]"))
    result = cli("show", space)
    assert result.code == 2
    assert "space.yaml:12: sampler.solver: solver needs 'name: CHOICE'" in result.err
    assert "dpmpp, ipndm, kutta3 (got name: 'kutta4')" in result.err
    space.write_text(text)
    shown = json.loads(cli("show", space, "--json").out)
    solvers = [job["sampler"]["solver"] for job in shown["jobs"]]
    assert {s["name"] for s in solvers} == {"heun", "kutta3"}
    assert all(s["S_max"] == "inf" for s in solvers)  # strict JSON


def test_plugin_option_adds_choices_to_axes_and_to_the_schema(cli, registries, monkeypatch):
    monkeypatch.chdir(EXAMPLE)
    axes = json.loads(cli("axes", "--json", "--plugin", "my_lab.choices").out)
    assert axes["schedule"]["power"]["params"] == {"p": 2.0}
    assert axes["solver"]["kutta3"]["plugin"].startswith("my_lab.choices:")
    assert axes["solver"]["heun"]["params"]["S_max"] == "inf"
    assert "plugin" not in axes["solver"]["heun"]
    schema = json.loads(cli("schema", "--plugin", "my_lab.choices").out)
    assert "Kutta3" in schema["$defs"] and "preset" in schema["$defs"]["Kutta3"]["properties"]


def test_the_space_schema_accepts_the_shipped_spaces_and_refuses_unknown_choices(cli):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json.loads(cli("schema").out))
    for space in sorted((ROOT / "spaces").glob("*.yaml")):
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(space.read_text()))]
        assert errors == [], space.name
    bad = {"name": "x", "base": {"sampler": {"solver": {"name": "nope"}}}}
    assert not validator.is_valid(bad)


BROKEN = {
    "failing import": (
        "import math\nraise RuntimeError('no GPU here')\n",
        r"plugin 'broken' failed to import \(.*broken\.py:2: RuntimeError: no GPU here\); fix it",
    ),
    "no choice name": (
        "from edmgrid.design.schedule import Schedule, schedules\n\n"
        "@schedules.register\nclass Mine(Schedule):\n    name: str\n",
        r"ValueError: schedule: Mine needs a default for its 'name' field, e.g\. name: "
        r"Literal\['my_schedule'\] = 'my_schedule'",
    ),
    "a taken name": (
        "from typing import Literal\nfrom edmgrid.design.solver import Solver, solvers\n\n"
        "@solvers.register\nclass Mine(Solver):\n    name: Literal['heun'] = 'heun'\n",
        r"solver: Mine takes the name 'heun' of edmgrid\.design\.solver\.Heun; rename it",
    ),
    "a field pydantic cannot check": (
        "from typing import Literal\nfrom edmgrid.design.solver import Solver, solvers\n\n"
        "class Opaque: ...\n\n@solvers.register\nclass Mine(Solver):\n"
        "    name: Literal['mine'] = 'mine'\n    table: Opaque = None\n",
        r"PydanticSchemaGenerationError: Unable to generate pydantic-core schema for "
        r"<class 'broken\.Opaque'>",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_exit_2_naming_it_and_nothing_is_written(
    case, tmp_path, cli, registries
):
    source, reason = BROKEN[case]
    (tmp_path / "broken.py").write_text(source)
    space = tmp_path / "space.yaml"
    text = (EXAMPLE / "space.yaml").read_text().replace("[my_lab.choices]", "[broken]")
    space.write_text(text)
    result = cli("run", space, "-r", tmp_path / "results")
    assert result.code == 2
    assert "space.yaml:3: plugins[0]: " in result.err
    assert re.search(reason, result.err.replace("\n", "")), result.err
    assert not (tmp_path / "results").exists()


def test_an_unimportable_plugin_says_where_it_was_looked_for(tmp_path, cli, registries):
    space = tmp_path / "space.yaml"
    space.write_text((EXAMPLE / "space.yaml").read_text())
    result = cli("show", space)
    assert result.code == 2
    assert f"plugin 'my_lab.choices' is not importable from {tmp_path} or the Python path" in (
        result.err.replace("\n", "")
    )
    assert cli("axes", "--plugin", "no such").code == 2


def test_a_record_of_an_edited_plugin_is_refused(registries, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins.load_plugins(["my_lab.choices"])
    job = JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "sampler": {"solver": {"name": "kutta3"}},
            "metrics": [{"name": "ode_error"}],
        }
    )
    record = job.resolved()
    assert plugins.recorded_plugins(record) == ["my_lab.choices"]
    assert JobSpec.model_validate(record) == job
    record["sampler"]["solver"]["plugin"] = "my_lab.choices:000000000000"
    with pytest.raises(ValueError, match=r"recorded with plugin my_lab\.choices:000000000000"):
        JobSpec.model_validate(record)


def test_jobs_without_plugins_keep_their_ids():
    job = JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {"kind": "trained"},
            "sampler": {"solver": {"name": "heun", "S_churn": 10}},
            "metrics": [{"name": "fd"}],
        }
    )
    assert job.job_id == "d70a32542f77edb7"  # pinned: loading plugin support changes no id
    assert "plugin" not in json.dumps(job.resolved())


def test_an_installed_packages_entry_point_registers_its_choices(tmp_path):
    (tmp_path / "lab_choices.py").write_text(
        textwrap.dedent(
            '''
            from typing import Literal
            from edmgrid.design.p_train import PTrain, p_trains


            @p_trains.register
            class Fixed(PTrain):
                """p_train = δ(σ − 1): every training example at σ = 1."""

                name: Literal["fixed"] = "fixed"
            '''
        )
    )
    dist = tmp_path / "lab_choices-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-choices\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[edmgrid.choices]\nlab = lab_choices\n")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    result = edmgrid("axes", "--json", cwd=tmp_path, env=env)
    assert result["code"] == 0, result["err"]
    assert json.loads(result["out"])["p_train"]["fixed"]["plugin"].startswith("lab_choices:")


ENGINE_PLUGIN = '''
"""A data set, a model kind and a metric of one's own, with their engine implementations."""

from typing import Literal

import torch

from edmgrid.config.data import DataSpec, datasets
from edmgrid.config.metrics import Metric, metrics
from edmgrid.config.model import ModelSpec, models
from edmgrid.engine.data import Dataset, load_data
from edmgrid.engine.evaluate import denoiser_of
from edmgrid.engine.metrics import compute


@datasets.register
class Gauss(DataSpec):
    """1000 points of N(mu, 0.5²) in 2-d."""

    name: Literal["gauss"] = "gauss"
    mu: float = 0.3


@models.register
class Ideal(ModelSpec):
    """The ideal denoiser of N(mu, s²)."""

    kind: Literal["ideal"] = "ideal"
    s: float = 0.5


@metrics.register
class Mean(Metric):
    """The mean of the samples."""

    name: Literal["sample_mean"] = "sample_mean"


@load_data.register
def _gauss(spec: Gauss) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(x=spec.mu + 0.5 * torch.randn(1000, 2, generator=g), labels=None, label_dim=0)


@denoiser_of.register
def _ideal(model: Ideal, job, dataset, cache_dir):
    mu = job.data.mu
    return lambda x, sigma: (model.s**2 * x + sigma**2 * mu) / (model.s**2 + sigma**2)


@compute.register
def _mean(metric: Mean, ev) -> dict:
    return {"sample_mean": float(ev.samples.mean())}
'''


def test_plugin_data_model_and_metric_kinds_run_with_their_engine_implementations(
    tmp_path, registries, monkeypatch, one_thread
):
    from edmgrid.run.jobs import Task, run_job

    (tmp_path / "lab_engine.py").write_text(ENGINE_PLUGIN)
    plugins.load_plugins(["lab_engine"], tmp_path)
    job = JobSpec.model_validate(
        {
            "data": {"name": "gauss", "mu": 0.3},
            "model": {"kind": "ideal"},
            "metrics": [{"name": "sample_mean"}, {"name": "fd_raw"}],
            "seeds": "0-511",
        }
    )
    row = run_job(Task.evaluation(job, "t"), Store(tmp_path / "results"))
    assert row["status"] == "done", row["error"]
    assert row["sample_mean"] == pytest.approx(0.3, abs=0.05)  # N(0.3, 0.5²), 1024 values
    assert row["fd_raw"] < 0.05 and row["data_plugin"].startswith("lab_engine:")


DOCS_PREAMBLE = """
import itertools, math
from typing import ClassVar, Literal
import torch
from pydantic import Field
from edmgrid.config.metrics import Metric, metrics
from edmgrid.design.augment import Augment, augments
from edmgrid.design.loss_weight import LossWeight, loss_weights
from edmgrid.design.networks import Network, networks
from edmgrid.design.p_train import PTrain, p_trains
from edmgrid.design.precond import Precond, preconds
from edmgrid.design.scaling import Scaling, scalings
from edmgrid.design.schedule import Schedule, schedules
from edmgrid.design.solver import Solver, StepNoise, report_step, solvers
from edmgrid.design.timesteps import Timesteps, timesteps
from edmgrid.engine.metrics import Evaluation, compute
"""


def test_the_examples_of_docs_extending_register_and_sample_a_training_batch(
    tmp_path, registries, one_thread
):
    docs = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", docs, re.S)
    (tmp_path / "doc_choices.py").write_text(DOCS_PREAMBLE + "\n\n".join(blocks))
    plugins.load_plugins(["doc_choices"], tmp_path)
    job = JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {
                "kind": "trained",
                "network": {"arch": "linear"},
                "precond": {"name": "skipless"},
                "loss_weight": {"name": "snr"},
                "p_train": {"name": "log_uniform"},
                "augment": {"name": "xflip"},
            },
            "sampler": {
                "solver": {"name": "kutta3"},
                "schedule": {"name": "power"},
                "scaling": {"name": "half"},
                "timesteps": {"name": "geometric"},
            },
            "metrics": [{"name": "sample_mean"}],
        }
    )
    model = job.model
    images = torch.zeros(4, 1, 8, 8)
    sigma = model.p_train.sample(4)
    assert sigma.dtype == torch.float32 and bool((sigma > 0.002 - 1e-6).all())
    augmented, labels = model.augment(images)
    net = model.network.build(img_resolution=8, img_channels=1)
    _, _, c_in, c_noise = model.precond.coefficients(sigma)
    out = net(c_in.reshape(-1, 1, 1, 1) * augmented, c_noise, None, labels)
    assert out.shape == images.shape and labels.shape == (4, 1)
    assert bool((model.loss_weight(sigma) > 4).all())
    steps = job.sampler.timesteps.sigma_steps(job.sampler.schedule, 0.002, 80.0)
    assert float(steps[0]) == 80.0 and float(steps[-1]) == pytest.approx(0.002)


def test_plugin_option_of_show_loads_a_module_from_the_spaces_folder(tmp_path, cli, registries):
    shutil.copytree(EXAMPLE / "my_lab", tmp_path / "my_lab")
    space = tmp_path / "space.yaml"
    space.write_text((EXAMPLE / "space.yaml").read_text().replace("plugins: [my_lab.choices]", ""))
    assert cli("show", space).code == 2  # kutta3 is unknown without the plugin
    shown = cli("show", space, "--plugin", "my_lab.choices")
    assert shown.code == 0 and "plugin-example: 4 jobs" in shown.out
