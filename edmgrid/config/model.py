"""The model axis: which denoiser D(x; σ) a job samples from."""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field

from edmgrid.design.augment import Augment, NoAugment, augments
from edmgrid.design.loss_weight import EDMWeight, LossWeight, loss_weights
from edmgrid.design.networks import DDPMpp, Network, networks
from edmgrid.design.p_train import EDMTrain, PTrain, p_trains
from edmgrid.design.precision import DEFAULT, Precision
from edmgrid.design.precond import EDMPrecond, Precond, preconds
from edmgrid.registry import Choice, Registry, Strict

models = Registry("model", "the denoiser D(x; σ)", key="kind")

if TYPE_CHECKING:  # type checkers see the base class; pydantic validates the tagged union
    NetworkChoice = Network
    PrecondChoice = Precond
    LossWeightChoice = LossWeight
    PTrainChoice = PTrain
    AugmentChoice = Augment
else:
    NetworkChoice = networks.union()
    PrecondChoice = preconds.union()
    LossWeightChoice = loss_weights.union()
    PTrainChoice = p_trains.union()
    AugmentChoice = augments.union()


class ModelSpec(Choice, ABC):
    """A denoiser source: a new kind is a registered subclass with a ``kind`` literal, and its
    builder registered with ``edmgrid.engine.evaluate.denoiser_of.register``."""

    kind: str


@models.register
class AnalyticModel(ModelSpec):
    """The ideal denoiser of the data set: no training, exact sampler ablations."""

    kind: Literal["analytic"] = "analytic"
    chunk: int = Field(4096, ge=1)


@models.register
class PickleModel(ModelSpec):
    """An official EDM network pickle's ``ema`` network (needs the NVlabs/edm code importable)."""

    kind: Literal["pickle"] = "pickle"
    input_paths = ("path",)
    path: str = Field(min_length=1)
    sampling_precision: Precision = DEFAULT  # the network's forward (design.precision)


@models.register
class EntrypointModel(ModelSpec):
    """A torch.nn.Module from the factory ``target`` ("module:function") called with ``kwargs``.

    The module is called as ``net(x, sigma, class_labels)`` (see :mod:`edmgrid.engine.models`).
    """

    kind: Literal["entrypoint"] = "entrypoint"
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    sampling_precision: Precision = DEFAULT  # the network's forward (design.precision)


#: Fields of ``TrainingSpec`` that say how a training runs, not what it computes: the training key
#: leaves them out, so changing them reuses the checkpoint (like the number of devices, which
#: is no field at all; ``batch_gpu`` changes the result by float rounding only).
HOW_FIELDS = frozenset({"batch_gpu", "tick_kimg", "snapshot_kimg", "keep_snapshots"})


class TrainingSpec(Strict):
    """Optimisation hyper-parameters (EDM Table 7; official training_loop units: kimg).

    ``precision``: fp32 (the official default, TF32 off), tf32 (TF32 matmuls and convolutions on
    a GPU), bf16 or fp16 (autocast on the device; the weights, EMA and Adam state stay fp32).
    ``loss_scaling``: the loss is multiplied by it and the gradients divided by it before the
    update (the official ``--ls``, default 1); ``dynamic`` is PyTorch's dynamic loss scaling,
    which skips steps whose gradients overflow (for fp16). ``batch_gpu``: images per device
    and forward pass (official ``--batch-gpu``), the rest by gradient accumulation.
    ``tick_kimg``: a training log row per tick (official ``--tick``); ``snapshot_kimg``: an EMA
    snapshot and the resume state every so many kimg (the paper: 2.5 Mimg); ``keep_snapshots``:
    keep only the latest N EMA snapshots (default all, as the official code).
    """

    model_config = ConfigDict(frozen=True)

    duration_kimg: float = Field(200_000, gt=0)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_rampup_kimg: float = Field(10_000, ge=0)
    ema_halflife_kimg: float = Field(500, ge=0)
    ema_rampup_ratio: float | None = Field(0.05, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    xflip: bool = False
    cond: bool = False
    seed: int = Field(0, ge=0)
    precision: Precision = DEFAULT
    loss_scaling: Annotated[float, Field(gt=0)] | Literal["dynamic"] = 1.0
    batch_gpu: int | None = Field(None, ge=1)
    tick_kimg: float = Field(50, gt=0)
    snapshot_kimg: float = Field(2500, gt=0)
    keep_snapshots: int | None = Field(None, ge=1)


@models.register
class TrainedModel(ModelSpec):
    """A network F trained with a preconditioner, λ(σ), p_train(σ) and augmentation (Table 2).

    ``snapshot``: sample the EMA snapshot taken at this many kimg (a multiple of
    ``training.snapshot_kimg``) instead of the final network; a space grids over it to draw a
    training's curve (fd against kimg). It is no part of the training key.
    """

    kind: Literal["trained"] = "trained"
    family: str | None = None
    config: str | None = None
    budget: Literal["paper", "tiny"] | None = None
    network: NetworkChoice = Field(default_factory=DDPMpp)
    precond: PrecondChoice = Field(default_factory=EDMPrecond)
    loss_weight: LossWeightChoice = Field(default_factory=EDMWeight)
    p_train: PTrainChoice = Field(default_factory=EDMTrain)
    augment: AugmentChoice = Field(default_factory=NoAugment)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    snapshot: float | None = Field(None, gt=0)
    #: The network's forward when sampling (design.precision); not part of the training key.
    sampling_precision: Precision = DEFAULT
