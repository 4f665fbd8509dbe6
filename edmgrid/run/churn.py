"""``edmgrid optuna-churn``: search the stochastic sampler's S_churn, S_min, S_max, S_noise
(EDM Algorithm 2, §4) for one model and one base sampler with Optuna, ask/tell from one driver.

The study lives in Optuna's ``JournalStorage`` at ``results/optuna/journal.log`` (readable by
optuna-dashboard); rerunning continues it. Trial 0 is the paper's Table 5 setting for the model's
family and trial 1 the deterministic sampler (S_churn = 0), so the search starts from the known
answers. Every evaluated trial is a row of the store with ``study``, ``trial`` and ``stage``
columns, and the study is recorded as a space of that name (``edmgrid compare --space STUDY``).

S_min and S_max are sampled log-uniformly (Table 5's grids are geometric); a lower bound of 0 is
raised to ``LOG_FLOOR`` = 1e-3, below the smallest σ_i of every discretisation's default range
(EDM 0.002), where S_min acts as 0. Settings without churn (S_churn = 0, or S_min > S_max: an
empty window) all run the deterministic sampler's job, so they share its row.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from edmgrid.config.job import JobSpec
from edmgrid.config.model import TrainedModel
from edmgrid.config.presets import SOLVER
from edmgrid.config.space import Space
from edmgrid.errors import EdmgridError, InputError, JobError
from edmgrid.files import check_space_name, file_lock
from edmgrid.run.claims import active_run
from edmgrid.run.executors import Event, Executor, SerialExecutor
from edmgrid.run.jobs import EngineTrainer, Task
from edmgrid.run.store import Store

#: Algorithm 2's churn parameters, in the order they are printed.
PARAMS = ("S_churn", "S_min", "S_max", "S_noise")
#: Sampled on a log scale; a lower bound of 0 becomes LOG_FLOOR.
LOG_PARAMS = ("S_min", "S_max")
LOG_FLOOR = 1e-3
SAMPLERS = ("tpe", "random", "gp", "cmaes")
#: Metrics of the sample distribution; ``ode_error`` measures the distance to the ODE solution,
#: which churn can only increase, so it is not an objective.
NOT_OBJECTIVES = ("ode_error",)

Log = Callable[[str], None]


class ChurnSearch(BaseModel):
    """Search ranges [min, max]; the defaults span Table 5's grid (S_noise to 1.011)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    S_churn: tuple[float, float] = (0.0, 100.0)
    S_min: tuple[float, float] = (0.0, 10.0)
    S_max: tuple[float, float] = (0.2, 80.0)
    S_noise: tuple[float, float] = (1.0, 1.011)

    @field_validator(*PARAMS)
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"bounds must be finite, not [{low}, {high}]")
        if low > high:
            raise ValueError(f"min {low:g} > max {high:g}")
        if low < 0 or (info.field_name == "S_noise" and low <= 0):
            raise ValueError(f"{info.field_name} must be {'> 0' if low == 0 else '>= 0'}")
        return value

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna's distributions: S_min, S_max log-uniform above LOG_FLOOR, the rest uniform."""
        out: dict[str, BaseDistribution] = {}
        for name in PARAMS:
            low, high = getattr(self, name)
            log = name in LOG_PARAMS and high > max(low, LOG_FLOOR)
            out[name] = FloatDistribution(max(low, LOG_FLOOR) if log else low, high, log=log)
        return out


def search_ranges(
    section: Mapping[str, Any] | None,
    overrides: Mapping[str, tuple[float, float]],
    file: str | None = None,
) -> ChurnSearch:
    """The space's ``search:`` section with the command line's ranges over it."""
    base = _validate(dict(section or {}), "search.", file)
    return _validate({**base.model_dump(), **overrides}, "--", None)


def _validate(data: dict[str, Any], prefix: str, file: str | None) -> ChurnSearch:
    try:
        return ChurnSearch.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"][:1])
        reason = err["msg"].removeprefix("Value error, ")
        raise InputError(reason, file=file, path=f"{prefix}{where}") from None


def paper_preset(job: JobSpec) -> tuple[str, str]:
    """The Table 5 preset of the model's family, and why: a trained model's ``family``, else the
    sampler's σ(t) (``ve`` → the VE column); the analytic denoiser falls back to CIFAR-10 VP."""
    family = job.model.family if isinstance(job.model, TrainedModel) else None
    if family in ("vp", "ve"):
        return f"table5-cifar10-{family}", f"model family {family}"
    if job.sampler.schedule.name == "ve":
        return "table5-cifar10-ve", "σ(t) = ve"
    return "table5-cifar10-vp", f"no VP/VE family for model kind {job.model.kind}: CIFAR-10 VP"


def churn_active(params: Mapping[str, float]) -> bool:
    """Whether a setting adds noise: S_churn > 0 and a non-empty window S_min ≤ σ ≤ S_max."""
    return params["S_churn"] > 0 and params["S_min"] <= params["S_max"]


def trial_job(base: JobSpec, params: Mapping[str, float], metric: str, seeds: str) -> JobSpec:
    """The base job with the trial's churn, only the objective metric, and ``seeds``.

    A setting without churn becomes the deterministic sampler (the solver's defaults), so every
    such setting is one job.
    """
    config = base.resolved()
    solver = {k: v for k, v in config["sampler"]["solver"].items() if k not in PARAMS}
    if churn_active(params):
        solver.update({k: float(params[k]) for k in PARAMS})
    config["sampler"]["solver"] = solver
    config["metrics"] = [m for m in config["metrics"] if m["name"] == metric] or [{"name": metric}]
    config["seeds"] = seeds
    return JobSpec.model_validate(config)


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


def default_metric(job: JobSpec) -> str:
    """The job's first metric that is an objective."""
    names = [m.name for m in job.metrics if m.name not in NOT_OBJECTIVES]
    if not names:
        raise InputError("the job has no distribution metric (fd, fd_raw); pass --metric")
    return names[0]


def check_metric(metric: str) -> None:
    from edmgrid.config.metrics import metrics

    if metric in NOT_OBJECTIVES:
        raise InputError(
            f"--metric {metric}: the distance to the deterministic ODE solution cannot improve "
            "with churn; use a distribution metric (fd, fd_raw)"
        )
    if metric not in metrics:
        valid = ", ".join(n for n in metrics.names if n not in NOT_OBJECTIVES)
        raise InputError(f"unknown --metric {metric!r}; valid: {valid}")


def check_churn(settings: Settings) -> None:
    """The base job's solver must take churn (Euler, Heun; not the multistep solvers)."""
    paper = SOLVER[paper_preset(settings.base)[0]]
    try:
        trial_job(settings.base, paper, settings.metric, "0")
    except ValidationError as e:
        reason = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError(f"optuna-churn needs a stochastic solver: {reason}") from None


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler ``name`` seeded with ``seed``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise EdmgridError(
                "--sampler cmaes needs the cmaes package: pip install cmaes"
            ) from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise InputError(f"unknown --sampler {name!r}; valid: {', '.join(SAMPLERS)}")


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


class Pool(Protocol):
    """Where the driver's tasks run, ``slots`` at a time."""

    slots: int

    def submit(self, task: Task) -> None:
        """Start ``task`` (the driver never has more than ``slots`` in flight)."""
        ...

    def next_row(self) -> dict[str, Any]:
        """Wait for a submitted task to finish; its row (with the task's ``extra`` columns)."""
        ...


class ExecutorPool:
    """The tasks on an executor of ``edmgrid run`` (serial, local workers, Ray): one slot per
    worker. A context manager: it opens the executor, and closes it (at once on an error)."""

    def __init__(self, executor: Executor, root: Path) -> None:
        self.executor, self.root = executor, root
        self.tasks: dict[int, Task] = {}  # by worker
        self.rows: deque[dict[str, Any]] = deque()
        self.slots = 0

    def __enter__(self) -> ExecutorPool:
        self.executor.open(self.root.resolve(), self.on_event)
        self.slots = len(self.executor.free())
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.executor.close(wait=kind is None)

    def submit(self, task: Task) -> None:
        worker = self.executor.free()[0]
        self.tasks[worker] = task
        self.executor.submit(task, worker)

    def next_row(self) -> dict[str, Any]:
        while not self.rows:
            self.executor.poll(0.1)
        return self.rows.popleft()

    def on_event(self, event: Event) -> None:
        if event.kind == "finished" and event.worker in self.tasks:
            assert event.row is not None
            self.rows.append({**event.row, **self.tasks.pop(event.worker).extra})


@dataclass(frozen=True)
class Settings:
    """What a study optimises: the base job, the objective metric, and the proxy's size."""

    base: JobSpec
    metric: str
    num_samples: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.base.job_id, self.metric, self.num_samples

    @property
    def default_name(self) -> str:
        return f"churn-{self.base.job_id}-{self.metric}-n{self.num_samples}"

    def attrs(self) -> dict[str, Any]:
        return {
            "base_job": self.base.model_dump_json(),
            "base_job_id": self.base.job_id,
            "metric": self.metric,
            "num_samples": self.num_samples,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Settings:
        base = JobSpec.model_validate_json(attrs["base_job"])
        return cls(base, attrs["metric"], int(attrs["num_samples"]))


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


def journal_path(store: Store) -> Path:
    return store.root / "optuna" / "journal.log"


class JournalLock:
    """The journal's writer lock as an ``flock``, which the kernel releases when its holder
    dies. (Optuna's default lock is a file that a killed driver leaves behind, stalling the
    next writer for its 30 s grace period.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = contextlib.ExitStack()

    def acquire(self) -> bool:
        self.held.enter_context(file_lock(self.path))
        return True

    def release(self) -> None:
        self.held.close()


def open_study(store: Store, name: str | None, settings: Settings | None) -> optuna.Study:
    """Load study ``name`` (checking it optimises ``settings``) or create it with the paper's
    setting and the deterministic sampler enqueued as trials 0 and 1.

    Each step of the creation is its own journal entry; a study whose creation was cut short
    (a killed driver) is completed here.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = journal_path(store)
    journal.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalLock(journal.with_name("journal.flock"))
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=lock))  # type: ignore[arg-type]
    if name is None:
        assert settings is not None
        name = settings.default_name
    try:
        check_space_name(name)  # the study is recorded as a space of its name
    except ValueError as e:
        raise InputError(str(e), path="--study") from None
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
    elif settings is None:
        raise InputError(f"no study {name!r} in {journal}; give --space or --job to start it")
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    try:
        stored = Settings.from_attrs(study.user_attrs)
    except KeyError:  # new, or cut short before all its settings were stored
        if settings is None:
            raise InputError(
                f"study {name!r} was cut short while it was created; give --space or --job "
                "to set it up"
            ) from None
        for key, value in settings.attrs().items():
            study.set_user_attr(key, value)
        stored = settings
    if settings is not None and stored.key != settings.key:
        raise InputError(
            f"study {name} optimises {stored.metric} of job {stored.base.job_id} on "
            f"{stored.num_samples} samples, not {settings.metric} of {settings.base.job_id} "
            f"on {settings.num_samples}; pass another --study NAME"
        )
    roles = {t.user_attrs.get("role") for t in study.get_trials(deepcopy=False)}
    paper = dict(SOLVER[paper_preset(stored.base)[0]])
    if "paper" not in roles:
        study.enqueue_trial(paper, user_attrs={"role": "paper"})
    if "deterministic" not in roles:
        deterministic = {**paper, "S_churn": 0.0, "S_noise": 1.0}
        study.enqueue_trial(deterministic, user_attrs={"role": "deterministic"})
    return study


@contextlib.contextmanager
def driver_lock(path: Path) -> Iterator[None]:
    """One driver per study: a second ``optuna-churn`` on it fails instead of racing."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdmgridError(f"another optuna-churn is driving this study ({path})") from None
        yield


def _fmt(params: Mapping[str, float]) -> str:
    return "  ".join(f"{k}={params[k]:.4g}" for k in PARAMS if k in params)


class Driver:
    """Ask/tell from one process: keep the pool's slots busy, asking a trial whenever one frees
    up, and tell each result as it finishes."""

    def __init__(
        self,
        store: Store,
        study: optuna.Study,
        search: ChurnSearch,
        pool: Pool,
        log: Log,
    ) -> None:
        self.store, self.study, self.pool, self.log = store, study, pool, log
        self.settings = Settings.from_attrs(study.user_attrs)
        self.distributions = search.distributions()
        self.jobs: set[str] = set()
        self.in_flight: dict[tuple[int, str], TrialJob] = {}

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
                    self.pool.submit(item.task())
                    self.in_flight[item.key] = item
            if not self.in_flight:
                return
            row = self.pool.next_row()
            done(self.in_flight.pop((row["trial"], row["stage"])), row)

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
    row = pool.next_row()
    if row["status"] != "done":
        raise JobError(f"training {key} failed: {row['error']}")


def plot(study: optuna.Study, metric: str, directory: Path) -> tuple[list[Path], list[str]]:
    """Optimisation history and parameter importances (Optuna's matplotlib plots) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    directory.mkdir(parents=True, exist_ok=True)
    paths, notes = [], []
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "history.png": plot_optimization_history,
        "importance.png": plot_param_importances,
    }
    for filename, make in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = make(study)
            except (ValueError, RuntimeError) as e:
                notes.append(f"no {filename}: {e}")
                continue
        ax.figure.suptitle(study.study_name, fontsize=9)
        if filename == "history.png":
            ax.set_ylabel(f"{metric} (lower is better)")
        ax.figure.tight_layout()
        ax.figure.savefig(directory / filename, dpi=120)
        plt.close(ax.figure)
        paths.append(directory / filename)
    return paths, notes


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
        check_churn(settings)
        if settings.num_samples < 2:
            raise InputError(f"--num-samples must be at least 2, not {settings.num_samples}")
    study = open_study(store, study_name, settings)
    if settings is None:
        search = search_ranges(study.user_attrs.get("search"), overrides)
    name = study.study_name
    lock = driver_lock(store.root / "optuna" / name / "driver.lock")
    pool = ExecutorPool(executor or SerialExecutor(), store.root)
    with active_run(store.root), lock, pool:
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
    plots, notes = plot(study, settings.metric, store.root / "optuna" / name)
    store.refresh_db()
    steps = settings.base.sampler.timesteps.num_steps
    if search.S_churn[1] > steps * (math.sqrt(2) - 1):
        notes.append(
            f"γ = min(S_churn/N, √2−1) saturates at S_churn = {steps * (math.sqrt(2) - 1):.3g}"
            f" for N = {steps} steps: larger S_churn values sample alike"
        )
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
