"""The outcome of one ``edmgrid run`` (kept free of heavy imports for the CLI's fast path)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """Counts of a run: done, skipped (already in the store), failed; seconds per kind."""

    counts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    suspects: list[dict[str, Any]] = field(default_factory=list)  # done, numbers implausible
    executed: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, row: dict[str, Any], name: str) -> None:
        kind = row["kind"]
        self.counts[row["status"]] += 1
        self.seconds[kind] = self.seconds.get(kind, 0.0) + float(row["seconds"])
        self.executed.append(name)
        if row["status"] == "failed":
            self.failures.append(row)
        elif row.get("suspect"):
            self.suspects.append(row)
