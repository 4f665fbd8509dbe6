"""The design space: one module per axis, each a registry of named choices (EDM Table 1)."""

from __future__ import annotations

from edmgrid.design.augment import augments
from edmgrid.design.loss_weight import loss_weights
from edmgrid.design.networks import networks
from edmgrid.design.p_train import p_trains
from edmgrid.design.precond import preconds
from edmgrid.design.scaling import scalings
from edmgrid.design.schedule import schedules
from edmgrid.design.solver import solvers
from edmgrid.design.timesteps import timesteps
from edmgrid.registry import Registry

#: Every axis by its YAML key, in the order of Table 1 (then augmentation and the network F).
AXES: dict[str, Registry] = {
    "solver": solvers,
    "timesteps": timesteps,
    "schedule": schedules,
    "scaling": scalings,
    "precond": preconds,
    "loss_weight": loss_weights,
    "p_train": p_trains,
    "augment": augments,
    "network": networks,
}
