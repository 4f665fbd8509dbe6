"""The model axis: which denoiser D(x; σ) a job samples from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

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


class ModelSpec(Choice):
    """A denoiser source (built by ``edmgrid.engine.evaluate.build_denoiser``)."""

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


class TrainingSpec(Strict):
    """Optimisation hyper-parameters (EDM Table 7; official training_loop units: kimg)."""

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


@models.register
class TrainedModel(ModelSpec):
    """A network F trained with a preconditioner, λ(σ), p_train(σ) and augmentation (Table 2)."""

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
    #: The network's forward when sampling (design.precision); not part of the training key.
    sampling_precision: Precision = DEFAULT
