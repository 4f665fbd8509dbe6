"""Table 2 training configurations A–F for the VP and VE families, and the budgets that scale them.

Values are the paper's (Table 7 and §5; CIFAR-10 column). A budget maps the paper's run to one
that fits a machine; its rules live here and nowhere else:

``paper``  the values as published (200 Mimg, 128-channel U-Nets at 32×32).
``tiny``   every duration in images (training length, LR ramp-up, EMA half-life) × 1/4000,
           batch ÷ 4, model_channels ÷ 8, one residual block per level, attention at 4×4 (the
           16×16 level of a 32×32 image is 4×4 at the 8×8 of digits). Same channel multipliers,
           preconditioning, losses, learning rates, dropout and augmentation as the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

CONFIGS = ("A", "B", "C", "D", "E", "F")
FAMILIES = ("vp", "ve")

#: Paper-scale duration of every configuration (Table 7), in kimg.
PAPER_DURATION_KIMG = 200_000


def table2(family: str, config: str, budget: str = "paper") -> dict[str, Any]:
    """The resolved ``model`` dict of one Table 2 cell (before validation)."""
    if family not in FAMILIES or config not in CONFIGS:
        raise KeyError(f"{family}-{config}")
    vp = family == "vp"
    later = CONFIGS.index(config)  # how many of B..F are applied
    model: dict[str, Any] = {
        "kind": "trained",
        "family": family,
        "config": config,
        "budget": budget,
        "network": {
            "arch": "ddpmpp" if vp else "ncsnpp",
            "model_channels": 128,
            "channel_mult": [1, 2, 2, 2] if later < 2 else [2, 2, 2],  # C: redistribute capacity
            "num_blocks": 4,
            "attn_resolutions": [16],
            "dropout": 0.10 if later < 1 else 0.13,
        },
        "precond": {"name": family if later < 3 else "edm"},  # D: our preconditioning
        "loss_weight": {"name": family if later < 4 else "edm"},  # E: our loss function
        "p_train": {"name": family if later < 4 else "edm"},
        "augment": {"name": "none"} if later < 5 else {"name": "edm", "p": 0.12},  # F
        "training": {
            "duration_kimg": PAPER_DURATION_KIMG,
            "batch_size": 128 if later < 1 else 512,  # B: adjusted hyper-parameters
            "lr": 2e-4 if later < 1 else 1e-3,
            "lr_rampup_kimg": 640 if later < 1 else 10_000,
            "ema_halflife_kimg": (890 if vp else 900) if later < 1 else 500,
            "grad_clip": 1.0 if later < 1 else None,
            "xflip": later < 5,  # dataset x-flips: on in A, off in F (App. F.3)
        },
    }
    if budget == "tiny":
        _tiny(model)
    elif budget != "paper":
        raise ValueError(f"unknown budget {budget!r}; valid: paper, tiny")
    return model


def _tiny(model: dict[str, Any]) -> None:
    """The ``tiny`` budget rules (module docstring)."""
    net, training = model["network"], model["training"]
    net["model_channels"] //= 8
    net["num_blocks"] = 1
    net["attn_resolutions"] = [4]
    for key in ("duration_kimg", "lr_rampup_kimg", "ema_halflife_kimg"):
        training[key] = training[key] / 4000
    training["batch_size"] //= 4


def model_presets() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Presets ``vp-A`` … ``ve-F``; the ``budget`` key beside ``preset`` picks the scale."""
    return {f"{f}-{c}": partial(_cell, f, c) for f in FAMILIES for c in CONFIGS}


def _cell(family: str, config: str, node: dict[str, Any]) -> dict[str, Any]:
    return table2(family, config, node.get("budget") or "paper")
