"""Training: presets A–F, the loop's mechanics, divergence, and the checkpoint cache."""

from __future__ import annotations

import math

import pytest
import torch
from fake_training import toy_space

from edmgrid.config.data import Digits
from edmgrid.config.job import JobSpec
from edmgrid.config.model import TrainedModel
from edmgrid.config.space import resolve_presets
from edmgrid.config.table2 import TINY_SCALE, table2
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
    assert f["augment"] == {"name": "edm", "p": 0.12}
    assert table2("ve", "A")["network"]["arch"] == "ncsnpp"


def test_config_a_ema_halflives_are_song_et_al_rates_at_batch_128():
    # Half-life in images of an EMA rate r per step of 128 images: 128·ln ½ / ln r.
    def kimg(rate: float) -> float:
        return 128 * math.log(0.5) / math.log(rate) / 1000

    vp, ve = (table2(f, "A")["training"]["ema_halflife_kimg"] for f in ("vp", "ve"))
    assert vp == pytest.approx(kimg(0.9999), rel=0.01)  # Table 7's 0.89 Mimg
    assert ve == pytest.approx(kimg(0.999), rel=0.02)  # 0.09 Mimg; Table 7 prints 0.9
    assert table2("vp", "B")["training"]["ema_halflife_kimg"] == 500


def test_tiny_budget_scales_durations_batch_and_width_and_shows_them():
    tiny = job("vp-A").model
    assert tiny.budget == "tiny"
    assert tiny.training.batch_size == 32
    assert tiny.training.lr_rampup_kimg == pytest.approx(640 / TINY_SCALE)
    assert tiny.network.model_channels == 16 and tiny.network.num_blocks == 1


@pytest.mark.parametrize("preset", [f"{f}-{c}" for f in ("vp", "ve") for c in "ABCDEF"])
def test_tiny_budget_ema_averages_over_many_steps_by_the_end_of_the_run(preset):
    training = JobSpec.model_validate(
        resolve_presets(
            {
                "data": {"name": "digits"},
                "model": {"preset": preset, "budget": "tiny"},
                "metrics": [{"name": "fd"}],
            }
        )
    ).model.training
    total = training.duration_kimg * 1000
    halflife = min(training.ema_halflife_kimg * 1000, training.ema_rampup_ratio * total)
    steps = halflife / training.batch_size  # half-life in steps at the end of the run
    assert steps >= 10
    assert halflife <= 0.05 * total  # and the EMA still follows the run


def _cell(preset: str, data: dict, **model) -> TrainedModel:
    config = {"data": data, "model": {"preset": preset, "budget": "tiny", **model}}
    return JobSpec.model_validate(resolve_presets({**config, "metrics": [{"name": "fd"}]})).model


def test_table2_on_digits_has_no_dataset_x_flips_and_digits_sigma_data():
    a, e, f = (_cell(f"vp-{c}", {"name": "digits"}) for c in "AEF")
    assert not a.training.xflip and not e.training.xflip and not f.training.xflip
    assert f.augment.xflip == 1.0  # an ordinary non-leaky transform, enabled with p like y-flip
    assert (e.precond.sigma_data, e.loss_weight.sigma_data) == (0.75, 0.75)
    assert _cell("vp-D", {"name": "digits"}).precond.sigma_data == 0.75
    on_toy = [_cell(f"vp-{c}", {"name": "toy2d"}) for c in "AEF"]
    assert [m.training.xflip for m in on_toy] == [True, True, False]  # x-flips valid there
    assert on_toy[2].augment.xflip == 1e8 and on_toy[1].precond.sigma_data == 0.5


def test_table2_data_rules_leave_what_the_space_sets():
    a = _cell("vp-A", {"name": "digits"}, training={"xflip": True})
    f = _cell("ve-F", {"name": "digits"}, augment={"xflip": 0}, precond={"sigma_data": 0.6})
    assert a.training.xflip and f.augment.xflip == 0 and f.precond.sigma_data == 0.6
    assert f.loss_weight.sigma_data == 0.75
    again = JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": f.model_dump(mode="json"),
            "metrics": [{"name": "fd"}],
        }
    )
    assert again.model == f  # a stored job re-validates to itself


def test_digits_sigma_data_is_the_measured_pixel_std():
    assert float(load_data(Digits()).x.std()) == pytest.approx(Digits.sigma_data, abs=0.01)


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
    losses = [float(note.split()[1]) for _, _, note in calls]
    assert all(note.startswith("loss ") for _, _, note in calls)
    assert "0.256/0.256 kimg · " in calls[-1][2] and " img/s · ETA 0s" in calls[-1][2]
    # the running loss at the end averages both steps; loss_final averages the last tenth
    assert losses[-1] != pytest.approx(losses[0]) and math.isfinite(losses[-1])
    assert row["loss_final"] == pytest.approx(2 * losses[-1] - losses[0], rel=1e-2)
