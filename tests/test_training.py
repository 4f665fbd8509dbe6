"""Training: presets A–F, the loop's mechanics, divergence, and the checkpoint cache."""

from __future__ import annotations

import math

import pytest
import torch
from fake_training import toy_space

from edmgrid.config.job import JobSpec
from edmgrid.config.space import resolve_presets
from edmgrid.config.table2 import table2
from edmgrid.engine import train as train_mod
from edmgrid.engine.data import load_data
from edmgrid.engine.train import checkpoint_path, train, training_key, update_ema
from edmgrid.errors import JobError
from edmgrid.run.executors import SerialExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def job(preset: str, **training) -> JobSpec:
    model = {"preset": preset, "budget": "tiny", "training": {"duration_kimg": 0.256, **training}}
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd_raw"}]}
    return JobSpec.model_validate(resolve_presets(config))


def test_table2_configs_change_one_thing_at_a_time():
    a, b, c, d, e, f = (table2("vp", k) for k in "ABCDEF")
    assert (a["training"]["batch_size"], b["training"]["batch_size"]) == (128, 512)
    assert (a["training"]["lr"], b["training"]["lr"]) == (2e-4, 1e-3)
    assert a["training"]["grad_clip"] == 1.0 and b["training"]["grad_clip"] is None
    assert (a["network"]["dropout"], b["network"]["dropout"]) == (0.10, 0.13)
    assert (b["network"]["channel_mult"], c["network"]["channel_mult"]) == ([1, 2, 2, 2], [2, 2, 2])
    assert (c["precond"], d["precond"]) == ({"name": "vp"}, {"name": "edm"})
    assert d["loss_weight"] == {"name": "vp"} and e["loss_weight"] == {"name": "edm"}
    assert e["p_train"] == {"name": "edm"} and e["augment"] == {"name": "none"}
    assert f["augment"] == {"name": "edm", "p": 0.12} and not f["training"]["xflip"]
    assert table2("ve", "A")["network"]["arch"] == "ncsnpp"
    assert table2("ve", "A")["training"]["ema_halflife_kimg"] == 900


def test_tiny_budget_scales_durations_batch_and_width_and_shows_them():
    tiny = job("vp-A").model
    assert tiny.budget == "tiny"
    assert tiny.training.batch_size == 32
    assert tiny.training.lr_rampup_kimg == pytest.approx(640 / 4000)
    assert tiny.network.model_channels == 16 and tiny.network.num_blocks == 1


def test_config_d_pairs_edm_preconditioning_with_vp_loss_and_trains(tmp_path):
    d = job("vp-D")
    assert (d.model.precond.name, d.model.loss_weight.name, d.model.p_train.name) == (
        "edm",
        "vp",
        "vp",
    )
    row = train(d, tmp_path)
    assert row["steps"] == 2 and torch.isfinite(torch.tensor(row["loss_final"]))
    assert checkpoint_path(tmp_path, training_key(d)).exists()


def test_checkpoint_cache_is_hit_on_second_use(tmp_path, monkeypatch):
    e = job("vp-E")
    first = train(e, tmp_path)
    monkeypatch.setattr(train_mod, "fit", lambda *a, **k: pytest.fail("retrained"))
    second = train(e, tmp_path)
    assert second["cached"] and not first["cached"]
    assert second["steps"] == first["steps"]


def test_evaluation_of_a_trained_job_end_to_end(tmp_path):
    from edmgrid.engine.evaluate import evaluate

    f = job("ve-F", duration_kimg=0.512)
    f = f.model_copy(update={"seeds": "0-15"})
    row = evaluate(f, tmp_path)
    assert row["nfe"] == 35 and row["sigma_min_used"] == pytest.approx(0.002)  # EDM precond
    assert row["fd_raw"] > 0


def test_sampler_range_is_clamped_to_the_ve_network_range():
    from edmgrid.engine.denoiser import TorchDenoiser
    from edmgrid.engine.sample import plan
    from edmgrid.engine.train import build_network

    c = job("ve-C")
    net = TorchDenoiser(build_network(c.model, load_data(c.data)))
    p = plan(net, c.sampler)
    assert (p.sigma_min, p.sigma_max) == (pytest.approx(0.02), pytest.approx(80.0))


def test_diverging_training_fails_with_step_and_last_finite_loss(tmp_path):
    model = {
        "kind": "trained",
        "network": {
            "arch": "ddpmpp",
            "model_channels": 8,
            "channel_mult": [1],
            "num_blocks": 1,
            "attn_resolutions": [],
        },
        "precond": {"name": "ve"},
        "loss_weight": {"name": "ve"},
        "p_train": {"name": "ve", "sigma_min": 1e30, "sigma_max": 1e31},
        "training": {"duration_kimg": 0.064, "batch_size": 16},
    }
    bad = JobSpec.model_validate(
        {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd_raw"}]}
    )
    with pytest.raises(JobError, match=r"non-finite loss at step 0"):
        train(bad, tmp_path)
    assert not checkpoint_path(tmp_path, training_key(bad)).exists()


#: A toy2d model whose learning rate of 1e30 overflows the loss at step 2.
DIVERGING = {
    "kind": "trained",
    "network": {"arch": "mlp", "hidden": 8, "depth": 1},
    "training": {"duration_kimg": 0.064, "batch_size": 16, "lr": 1e30, "lr_rampup_kimg": 0},
}


def test_training_that_diverges_later_fails_with_its_step_and_last_finite_loss(tmp_path):
    config = {"data": {"name": "toy2d"}, "model": DIVERGING, "metrics": [{"name": "fd_raw"}]}
    bad = JobSpec.model_validate(config)
    message = r"non-finite loss at step 2 \(image 32\); last finite loss \d+\.\d+$"
    with pytest.raises(JobError, match=message):
        train(bad, tmp_path)
    assert not checkpoint_path(tmp_path, training_key(bad)).exists()


def test_a_run_with_a_diverging_training_stores_failed_rows_that_say_why(tmp_path):
    space = toy_space(tmp_path, "d", {}, model=DIVERGING)
    store = Store(tmp_path / "r")
    summary = run_space(space, store, executor=SerialExecutor())
    assert summary.counts["failed"] == 2  # the training and its evaluation
    (training,) = store.query("SELECT status, error FROM trainings").to_dict("records")
    assert training["status"] == "failed"
    assert training["error"].startswith("training diverged: non-finite loss at step 2 ")
    (job,) = store.job_ids()
    row = store.row(job)  # the stored row (the runs view has an fd_raw column, NULL)
    assert row is not None
    assert row["error_type"] == "TrainingFailed" and training["error"] in row["error"]
    assert "fd_raw" not in row  # no metric stored
    assert not list((store.cache / "checkpoints").glob("*.pt"))


def test_ema_follows_official_halflife_and_rampup():
    net, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    # half-life 1 kimg, no ramp-up: one batch of 1000 images moves EMA halfway
    update_ema(ema, net, 1.0, None, seen=10_000, batch=1000)
    assert float(ema.weight.detach()) == pytest.approx(0.5)
    # ramp-up: H = min(1000, 0.05·2000) = 100 images, β = 0.5^(100/100)
    ema.weight.data.fill_(0.0)
    update_ema(ema, net, 1.0, 0.05, seen=2000, batch=100)
    assert float(ema.weight.detach()) == pytest.approx(0.5)


def test_training_progress_reports_images_and_the_running_loss(tmp_path):
    calls: list[tuple[int, int, str]] = []
    row = train(
        job("vp-E"), tmp_path, lambda done, total, note="": calls.append((done, total, note))
    )
    assert [done for done, _, _ in calls] == [128, 256] and {t for _, t, _ in calls} == {256}
    losses = [float(note.removeprefix("loss ")) for _, _, note in calls]
    assert all(note.startswith("loss ") for _, _, note in calls)
    # the running loss at the end averages both steps; loss_final averages the last tenth
    assert losses[-1] != pytest.approx(losses[0]) and math.isfinite(losses[-1])
    assert row["loss_final"] == pytest.approx(2 * losses[-1] - losses[0], rel=1e-2)
