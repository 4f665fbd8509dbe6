"""Official EDM network pickles (with a stand-in of the NVlabs code) and module:function nets."""

from __future__ import annotations

import os
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edmgrid.cli import app
from edmgrid.config.job import JobSpec
from edmgrid.engine.denoiser import Denoiser
from edmgrid.engine.evaluate import draw_samples, sample_seeds
from edmgrid.engine.models import _unpickle_ema, load_network_pickle
from edmgrid.errors import DataError
from edmgrid.run.jobs import Task, run_job
from edmgrid.run.store import Store

#: A stand-in for a NVlabs/edm checkout: the pickle refers to ``training.networks``, which
#: imports ``torch_utils`` like the official code does.
NETWORKS = '''
import torch
from torch_utils import persistence


@persistence.persistent_class
class GaussianPrecond(torch.nn.Module):
    """The official interface around the ideal denoiser of N(0, s²I)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0.0,
                 sigma_max=float("inf"), s=0.5, grid=None):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = (
            img_resolution, img_channels, label_dim)
        self.sigma_min, self.sigma_max, self.s, self.grid = sigma_min, sigma_max, s, grid
        self.weight = torch.nn.Parameter(torch.ones([]))
        self.calls = []

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        self.calls.append((x.dtype, sigma.shape, class_labels, torch.is_grad_enabled()))
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        return self.weight * x * self.s ** 2 / (self.s ** 2 + sigma ** 2)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        return sigma if self.grid is None else (sigma / self.grid).round() * self.grid
'''

ENTRYPOINTS = """
from training.networks import GaussianPrecond


def gaussian(s=0.5):
    return GaussianPrecond(img_resolution=8, img_channels=1, s=s)


def not_a_module():
    return 3
"""


@pytest.fixture(autouse=True)
def fresh(one_thread: None) -> None:
    """No network pickle cached from another test."""
    _unpickle_ema.cache_clear()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake NVlabs/edm checkout (``torch_utils``, ``training``) on sys.path for this test."""
    root = tmp_path / "edm"
    (root / "torch_utils").mkdir(parents=True)
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text("def persistent_class(c):\n    return c\n")
    (root / "training").mkdir()
    (root / "training" / "__init__.py").write_text("")
    (root / "training" / "networks.py").write_text(textwrap.dedent(NETWORKS))
    (root / "mynets.py").write_text(ENTRYPOINTS)
    for name in ("torch_utils", "torch_utils.persistence", "training", "training.networks",
                 "mynets"):  # fmt: skip
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    return root


def _hide(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fake checkout unimportable again, as on a machine without the NVlabs code."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(checkout)])
    for name in ("training", "training.networks", "torch_utils", "torch_utils.persistence"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def _pickle(folder: Path, **kwargs: object) -> Path:
    """An official-style network pickle: a dict whose 'ema' is the network."""
    from training.networks import GaussianPrecond  # type: ignore[import-not-found]

    net = GaussianPrecond(img_resolution=8, img_channels=1, **kwargs)
    path = folder / "network-snapshot.pkl"
    data = {"ema": net, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {}}
    path.write_bytes(pickle.dumps(data))
    return path


def _job(model: dict[str, object], seeds: str = "0-5") -> JobSpec:
    return JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": model,
            "sampler": {"timesteps": {"name": "edm", "num_steps": 6}},
            "metrics": [{"name": "fd_raw"}],
            "seeds": seeds,
        }
    )


def _ideal(job: JobSpec, gaussian: Denoiser) -> torch.Tensor:
    """The same job's samples from the float64 ideal denoiser of N(0, 0.5²I) (conftest)."""
    return sample_seeds(gaussian, job.sampler, job.seed_list, (1, 8, 8), torch.device("cpu"))


def test_pickle_ema_samples_like_the_same_denoiser_in_float64(
    checkout: Path, tmp_path: Path, gaussian: Denoiser
) -> None:
    job = _job({"kind": "pickle", "path": str(_pickle(tmp_path))})
    _, samples = draw_samples(job, tmp_path, 6)
    torch.testing.assert_close(samples, _ideal(job, gaussian), rtol=1e-4, atol=1e-4)
    net = load_network_pickle(str(tmp_path / "network-snapshot.pkl"))
    dtype, sigma_shape, labels, grad = net.calls[-1]
    assert dtype == torch.float32 and sigma_shape == (6,) and labels is None and not grad
    row = run_job(Task.evaluation(job, "t"), Store(tmp_path / "r"))
    assert row["status"] == "done" and row["model"] == "pickle" and row["nfe"] == 11


def test_pickle_sigma_range_and_round_sigma_bind_the_sampler(
    checkout: Path, tmp_path: Path
) -> None:
    path = _pickle(tmp_path, sigma_min=0.05, sigma_max=10.0, grid=0.01)
    row = run_job(
        Task.evaluation(_job({"kind": "pickle", "path": str(path)}), "t"), Store(tmp_path / "r")
    )
    assert row["status"] == "done", row["error"]
    assert row["sigma_max_used"] == pytest.approx(10.0) and row["sigma_min_used"] == 0.05


def test_class_conditional_pickle_gets_one_hot_labels_drawn_per_seed_after_latents(
    checkout: Path, tmp_path: Path
) -> None:
    job = _job({"kind": "pickle", "path": str(_pickle(tmp_path, label_dim=3))}, seeds="0-5")
    draw_samples(job, tmp_path, 6)
    labels = load_network_pickle(str(tmp_path / "network-snapshot.pkl")).calls[-1][2]
    want = []
    for seed in range(6):  # the official generate.py: latents, then randint(label_dim)
        g = torch.Generator().manual_seed(seed)
        torch.randn([1, 8, 8], generator=g)
        want.append(int(torch.randint(3, [], generator=g)))
    torch.testing.assert_close(labels, torch.eye(3)[want])
    assert len(set(want)) > 1


def test_pickle_without_the_official_modules_says_what_is_missing(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pickle(tmp_path)
    _hide(checkout, monkeypatch)
    row = run_job(
        Task.evaluation(_job({"kind": "pickle", "path": str(path)}), "t"), Store(tmp_path / "r")
    )
    assert row["status"] == "failed" and row["error_type"] == "DataError"
    for needle in ("needs the Python module 'training'", "--pythonpath", "PYTHONPATH",
                   "NVlabs/edm", "torch_utils"):  # fmt: skip
        assert needle in row["error"]


def test_pickle_errors_name_the_file_and_what_was_expected(checkout: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"network pickle not found at .*missing\.pkl"):
        load_network_pickle(str(tmp_path / "missing.pkl"))
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"G": 1}))
    with pytest.raises(DataError, match=r"'ema' entry is a torch module; found \['G'\]"):
        load_network_pickle(str(bad))
    bad.write_bytes(pickle.dumps({"ema": torch.nn.Linear(1, 1)}))
    with pytest.raises(DataError, match="lacks sigma_min, sigma_max, round_sigma"):
        load_network_pickle(str(bad))
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable network pickle"):
        load_network_pickle(str(bad))
    np.savez(tmp_path / "rgb.npz", images=np.zeros((2, 3, 32, 32), np.uint8))
    job = JobSpec.model_validate(
        {
            "data": {"name": "npz", "path": str(tmp_path / "rgb.npz")},
            "model": {"kind": "pickle", "path": str(_pickle(tmp_path))},
            "metrics": [{"name": "fd_raw"}],
        }
    )
    with pytest.raises(DataError, match=r"shape \[1, 8, 8\] but the data set's are \[3, 32, 32\]"):
        draw_samples(job, tmp_path, 2)


def test_entrypoint_module_function_builds_the_network_with_kwargs(
    checkout: Path, tmp_path: Path, gaussian: Denoiser
) -> None:
    job = _job({"kind": "entrypoint", "target": "mynets:gaussian", "kwargs": {"s": 0.5}})
    _, samples = draw_samples(job, tmp_path, 6)
    torch.testing.assert_close(samples, _ideal(job, gaussian), rtol=1e-4, atol=1e-4)
    other = _job({"kind": "entrypoint", "target": "mynets:gaussian", "kwargs": {"s": 0.2}})
    assert not torch.allclose(draw_samples(other, tmp_path, 6)[1], samples)


def test_entrypoint_errors_say_what_is_wrong(checkout: Path, tmp_path: Path) -> None:
    cases = {
        "nowhere:make": "module 'nowhere' is not importable; add the folder .* --pythonpath",
        "mynets:absent": "mynets has no 'absent'",
        "mynets:not_a_module": "returned a int; expected a torch.nn.Module",
    }
    for target, message in cases.items():
        with pytest.raises(DataError, match=message):
            draw_samples(_job({"kind": "entrypoint", "target": target}), tmp_path, 1)
    with pytest.raises(ValueError, match="target"):
        _job({"kind": "entrypoint", "target": "no-colon"})


def test_run_pythonpath_option_makes_the_official_code_importable(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pickle(tmp_path)
    _hide(checkout, monkeypatch)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    space = tmp_path / "s.yaml"
    space.write_text(
        f"name: s\nbase:\n  data: {{name: digits}}\n  model: {{kind: pickle, path: {path}}}\n"
        "  metrics: [{name: fd_raw}]\n  seeds: 0-3\n"
    )
    args = ["run", str(space), "--results", str(tmp_path / "r"), "--pythonpath", str(checkout)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sys.path[0] == str(checkout.resolve())
    assert str(checkout.resolve()) in os.environ["PYTHONPATH"]
