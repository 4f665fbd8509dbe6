"""Named presets from the paper, as data. A dict with ``preset: NAME`` (or a list of names)
is the preset's content with the dict's other keys merged over it.

Presets are scoped by the key they sit under: ``sampler`` (Table 1's sampling families),
``solver`` (Table 5's stochastic settings), ``model`` (Table 2's training configurations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edmgrid.config.table2 import model_presets

#: Table 1 sampling families with the step counts of their original samplers (Table 3, row 1).
SAMPLER: dict[str, dict[str, Any]] = {
    "vp": {
        "solver": {"name": "euler"},
        "timesteps": {"name": "vp", "num_steps": 256},
        "schedule": {"name": "vp"},
        "scaling": {"name": "vp"},
    },
    "ve": {
        "solver": {"name": "euler"},
        "timesteps": {"name": "ve", "num_steps": 8192},
        "schedule": {"name": "ve"},
        "scaling": {"name": "none"},
    },
    "iddpm": {
        "solver": {"name": "euler"},
        "timesteps": {"name": "iddpm", "num_steps": 250},
        "schedule": {"name": "linear"},
        "scaling": {"name": "none"},
    },
    "edm": {
        "solver": {"name": "heun"},
        "timesteps": {"name": "edm", "num_steps": 18},
        "schedule": {"name": "linear"},
        "scaling": {"name": "none"},
    },
}

#: Table 5: grid-searched stochastic sampler settings.
SOLVER: dict[str, dict[str, Any]] = {
    "table5-cifar10-vp": {"S_churn": 30, "S_min": 0.01, "S_max": 1, "S_noise": 1.007},
    "table5-cifar10-ve": {"S_churn": 80, "S_min": 0.05, "S_max": 1, "S_noise": 1.007},
    "table5-imagenet-pretrained": {"S_churn": 80, "S_min": 0.05, "S_max": 50, "S_noise": 1.003},
    "table5-imagenet-ours": {"S_churn": 40, "S_min": 0.05, "S_max": 50, "S_noise": 1.003},
}

#: A preset is a dict, or a function of the node it is named in (Table 2 reads ``budget``).
Preset = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]

PRESETS: dict[str, dict[str, Preset]] = {
    "sampler": dict(SAMPLER),
    "solver": dict(SOLVER),
    "model": dict(model_presets()),
}
