"""``edmgrid status``: how far the spaces of a results directory are, from the store (rows,
claims) and, for runs detached to Slurm (``edmgrid run --detach``), from Slurm's queue."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edmgrid.errors import EdmgridError
from edmgrid.run.executors.slurm import ALIVE, drivers, queue
from edmgrid.run.store import Store


@dataclass(frozen=True)
class SpaceStatus:
    """One recorded space: its jobs by state; ``driver``: the state of its detached driver
    job (empty: none); ``queue``: its task jobs in Slurm's queue by state."""

    space: str
    jobs: int
    done: int
    failed: int
    running: int  # claimed by a live run: executing, or queued on Slurm
    driver: str = ""
    log: str = ""  # the detached driver's output
    queue: Counter[str] = field(default_factory=Counter)

    @property
    def todo(self) -> int:
        return self.jobs - self.done - self.failed

    @property
    def attached(self) -> bool:
        """Whether a detached driver is still at work on it."""
        return self.driver in ALIVE


def grid_status(store: Store, space: str | None = None) -> list[SpaceStatus]:
    """The status of ``space`` (default: every space recorded in the store or detached)."""
    driver_of = {d["space"]: d for d in drivers(store.root)}
    recorded = {p.stem for p in (store.root / "spaces").glob("*.json")}
    names = [space] if space else sorted(recorded | driver_of.keys())
    try:
        slurm = queue()
    except (OSError, EdmgridError):  # no Slurm here: the store alone
        slurm = {}
    claimed = {p.stem for p in (store.root / "claims").glob("*.claim")}
    out = []
    for name in names:
        record = store.space_record(name)
        if record is None and name not in driver_of:
            raise EdmgridError(f"no space {name!r} in {store.root} (run it first)")
        # a detached driver records its space once it starts
        jobs: list[str] = record["jobs"] if record else []
        counts = Counter(store.statuses(jobs).values())
        driver = driver_of.get(name)
        state = slurm.get(str(driver["job_id"]), ("", "gone"))[1] if driver else ""
        log = driver["log"] if driver else ""
        tasks = Counter(s for n, s in slurm.values() if n == f"edmgrid-{name}")
        running = len(claimed & set(jobs))
        out.append(
            SpaceStatus(
                name, len(jobs), counts["done"], counts["failed"], running, state, log, tasks
            )
        )
    return out
