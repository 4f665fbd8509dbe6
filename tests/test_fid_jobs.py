"""The ``fid`` metric through jobs: fail-fast without weights, rows, paper protocol, compare."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn
from typer.testing import CliRunner

from edmgrid.cli import app
from edmgrid.config.job import JobSpec
from edmgrid.config.metrics import FID
from edmgrid.engine import fid as fid_module
from edmgrid.engine.data import load_data
from edmgrid.engine.fid import (
    ENV_VAR,
    FEATURE_DIM,
    FeatureExtractor,
    load_inception,
    quantize,
    statistics_hash,
)
from edmgrid.engine.metrics import _extractor, check
from edmgrid.errors import InputError
from edmgrid.run.compare import compare
from edmgrid.run.jobs import Task, run_job
from edmgrid.run.store import Store

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(autouse=True)
def fresh(one_thread: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No weights from the environment or another test; one BLAS thread (a 2048² eigen-
    decomposition takes ~4× longer with two threads on a shared machine)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    _extractor.cache_clear()
    with threadpool_limits(1):
        yield


class _PixelDetector(nn.Module):
    """A stand-in for the NVlabs detector: uint8 NCHW in, 2048 smooth pixel features out."""

    def __init__(self, dim: int = FEATURE_DIM) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(192, dim, generator=gen))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = F.interpolate(x.float(), size=(8, 8), mode="area").reshape(len(x), -1)
        return torch.tanh((pooled / 255 - 0.5) @ self.proj)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript detector file, one of the accepted weight formats (2048-d features)."""
    path = tmp_path_factory.mktemp("weights") / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_PixelDetector()), str(path))
    return path


class _SmallExtractor(FeatureExtractor):
    """16-d features, so that a Fréchet distance takes microseconds instead of seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _PixelDetector(dim=16)

    @property
    def extractor_id(self) -> str:
        return "small-test-extractor"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.expand(-1, 3, -1, -1))


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights path whose loading gives :class:`_SmallExtractor` (the loader is patched)."""
    monkeypatch.setattr(fid_module, "load_inception", lambda path, device: _SmallExtractor())
    path = tmp_path / "small.pth"
    path.touch()
    return path


def _job(metric: dict[str, Any], seeds: str = "0-7", **over: Any) -> JobSpec:
    config = {
        "data": {"name": "digits"},
        "sampler": {"timesteps": {"name": "edm", "num_steps": 4}},
        "metrics": [{"name": "fid", **metric}],
        "seeds": seeds,
        **over,
    }
    return JobSpec.model_validate(config)


def test_run_without_weights_fails_the_job_at_once_saying_what_to_provide(
    tmp_path: Path,
) -> None:
    space = tmp_path / "fid.yaml"
    space.write_text(
        "name: fid\nbase:\n  data: {name: digits}\n  metrics: [{name: fid}]\n  seeds: 0-49999\n"
    )
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(space), "--results", str(tmp_path / "r")])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 1 and elapsed < 15  # 50,000 seeds: nothing was sampled
    assert "DataError" not in result.output and "--inception" in " ".join(result.output.split())
    row = pd.read_parquet(next((tmp_path / "r" / "runs").glob("*.parquet"))).iloc[0]
    assert row["status"] == "failed" and row["error_type"] == "DataError"
    for needle in ("no Inception weights given", "--inception PATH", ENV_VAR,
                   "pt_inception-2015-12-05-6726825d.pth", "inception-2015-12-05.pkl"):  # fmt: skip
        assert needle in row["error"]


def test_missing_weights_file_in_the_space_is_named(tmp_path: Path) -> None:
    row = run_job(
        Task.evaluation(_job({"inception": str(tmp_path / "absent.pth")}), "t"), Store(tmp_path)
    )
    assert row["status"] == "failed"
    assert f"Inception weights not found at {tmp_path / 'absent.pth'}" in row["error"]


def test_fid_job_with_a_torchscript_detector_records_extractor_reference_n_and_seeds(
    weights: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path)
    row = run_job(Task.evaluation(_job({"inception": str(weights)}), "t"), store)
    assert row["status"] == "done", row["error"]
    assert row["fid"] > 0 and row["fid_runs"] == [row["fid"]]
    assert row["fid_n"] == 8 and row["fid_seeds"] == ["0-7"]
    assert row["fid_extractor"] == load_inception(weights).extractor_id
    assert row["fid_extractor"].startswith("torchscript:")
    (cached,) = store.cache.glob("fid-ref-*.npz")
    with np.load(cached) as ref:
        assert ref["mu"].shape == (FEATURE_DIM,)
        assert row["fid_reference_hash"] == statistics_hash(ref["mu"], ref["sigma"])
    stored = pd.read_parquet(store.result_path(row["job_id"])).iloc[0]
    assert list(stored["fid_runs"]) == row["fid_runs"] and list(stored["fid_seeds"]) == ["0-7"]


def test_reference_is_every_data_image_or_a_given_npz(small: Path, tmp_path: Path) -> None:
    store = Store(tmp_path)
    row = run_job(Task.evaluation(_job({"inception": str(small)}), "t"), store)
    assert row["status"] == "done", row["error"]
    images = quantize(load_data(_job({}).data).x)
    assert len(images) == 1797
    feats = _SmallExtractor()(images).double().numpy()
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    given = _job({"inception": str(small), "reference": str(tmp_path / "ref.npz")})
    again = run_job(Task.evaluation(given, "t"), store)
    assert again["fid"] == pytest.approx(row["fid"], rel=1e-6)
    assert again["fid_reference_hash"] == statistics_hash(mu, sigma)
    assert again["fid_extractor"] == "small-test-extractor"


def test_env_var_gives_the_weights_when_the_space_has_none(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(small))
    row = run_job(Task.evaluation(_job({}), "t"), Store(tmp_path))
    assert row["status"] == "done" and row["fid_extractor"] == "small-test-extractor"


def test_paper_protocol_takes_three_seed_ranges_and_reports_the_minimum(
    small: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path)
    paper = run_job(
        Task.evaluation(_job({"inception": str(small), "protocol": "paper"}), "t"), store
    )
    assert paper["status"] == "done", paper["error"]
    assert paper["fid_seeds"] == ["0-7", "8-15", "16-23"] and paper["fid_n"] == 8
    runs = paper["fid_runs"]
    assert len(runs) == 3 and paper["fid"] == min(runs) and len(set(runs)) == 3
    for seeds, want in zip(("0-7", "8-15", "16-23"), runs, strict=True):
        single = run_job(Task.evaluation(_job({"inception": str(small)}, seeds=seeds), "t"), store)
        assert single["fid"] == pytest.approx(want, rel=1e-9)


def test_paper_protocol_needs_a_contiguous_seed_range(small: Path, tmp_path: Path) -> None:
    job = _job({"inception": str(small), "protocol": "paper"}, seeds="0-3,10-13")
    row = run_job(Task.evaluation(job, "t"), Store(tmp_path))
    assert row["status"] == "failed" and "one contiguous seed range" in row["error"]
    assert "nfe" not in row  # failed before sampling


def test_fid_of_points_and_wrong_reference_dimension_are_clear_errors(
    small: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="image data set"):
        check(FID(inception=str(small)), _job({}, data={"name": "toy2d"}))
    np.savez(tmp_path / "big.npz", mu=np.zeros(64), sigma=np.eye(64))
    job = _job({"inception": str(small), "reference": str(tmp_path / "big.npz")})
    row = run_job(Task.evaluation(job, "t"), Store(tmp_path))
    assert row["status"] == "failed"
    assert "reference statistics have 64 dimensions but the detector gives 16" in row["error"]


def _fid_rows(store: Store, n: list[int], extractor: list[str]) -> None:
    for i, (count, ext) in enumerate(zip(n, extractor, strict=True)):
        store.write(
            {"job_id": f"{i:016x}", "status": "done", "solver": "heun", "nfe": 35.0 + i,
             "fid": 2.0 + i, "fid_n": count, "fid_extractor": ext}
        )  # fmt: skip


def test_compare_refuses_fids_of_different_n_or_extractor_unless_allowed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _fid_rows(store, [50000, 50000], ["a", "a"])
    cells = compare(store, None, ["nfe"], ["solver"], "fid").cells
    assert cells["mean"].tolist() == [2.0, 3.0]
    _fid_rows(store, [50000, 2000], ["a", "a"])
    with pytest.raises(InputError, match=r"different fid_n \(2000, 50000\).*--allow-mixed"):
        compare(store, None, ["nfe"], ["solver"], "fid")
    _fid_rows(store, [50000, 50000], ["a", "b"])
    with pytest.raises(InputError, match=r"different fid_extractor \(a, b\)"):
        compare(store, None, ["nfe"], ["solver"], "fid")
    assert len(compare(store, None, ["nfe"], ["solver"], "fid", allow_mixed=True).cells) == 2
    assert len(compare(store, None, ["nfe"], ["solver"], "fid_n").cells) == 2  # not a FID
