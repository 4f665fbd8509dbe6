"""Every registry a space can name, by its YAML key (for ``edmgrid axes`` and docs)."""

from __future__ import annotations

from edmgrid.config.data import datasets
from edmgrid.config.metrics import metrics
from edmgrid.config.model import models
from edmgrid.design import AXES
from edmgrid.registry import Registry


def all_registries() -> dict[str, Registry]:
    """The design axes of Table 1, then data, model and metric."""
    return {**AXES, "data": datasets, "model": models, "metric": metrics}
