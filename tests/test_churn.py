"""``edmgrid optuna-churn``: a short study on the analytic denoiser, resume (after an interrupt
or a SIGKILL), bad input."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from fake_training import edmgrid
from optuna.trial import TrialState

from edmgrid.cli import main
from edmgrid.config.job import JobSpec
from edmgrid.config.presets import SOLVER
from edmgrid.config.space import resolve_presets
from edmgrid.engine.train import training_key
from edmgrid.errors import EdmgridError, InputError
from edmgrid.run import jobs
from edmgrid.run.churn import study as studies
from edmgrid.run.churn.driver import Options, pick_job, run_churn
from edmgrid.run.churn.search import PARAMS, ChurnSearch, paper_preset, trial_job
from edmgrid.run.churn.study import (
    JournalLock,
    Settings,
    driver_lock,
    journal_path,
    make_sampler,
)
from edmgrid.run.claims import Claims, active_run
from edmgrid.run.executors import Event
from edmgrid.run.jobs import run_job
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = """\
name: churn-test
base:
  data: {name: digits}
  model: {kind: analytic}
  sampler:
    preset: edm
    timesteps: {name: edm, num_steps: 6}
  metrics: [{name: fd_raw}]
  seeds: 0-15
"""
FAST = ["--num-samples", "16", "--final-samples", "0"]


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    """Plotting is slow on a shared CPU: only tests that ask for ``plots`` draw the PNGs."""
    if "plots" not in request.fixturenames:
        monkeypatch.setattr(studies, "plot", lambda *args: ([], []))


@pytest.fixture
def plots():
    """Draw the PNGs (see ``no_plots``)."""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def cli(monkeypatch, *args: object) -> int:
    """``edmgrid optuna-churn ARGS`` in this process (serial executor unless ARGS name one)."""
    serial = [] if "-x" in args else ["-x", "serial"]
    monkeypatch.setattr(sys, "argv", ["edmgrid", "optuna-churn", *serial, *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0)


def said(capsys) -> str:
    out, err = capsys.readouterr()
    return " ".join((out + err).split())


def study(results, name=None) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal_path(Store(results))))
    )
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name or names[0], storage=storage)


def finished(s: optuna.Study) -> list[tuple[int, dict, float | None]]:
    return [(t.number, t.params, t.value) for t in s.trials if t.state.is_finished()]


def base_job() -> JobSpec:
    config = {
        "data": {"name": "digits"},
        "sampler": {"preset": "edm"},
        "metrics": [{"name": "ode_error"}, {"name": "fd_raw"}],
    }
    return JobSpec.model_validate(resolve_presets(config))


def test_short_study_stores_trials_as_rows_with_the_paper_setting_as_trial_0(
    space, results, monkeypatch, plots
):
    assert cli(monkeypatch, "--space", space, "--trials", 3, "-r", results, *FAST) == 0
    s = study(results)
    trials = finished(s)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 3
    assert trials[0][1] == SOLVER["table5-cifar10-vp"]
    assert s.trials[0].user_attrs["role"] == "paper"
    assert trials[1][1]["S_churn"] == 0 and s.trials[1].user_attrs["role"] == "deterministic"
    rows = Store(results).query(
        f"SELECT trial, stage, fd_raw, nfe, solver_S_churn, seeds FROM runs "
        f"WHERE study = '{s.study_name}' ORDER BY trial"
    )
    assert rows["trial"].tolist() == [0, 1, 2] and set(rows["stage"]) == {"search"}
    assert rows["fd_raw"].tolist() == pytest.approx([t[2] for t in trials])
    assert set(rows["nfe"]) == {11.0} and set(rows["seeds"]) == {"0-15"}  # 6 Heun steps
    assert rows["solver_S_churn"].tolist()[:2] == [30.0, 0.0]
    assert (results / "optuna" / s.study_name / "history.png").stat().st_size > 0
    assert set(Store(results).query("SELECT DISTINCT space FROM space_jobs")["space"]) == {
        s.study_name
    }


def test_rerun_with_more_trials_continues_the_study(space, results, monkeypatch):
    args = ["--space", space, "-r", results, "--sampler", "random", *FAST]
    assert cli(monkeypatch, *args, "--trials", 3) == 0
    first = finished(study(results))
    assert cli(monkeypatch, *args, "--trials", 5) == 0
    again = finished(study(results))
    assert len(again) == 5 and again[:3] == first
    assert again[3][1] != again[2][1]  # the resumed sampler does not replay its first draws


def test_interrupted_study_keeps_finished_trials_and_finishes_the_running_one(results, monkeypatch):
    calls = []

    def interrupt_third(task, *args, **kwargs):
        calls.append(task.job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_job(task, *args, **kwargs)

    monkeypatch.setattr(jobs, "run_job", interrupt_third)
    settings = Settings(base_job(), "fd_raw", 16)
    options = Options(trials=4, final_samples=0)
    with pytest.raises(KeyboardInterrupt):
        run_churn(Store(results), settings, options, log=lambda line: None)
    s = study(results)
    kept = finished(s)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    interrupted = s.trials[2].params

    report = run_churn(Store(results), settings, options, log=lambda line: None)
    s = study(results)
    assert finished(s)[:2] == kept and len(finished(s)) == 4 == report.trials
    assert s.trials[2].state == TrialState.COMPLETE and s.trials[2].params == interrupted
    assert calls[3].job_id == calls[2].job_id  # the stale trial ran again, first


def test_sigkilled_study_keeps_its_finished_trials_and_a_rerun_completes_it(
    space, results, monkeypatch
):
    args = ["--space", space, "-r", results, "--trials", 10, "--sampler", "random", *FAST]
    proc = edmgrid("optuna-churn", "-x", "serial", *args)
    deadline = time.monotonic() + 120
    while len(list((results / "runs").glob("*.parquet"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, "the study finished before it was killed"
    kept = finished(study(results))
    assert len(kept) >= 1  # a second row means the first trial was told (serial executor)
    assert cli(monkeypatch, *args) == 0
    s = study(results)
    assert finished(s)[: len(kept)] == kept and len(finished(s)) == 10
    assert {t.state for t in s.trials} == {TrialState.COMPLETE}
    rows = Store(results).query("SELECT job_id, fd_raw FROM runs WHERE stage = 'search'")
    stored = dict(zip(rows["job_id"], rows["fd_raw"], strict=True))
    assert [stored[t.user_attrs["job_id"]] for t in s.trials] == [t.value for t in s.trials]


def test_a_trial_killed_while_drawing_its_parameters_is_completed_not_failed(
    space, results, monkeypatch
):
    args = ["--space", space, "-r", results, "--sampler", "random", *FAST]
    assert cli(monkeypatch, *args, "--trials", 2) == 0  # the paper's and the deterministic
    stale = study(results).ask()  # a driver killed after drawing S_churn only
    S_churn = stale.suggest_float("S_churn", 0.0, 80.0)
    assert cli(monkeypatch, *args, "--trials", 4) == 0
    s = study(results)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 4
    assert s.trials[stale.number].params["S_churn"] == S_churn
    assert set(s.trials[stale.number].params) == set(PARAMS)


@pytest.mark.slow
def test_a_study_sigkilled_five_times_at_random_moments_keeps_every_finished_trial(
    space, results, monkeypatch
):
    args = ["--space", space, "-r", results, "--trials", 30, "--sampler", "random", *FAST]
    seed = random.randrange(2**32)
    rng, kept, landed, after = random.Random(seed), [], 0, []
    journal = journal_path(Store(results))
    for _ in range(5):
        size = journal.stat().st_size if journal.exists() else 0
        proc = edmgrid("optuna-churn", "-x", "serial", *args)
        deadline = time.monotonic() + 120
        while proc.poll() is None and (journal.stat().st_size if journal.exists() else 0) == size:
            assert time.monotonic() < deadline, "the driver never wrote to the journal"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 4.0))  # once it writes: creating the study, or its trials
        landed += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if journal.exists() and journal.stat().st_size:  # the study was created
            now = finished(study(results))
            assert now[: len(kept)] == kept, f"seed {seed}: finished trials changed"
            kept = now
        after.append(len(kept))
    print(f"{landed} of 5 kills landed mid-run; trials finished after each: {after} (seed {seed})")
    assert cli(monkeypatch, *args) == 0
    s = study(results)
    assert finished(s)[: len(kept)] == kept and len(finished(s)) == 30
    assert {t.state for t in s.trials} == {TrialState.COMPLETE}


def test_a_trial_asked_by_a_driver_killed_before_recording_its_job_is_run_and_recorded(
    results, monkeypatch
):
    real, recorded = optuna.Trial.set_user_attr, []

    def killed_at_the_third_trial(self, key, value):
        recorded.append(key)
        if recorded.count("job_id") == 3:
            raise KeyboardInterrupt
        real(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", killed_at_the_third_trial)
    settings, options = Settings(base_job(), "fd_raw", 16), Options(trials=4, final_samples=0)
    with pytest.raises(KeyboardInterrupt):
        run_churn(Store(results), settings, options, log=lambda line: None)
    monkeypatch.setattr(optuna.Trial, "set_user_attr", real)
    assert "job_id" not in study(results).trials[2].user_attrs
    run_churn(Store(results), settings, options, log=lambda line: None)
    s = study(results)
    assert {t.state for t in s.trials} == {TrialState.COMPLETE} and len(s.trials) == 4
    rows = Store(results).query("SELECT job_id, fd_raw FROM runs")
    stored = dict(zip(rows["job_id"], rows["fd_raw"], strict=True))
    assert [stored[t.user_attrs["job_id"]] for t in s.trials] == [t.value for t in s.trials]


def test_a_study_cut_short_while_it_was_created_is_set_up_by_the_next_run(results, monkeypatch):
    real, calls = optuna.Study.set_user_attr, []

    def killed_on_the_second(self, key, value):
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", killed_on_the_second)
    settings, options = Settings(base_job(), "fd_raw", 16), Options(trials=2, final_samples=0)
    with pytest.raises(KeyboardInterrupt):
        run_churn(Store(results), settings, options, log=lambda line: None)
    monkeypatch.setattr(optuna.Study, "set_user_attr", real)
    assert study(results).user_attrs.keys() == {"base_job"}
    run_churn(Store(results), settings, options, log=lambda line: None)
    s = study(results)
    assert [t.user_attrs["role"] for t in s.trials] == ["paper", "deterministic"]
    assert {t.state for t in s.trials} == {TrialState.COMPLETE}
    assert Settings.from_attrs(s.user_attrs).key == settings.key


def test_the_journal_lock_of_a_killed_driver_is_free_at_once(tmp_path):
    path = tmp_path / "journal.flock"
    code = (
        "import time; from pathlib import Path; from edmgrid.run.churn.study import JournalLock; "
        f"JournalLock(Path({str(path)!r})).acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    lock = JournalLock(path)
    start = time.monotonic()
    assert lock.acquire() and time.monotonic() - start < 5  # Optuna's own lock file: 30 s
    lock.release()


class LastInFirstOut:
    """An executor of two workers whose later task finishes first."""

    def open(self, root, emit) -> None:
        self.store, self.emit, self.running, self.most = Store(root), emit, {}, 0

    def free(self) -> list[int]:
        return [w for w in (0, 1) if w not in self.running]

    def submit(self, task, worker: int) -> None:
        self.running[worker] = task
        self.most = max(self.most, len(self.running))

    def poll(self, timeout: float) -> None:
        worker = list(self.running)[-1]
        task = self.running.pop(worker)
        self.emit(Event(worker, task.name, "finished", row=run_job(task, self.store)))

    def close(self, wait: bool = True) -> None:
        assert not self.running


def test_trials_fill_every_slot_and_are_told_as_they_finish(results):
    store, told, executor = Store(results), [], LastInFirstOut()
    settings = Settings(base_job(), "fd_raw", 16)
    options = Options(trials=5, final_samples=0)
    run_churn(store, settings, options, executor=executor, log=told.append)
    assert executor.most == 2
    assert [int(line.split()[1]) for line in told] == [1, 2, 3, 4, 0]
    s = study(results)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 5
    rows = store.query("SELECT trial, fd_raw FROM runs ORDER BY trial")
    assert rows["fd_raw"].tolist() == pytest.approx([t.value for t in s.trials])


def test_two_local_workers_run_a_study_in_parallel(space, results, monkeypatch):
    args = ["--space", space, "-r", results, "--trials", 4, "-x", "local", "-w", 2, *FAST]
    assert cli(monkeypatch, *args) == 0
    rows = Store(results).query("SELECT trial, fd_raw FROM runs ORDER BY trial")
    assert rows["trial"].tolist() == [0, 1, 2, 3]
    assert [t.value for t in study(results).trials] == pytest.approx(rows["fd_raw"].tolist())


def test_a_trained_model_is_trained_once_as_a_task_before_the_trials(results):
    model = {"preset": "vp-A", "budget": "tiny", "training": {"duration_kimg": 0.064}}
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd_raw"}]}
    settings = Settings(JobSpec.model_validate(resolve_presets(config)), "fd_raw", 8)
    told: list[str] = []
    report = run_churn(
        Store(results), settings, Options(trials=2, final_samples=0), log=told.append
    )
    key = training_key(settings.base)
    assert told[0] == f"training the model once (checkpoint {key})" and len(told) == 3
    assert Store(results).training_row(key)["space"] == report.study
    assert {c.nfe for c in report.candidates} == {35.0}


def test_final_stage_reevaluates_top_k_and_both_references_on_fresh_seeds(results):
    settings = Settings(base_job(), "fd_raw", 16)
    options = Options(trials=4, final_samples=24, top_k=1)
    report = run_churn(Store(results), settings, options, log=lambda line: None)
    roles = {r for c in report.candidates for r in c.roles}
    assert {"paper", "deterministic", "top 1"} <= roles
    assert all(c.final is not None and c.nfe == 35 for c in report.candidates)
    assert report.best.final == min(c.final for c in report.candidates)
    rows = Store(results).query("SELECT trial, seeds FROM runs WHERE stage = 'final'")
    assert set(rows["seeds"]) == {"16-39"}
    assert set(rows["trial"]) == {c.trial for c in report.candidates}


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the paper setting is out of range
def test_empty_churn_windows_reuse_the_deterministic_row_and_are_one_candidate(results):
    store, settings = Store(results), Settings(base_job(), "fd_raw", 16)
    empty = {"S_min": (5.0, 10.0), "S_max": (0.2, 1.0)}  # S_min > S_max after trial 0
    options = Options(trials=4, final_samples=16, top_k=3)
    report = run_churn(store, settings, options, overrides=empty, log=lambda line: None)
    values = [t.value for t in study(results).trials]
    assert values[1] == values[2] == values[3] != values[0]
    assert [c.trial for c in report.candidates] == [0, 1]
    assert len(store.job_ids()) == 4  # paper and deterministic, search and final


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--S_churn", "10", "5"], "--S_churn: min 10 > max 5"),
        (["--S_noise", "-1", "1.01"], "--S_noise: S_noise must be > 0"),
        (["--S_noise", "0", "1.01"], "S_noise must be > 0"),
        (["--S_min", "-0.5", "1"], "S_min must be >= 0"),
        (["--metric", "ode_error"], "cannot improve"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--sampler", "grid"], "unknown --sampler"),
    ],
)
def test_bad_input_exits_2_before_a_study_exists(
    space, results, monkeypatch, capsys, args, message
):
    assert cli(monkeypatch, "--space", space, "-r", results, *args) == 2
    assert message in said(capsys)
    assert not journal_path(Store(results)).exists()


def test_bad_search_section_names_the_space_file(tmp_path, results, monkeypatch, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE + "search:\n  S_max: [50, 1]\n")
    assert cli(monkeypatch, "--space", path, "-r", results) == 2
    assert f"{path}: search.S_max: min 50 > max 1" in said(capsys)


def test_a_multistep_solver_cannot_churn_and_is_refused(results):
    config = {
        "data": {"name": "digits"},
        "sampler": {"solver": {"name": "dpmpp"}},
        "metrics": [{"name": "fd_raw"}],
    }
    settings = Settings(JobSpec.model_validate(config), "fd_raw", 16)
    with pytest.raises(InputError, match="needs a stochastic solver: dpmpp is a deterministic"):
        run_churn(Store(results), settings, Options())
    assert not journal_path(Store(results)).exists()


def test_resuming_a_named_study_with_other_settings_exits_2(space, results, monkeypatch):
    args = ["--space", space, "-r", results, "--study", "s1", "--trials", 1]
    assert cli(monkeypatch, *args, *FAST) == 0
    assert cli(monkeypatch, *args, "--num-samples", 32) == 2


def test_settings_without_churn_share_the_deterministic_job():
    base = base_job()
    deterministic = trial_job(base, {**SOLVER["table5-cifar10-vp"], "S_churn": 0}, "fd_raw", "0-9")
    empty_window = trial_job(base, {**SOLVER["table5-cifar10-vp"], "S_min": 2.0}, "fd_raw", "0-9")
    churned = trial_job(base, SOLVER["table5-cifar10-vp"], "fd_raw", "0-9")
    assert deterministic.job_id == empty_window.job_id != churned.job_id
    assert deterministic.sampler.solver.S_max == math.inf
    assert churned.sampler.solver.S_churn == 30 and churned.sampler.timesteps.num_steps == 18
    assert [m.name for m in churned.metrics] == ["fd_raw"] and churned.seeds == "0-9"


def test_s_min_and_s_max_are_log_uniform_with_zero_raised_to_the_floor():
    d = ChurnSearch().distributions()
    assert (d["S_min"].low, d["S_min"].high, d["S_min"].log) == (1e-3, 10.0, True)
    assert (d["S_max"].low, d["S_max"].log) == (0.2, True)
    assert (d["S_churn"].low, d["S_churn"].high, d["S_churn"].log) == (0.0, 100.0, False)
    assert (d["S_noise"].low, d["S_noise"].high) == (1.0, 1.011)
    fixed = ChurnSearch(S_min=(0.0, 0.0)).distributions()["S_min"]
    assert (fixed.low, fixed.high, fixed.log) == (0.0, 0.0, False)


def test_paper_setting_follows_the_model_family():
    def job(model, schedule="linear"):
        config = {
            "data": {"name": "digits"},
            "model": model,
            "sampler": {"schedule": {"name": schedule}},
            "metrics": [{"name": "fd"}],
        }
        return JobSpec.model_validate(resolve_presets(config))

    assert paper_preset(job({"preset": "ve-F", "budget": "tiny"}))[0] == "table5-cifar10-ve"
    assert paper_preset(job({"preset": "vp-A", "budget": "tiny"}))[0] == "table5-cifar10-vp"
    assert paper_preset(job({"kind": "analytic"}))[0] == "table5-cifar10-vp"
    assert paper_preset(job({"kind": "analytic"}, "ve"))[0] == "table5-cifar10-ve"


def test_base_job_comes_from_the_store_by_id_prefix(space, results, monkeypatch):
    assert cli(monkeypatch, "--space", space, "-r", results, "--trials", 1, *FAST) == 0
    store = Store(results)
    (job_id,) = store.job_ids()
    assert pick_job(store, None, job_id[:6]).job_id == job_id
    with pytest.raises(EdmgridError, match="no job 'ffff'"):
        pick_job(store, None, "ffff")


def test_a_second_driver_of_the_same_study_is_refused(tmp_path):
    lock = tmp_path / "driver.lock"
    with (
        driver_lock(lock),
        pytest.raises(EdmgridError, match="another optuna-churn"),
        driver_lock(lock),
    ):
        pass


def test_samplers_are_optunas_and_cmaes_needs_its_package(monkeypatch):
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("gp", 0), optuna.samplers.GPSampler)
    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(EdmgridError, match="pip install cmaes"):
        make_sampler("cmaes", 0)


def test_a_trial_whose_job_another_run_holds_waits_for_it_and_reuses_its_row(results, monkeypatch):
    """Trials run on the scheduler of ``edmgrid run``: claimed, never run twice."""
    store, settings = Store(results), Settings(base_job(), "fd_raw", 16)
    deterministic = {**SOLVER["table5-cifar10-vp"], "S_churn": 0.0}
    job = trial_job(settings.base, deterministic, "fd_raw", "0-15")
    other_run = contextlib.ExitStack()  # another run, evaluating the deterministic job
    other_run.enter_context(active_run(results))
    assert other_run.enter_context(Claims(results)).acquire(job.job_id)
    ran: list[str] = []

    def finish_elsewhere() -> None:
        while not ran or store.row(ran[0]) is None:  # the driver is past the paper's trial
            time.sleep(0.05)
        time.sleep(1.5)
        run_job(jobs.Task.evaluation(job, "elsewhere"), store)
        other_run.close()

    def spy(task, *args, **kwargs):
        ran.append(task.key)
        return run_job(task, *args, **kwargs)

    monkeypatch.setattr(jobs, "run_job", spy)
    elsewhere = threading.Thread(target=finish_elsewhere)
    elsewhere.start()
    run_churn(store, settings, Options(trials=2, final_samples=0), log=lambda line: None)
    elsewhere.join()
    assert job.job_id not in ran and len(ran) == 1  # only the paper's trial ran here
    s = study(results)
    assert s.trials[1].value == pytest.approx(store.row(job.job_id)["fd_raw"])
    assert not list((results / "claims").glob("*.claim"))
