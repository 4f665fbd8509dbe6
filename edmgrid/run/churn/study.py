"""The study of ``optuna-churn`` in Optuna's journal: what it optimises (``Settings``, kept in the
study's attributes), its creation with the known answers as the first trials, its locks, its
sampler and its plots."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from edmgrid.config.job import JobSpec
from edmgrid.config.presets import SOLVER
from edmgrid.errors import EdmgridError, InputError
from edmgrid.files import check_space_name, file_lock
from edmgrid.run.churn.search import paper_preset
from edmgrid.run.store import Store

SAMPLERS = ("tpe", "random", "gp", "cmaes")


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
