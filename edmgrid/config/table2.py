"""Table 2 training configurations A–F for the VP and VE families, and the budgets that scale them.

Values are the paper's (Table 7 and §5; CIFAR-10 column), with one correction: ve-A's EMA
half-life (below). A budget maps the paper's run to one that fits a machine; its rules live here
and nowhere else:

``paper``  the values as published (200 Mimg, 128-channel U-Nets at 32×32).
``tiny``   the paper's 200 Mimg ÷ ``TINY_SCALE`` = 80 kimg (A: 2500 steps of 32 images, B–F:
           625 steps of 128); the LR ramp-up keeps its share of the run (A 0.32%, B–F 5%).
           Batch ÷ 4, model_channels ÷ 8 (16), one residual block per level, attention at 4×4
           (the 16×16 level of a 32×32 image is 4×4 at the 8×8 of digits). EMA half-lives keep
           their ratios to each other but are ``TINY_EMA_STRETCH`` times their share of the
           paper's run: B–F's 0.5 Mimg is 0.25% of 200 Mimg, about 1000 steps at batch 512; the
           same share of 625 steps is 1.6 steps (β ≈ 0.65 per step), no average at all.
           Stretched, B–F's half-life is 5% of the run (31 steps), the most the official
           ramp-up (H ≤ 0.05·images seen) lets act by the end. Same channel multipliers,
           preconditioning, losses, learning rates, dropout and augmentation as the paper.

           Why these: on digits (50 kimg, x-flips off, σ_data 0.75; 211 before), vp-E's fd
           was 101 with the EMA at the paper's share and 66 stretched; 28 at 100 kimg. Doubling
           the width instead gave 32 at 1.3× the CPU time of that, halving the batch 54,
           doubling the learning rate 53. 80 kimg at 16 channels keeps the 12 trainings and
           evaluations of spaces/table2.yaml within 20 minutes of 2 idle cores (≈ 17, README).

What the data set decides (:func:`for_data`, applied to every job's Table 2 cell): dataset
x-flips in A–E only where mirrored images are valid data, and σ_data of EDM's preconditioning
and loss (D–F) from the data set, both unless the space sets them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from edmgrid.config.data import DataSpec
from edmgrid.config.model import TrainedModel
from edmgrid.design.augment import EDMAugment

CONFIGS = ("A", "B", "C", "D", "E", "F")
FAMILIES = ("vp", "ve")

#: Paper-scale duration of every configuration (Table 7), in kimg.
PAPER_DURATION_KIMG = 200_000

#: The ``tiny`` budget: run length ÷ TINY_SCALE, EMA half-life share of the run × TINY_EMA_STRETCH.
TINY_SCALE = 2500
TINY_EMA_STRETCH = 20
TINY_DURATION_KIMG = PAPER_DURATION_KIMG / TINY_SCALE


def ema_halflife_kimg(family: str, config: str) -> float:
    """Table 7's EMA half-life (paper scale, kimg).

    Table 7 gives A's as 0.89 / 0.9 Mimg (VP / VE). Both come from Song et al.'s EMA rates at
    batch 128, half-life = 128·ln ½ / ln(rate) images: VP's 0.9999 gives 887 kimg (the 0.89),
    VE's 0.999 gives 88.7 kimg, i.e. 0.09 Mimg, so "0.9" is a dropped zero. B–F: 0.5 Mimg.
    """
    if config != "A":
        return 500
    return 890 if family == "vp" else 90


def table2(family: str, config: str, budget: str = "paper") -> dict[str, Any]:
    """The resolved ``model`` dict of one Table 2 cell (before validation and :func:`for_data`)."""
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
            "ema_halflife_kimg": ema_halflife_kimg(family, config),
            "grad_clip": 1.0 if later < 1 else None,
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
    for key in ("duration_kimg", "lr_rampup_kimg"):
        training[key] = training[key] / TINY_SCALE
    training["ema_halflife_kimg"] = training["ema_halflife_kimg"] * TINY_EMA_STRETCH / TINY_SCALE
    training["batch_size"] //= 4


def for_data(model: TrainedModel, data: DataSpec) -> TrainedModel:
    """A Table 2 cell fitted to its data set, for the settings the space left unset.

    Dataset x-flips (Table 7: on in A, off in F; the paper does not say for B–E, we keep them
    through E) are used only where mirrored images are valid samples (``data.xflip_valid``).
    Where they are not, F's non-leaky x-flip loses the always-on multiplier that makes it
    stand in for dataset x-flips (App. F.2) and is enabled with probability p like the y-flip.
    EDM's σ_data (precond and loss, D–F) is the data set's ``sigma_data``.
    Models that are no Table 2 cell (``config`` unset) are returned unchanged.
    """
    if model.config is None:
        return model
    update: dict[str, Any] = {}
    training = model.training
    if "xflip" not in training.model_fields_set:
        xflip = CONFIGS.index(model.config) < 5 and data.xflip_valid
        update["training"] = training.model_copy(update={"xflip": xflip})
    augment = model.augment
    if (
        isinstance(augment, EDMAugment)
        and not data.xflip_valid
        and "xflip" not in augment.model_fields_set
    ):
        update["augment"] = augment.model_copy(update={"xflip": 1.0})
    for key in ("precond", "loss_weight"):
        choice = getattr(model, key)
        if hasattr(choice, "sigma_data") and "sigma_data" not in choice.model_fields_set:
            update[key] = choice.model_copy(update={"sigma_data": data.sigma_data})
    return model.model_copy(update=update)


def model_presets() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Presets ``vp-A`` … ``ve-F``; the ``budget`` key beside ``preset`` picks the scale."""
    return {f"{f}-{c}": partial(_cell, f, c) for f in FAMILIES for c in CONFIGS}


def _cell(family: str, config: str, node: dict[str, Any]) -> dict[str, Any]:
    return table2(family, config, node.get("budget") or "paper")
