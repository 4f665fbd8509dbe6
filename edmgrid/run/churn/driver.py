"""The driver of ``optuna-churn``: asks trials of the study, runs their jobs on the scheduler of
``edmgrid run`` (one per worker at a time), tells each result as it finishes, and re-evaluates
the best trials and both references on fresh seeds."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from edmgrid.config.job import JobSpec
from edmgrid.config.space import Space
from edmgrid.errors import InputError, JobError
from edmgrid.run.churn import study as studies
from edmgrid.run.churn.search import (
    PARAMS,
    SearchRanges,
    check_churn,
    check_metric,
    paper_preset,
    saturation_note,
    search_ranges,
    trial_job,
)
from edmgrid.run.churn.study import (
    SAMPLERS,
    Settings,
    driver_lock,
    journal_path,
    make_sampler,
    open_study,
)
from edmgrid.run.claims import Claims, active_run
from edmgrid.run.executors import Event, Executor, SerialExecutor
from edmgrid.run.jobs import EngineTrainer, Task
from edmgrid.run.scheduler import Scheduler
from edmgrid.run.store import Store

Log = Callable[[str], None]


def pick_job(store: Store, space: Space | None, job_id: str | None) -> JobSpec:
    """The base job: the space's only job, the space's job with id ``job_id`` (a prefix), or
    the stored job ``job_id`` (a trained checkpoint's evaluation, say)."""
    if space is not None:
        jobs, where = space.jobs, f"space {space.source}"
    elif job_id is not None:
        where = f"the store {store.root}"
        found = [i for i in store.job_ids() if i.startswith(job_id)]
        jobs = [JobSpec.model_validate(store.config(i)) for i in found]
    else:
        raise InputError("give --space SPACE, --job JOB_ID, or --study NAME of an existing study")
    matches = [j for j in jobs if job_id is None or j.job_id.startswith(job_id)]
    if len(matches) != 1:
        if not matches:
            raise InputError(f"no job {job_id!r} in {where}")
        listed = ", ".join(j.job_id for j in matches[:12]) + (" …" if len(matches) > 12 else "")
        raise InputError(f"{len(matches)} jobs in {where}; pick one with --job ID: {listed}")
    return matches[0]


@dataclass(frozen=True)
class TrialJob:
    """One trial's job, the parameters it was asked with, and the columns that tie its row to
    the study."""

    job: JobSpec
    params: dict[str, float]
    columns: dict[str, Any]

    @property
    def key(self) -> tuple[int, str]:
        return self.columns["trial"], self.columns["stage"]

    def task(self) -> Task:
        return Task.evaluation(self.job, self.columns["study"], extra=self.columns)


class Pool:
    """The scheduler as the driver sees it: ``slots`` workers, a task in, a finished task with
    its row out (one done by another run: with its stored row). A context manager, as the
    scheduler."""

    def __init__(self, store: Store, executor: Executor, claims: Claims) -> None:
        self.store = store
        self.scheduler = Scheduler(store, executor, claims, listener=self)
        self.done: deque[tuple[Task, dict[str, Any]]] = deque()

    def __enter__(self) -> Pool:
        self.scheduler.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.scheduler.__exit__(kind)

    @property
    def slots(self) -> int:
        return self.scheduler.slots

    def submit(self, task: Task) -> None:
        self.scheduler.add(task)

    def next(self) -> tuple[Task, dict[str, Any]]:
        """Wait for a submitted task to finish."""
        while not self.done:
            assert self.scheduler.busy, "no task to wait for"
            self.scheduler.step()
        return self.done.popleft()

    def show(self, event: Event, label: str) -> None:
        pass

    def finished(self, task: Task, row: dict[str, Any] | None) -> None:
        if row is None:
            row = (self.store.training_row if task.kind == "train" else self.store.row)(task.key)
            assert row is not None
        self.done.append((task, row))


@dataclass(frozen=True)
class Options:
    """How long and how to search (the command line's knobs)."""

    trials: int = 20
    sampler: str = "tpe"
    seed: int = 0
    final_samples: int = 1024
    top_k: int = 3

    def check(self) -> None:
        if self.trials < 1:
            raise InputError(f"--trials must be at least 1, not {self.trials}")
        if self.final_samples < 0:
            raise InputError(f"--final-samples must be >= 0, not {self.final_samples}")
        if self.top_k < 1:
            raise InputError(f"--top-k must be at least 1, not {self.top_k}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown --sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")


@dataclass
class Candidate:
    """A trial re-evaluated at full size: its roles (paper, deterministic, top k)."""

    trial: int
    roles: list[str]
    params: dict[str, float]
    search: float
    final: float | None = None
    nfe: float | None = None

    @property
    def value(self) -> float:
        return self.search if self.final is None else self.final


@dataclass
class Report:
    """The outcome of ``optuna-churn``."""

    study: str
    metric: str
    paper: str
    paper_reason: str
    candidates: list[Candidate]
    trials: int
    failed: int
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def role(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if name in c.roles), None)

    @property
    def best(self) -> Candidate:
        return min(self.candidates, key=lambda c: c.value)


def _fmt(params: Mapping[str, float]) -> str:
    return "  ".join(f"{k}={params[k]:.4g}" for k in PARAMS if k in params)


class Driver:
    """Ask/tell from one process: keep the pool's slots busy, asking a trial whenever one frees
    up, and tell each result as it finishes."""

    def __init__(
        self,
        store: Store,
        study: optuna.Study,
        search: SearchRanges,
        pool: Pool,
        log: Log,
    ) -> None:
        self.store, self.study, self.pool, self.log = store, study, pool, log
        self.settings = Settings.from_attrs(study.user_attrs)
        self.distributions = search.distributions()
        self.jobs: set[str] = set()
        self.in_flight: dict[int, tuple[Task, TrialJob]] = {}  # by id of the task

    def job(self, params: Mapping[str, float], stage: str, final_samples: int = 0) -> JobSpec:
        n = self.settings.num_samples
        seeds = f"0-{n - 1}" if stage == "search" else f"{n}-{n + final_samples - 1}"
        return trial_job(self.settings.base, params, self.settings.metric, seeds)

    def item(
        self, number: int, params: Mapping[str, float], stage: str, final: int = 0
    ) -> TrialJob:
        columns = {"study": self.study.study_name, "trial": number, "stage": stage}
        return TrialJob(self.job(params, stage, final), dict(params), columns)

    def run(
        self, items: Iterator[TrialJob], done: Callable[[TrialJob, dict[str, Any]], None]
    ) -> None:
        """Run ``items``, pulled one at a time while a slot is free; a stored done row is reused
        without running. ``done(item, row)`` as each finishes."""
        while True:
            while len(self.in_flight) < self.pool.slots:
                item = next(items, None)
                if item is None:
                    break
                self.jobs.add(item.job.job_id)
                row = self.store.row(item.job.job_id)
                if row is not None and row["status"] == "done":
                    done(item, row)
                else:
                    task = item.task()
                    self.pool.submit(task)
                    self.in_flight[id(task)] = task, item
            if not self.in_flight:
                return
            task, row = self.pool.next()
            done(self.in_flight.pop(id(task))[1], row)

    def search(self, trials: int) -> None:
        """Run trials until the study has ``trials`` finished ones; stale running trials (of a
        killed driver) are evaluated first, drawing any parameter it had not drawn yet."""
        study, metric = self.study, self.settings.metric
        stale = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.Trial(study, t._trial_id)
            params: dict[str, float] = {}
            for name in PARAMS:
                d = self.distributions[name]
                assert isinstance(d, FloatDistribution)
                if name in t.params:
                    params[name] = t.params[name]
                else:  # the killed driver had not drawn it yet
                    params[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
            item = self.item(t.number, params, "search")
            if "job_id" not in t.user_attrs:  # killed between asking and recording it
                trial.set_user_attr("job_id", item.job.job_id)
            stale.append(item)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))

        def asked() -> Iterator[TrialJob]:
            yield from stale
            while finished + len(self.in_flight) < trials:
                trial = study.ask(self.distributions)
                item = self.item(trial.number, trial.params, "search")
                trial.set_user_attr("job_id", item.job.job_id)
                yield item

        def tell(item: TrialJob, row: dict[str, Any]) -> None:
            nonlocal finished
            number = item.columns["trial"]
            if row["status"] == "done":
                study.tell(number, float(row[metric]))
                outcome = f"{metric} {row[metric]:.5g}"
            else:
                study.tell(number, state=TrialState.FAIL)
                outcome = f"failed: {row['error']}"
            finished += 1
            self.log(f"trial {number:>3}  {_fmt(item.params)}  {outcome}")
            self.record()

        self.run(asked(), tell)

    def candidates(self, top_k: int, final_samples: int) -> list[Candidate]:
        """The paper's setting, the deterministic sampler, the ``top_k`` best distinct jobs, and
        trials an earlier run re-evaluated at ``final_samples``."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        chosen: dict[int, Candidate] = {}

        def add(t: FrozenTrial, role: str) -> None:
            assert t.value is not None
            entry = chosen.setdefault(t.number, Candidate(t.number, [], t.params, t.value))
            entry.roles.append(role)

        seen: set[str] = set()  # search jobs: trials that share one are one candidate
        top = 0
        for t in sorted(complete, key=lambda t: (t.value, t.number)):
            if "role" in t.user_attrs:
                add(t, t.user_attrs["role"])
            job_id = self.job(t.params, "search").job_id
            if job_id in seen:
                continue
            seen.add(job_id)
            if top < top_k:
                top += 1
                add(t, f"top {top}")
            elif t.number not in chosen and final_samples:
                final = self.job(t.params, "final", final_samples).job_id
                if self.store.status(final) == "done":
                    add(t, "earlier final")
        for entry in chosen.values():
            row = self.store.row(self.job(entry.params, "search").job_id)
            entry.nfe = None if row is None else float(row["nfe"])
        return sorted(chosen.values(), key=lambda c: c.trial)

    def final(self, candidates: list[Candidate], final_samples: int) -> None:
        """Re-evaluate the candidates on ``final_samples`` fresh seeds (disjoint from the
        search's, so the selection does not bias the comparison)."""
        by_trial = {c.trial: c for c in candidates}
        metric = self.settings.metric

        def done(item: TrialJob, row: dict[str, Any]) -> None:
            entry = by_trial[item.columns["trial"]]
            if row["status"] == "done":
                entry.final, entry.nfe = float(row[metric]), float(row["nfe"])
                outcome = f"{metric} {entry.final:.5g}"
            else:
                outcome = f"failed: {row['error']}"
            self.log(f"final {entry.trial:>3}  {', '.join(entry.roles)}  {outcome}")

        items = (self.item(c.trial, c.params, "final", final_samples) for c in candidates)
        self.run(items, done)
        self.record()

    def record(self) -> None:
        """Record the study as a space of every job it evaluated (kept across runs)."""
        name = self.study.study_name
        record = self.store.space_record(name)
        known = set(record["jobs"]) if record is not None else set()
        trials = self.study.get_trials(deepcopy=False)
        self.jobs |= {t.user_attrs["job_id"] for t in trials if "job_id" in t.user_attrs}
        jobs = sorted((known | self.jobs) & set(self.store.job_ids()))
        self.store.record_space(name, str(journal_path(self.store)), jobs)


def prepare(settings: Settings, name: str, store: Store, pool: Pool, log: Log) -> None:
    """Train the base job's model once (checkpoint cache), before any trial needs it."""
    trainer = EngineTrainer()
    key = trainer.key(settings.base)
    if key is None or store.has_checkpoint(trainer.checkpoint(store.cache, key)):
        return
    log(f"training the model once (checkpoint {key})")
    pool.submit(Task("train", key, settings.base, name, trainer=trainer))
    _, row = pool.next()
    if row["status"] != "done":
        raise JobError(f"training {key} failed: {row['error']}")


def run_churn(
    store: Store,
    settings: Settings | None,
    options: Options,
    *,
    section: Mapping[str, Any] | None = None,
    overrides: Mapping[str, tuple[float, float]] | None = None,
    source: str | None = None,
    study_name: str | None = None,
    executor: Executor | None = None,
    log: Log = print,
) -> Report:
    """Search (or continue searching) the churn of ``settings``' job; see the module docstring.

    Ranges: ``section`` (a space's ``search:``, from file ``source``) with ``overrides`` over it.
    ``settings`` None continues the existing study ``study_name`` with its last ranges.
    ``executor`` (default: serial, in this process) runs the trials, one per worker at a time.
    """
    options.check()
    overrides = dict(overrides or {})
    if settings is not None:
        search = search_ranges(section, overrides, source)
        check_metric(settings.metric)
        check_churn(settings.base, settings.metric)
        if settings.num_samples < 2:
            raise InputError(f"--num-samples must be at least 2, not {settings.num_samples}")
    study = open_study(store, study_name, settings)
    if settings is None:
        search = search_ranges(study.user_attrs.get("search"), overrides)
    name = study.study_name
    lock = driver_lock(store.root / "optuna" / name / "driver.lock")
    with active_run(store.root), lock, Claims(store.root) as claims:
        pool = Pool(store, executor or SerialExecutor(), claims)
        with pool:
            study.set_user_attr("search", search.model_dump())
            settings = Settings.from_attrs(study.user_attrs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a resumed study must not replay the sampler's first draws
                study.sampler = make_sampler(options.sampler, options.seed + len(study.trials))
            prepare(settings, name, store, pool, log)
            driver = Driver(store, study, search, pool, log)
            driver.search(options.trials)
            candidates = driver.candidates(options.top_k, options.final_samples)
            if options.final_samples > 0 and candidates:
                driver.final(candidates, options.final_samples)
    plots, notes = studies.plot(study, settings.metric, store.root / "optuna" / name)
    store.refresh_db()
    note = saturation_note(search, settings.base)
    if note is not None:
        notes.append(note)
    trials = study.get_trials(deepcopy=False)
    paper, reason = paper_preset(settings.base)
    return Report(
        study=name,
        metric=settings.metric,
        paper=paper,
        paper_reason=reason,
        candidates=candidates,
        trials=len(trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        plots=plots,
        notes=notes,
    )
