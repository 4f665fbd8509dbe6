"""The model axis: which denoiser D(x; σ) a job samples from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from edmgrid.engine.data import Dataset
    from edmgrid.engine.denoiser import Denoiser

models = Registry("model", "the denoiser D(x; σ)", key="kind")


class ModelSpec(Choice):
    """A denoiser source."""

    kind: str

    def build(self, dataset: Dataset, cache_dir: Path) -> Denoiser:
        """The denoiser of this model for ``dataset`` (``cache_dir`` holds checkpoints)."""
        raise NotImplementedError


@models.register
class AnalyticModel(ModelSpec):
    """The ideal denoiser of the data set: no training, exact sampler ablations."""

    kind: Literal["analytic"] = "analytic"
    chunk: int = Field(4096, ge=1)

    def build(self, dataset: Dataset, cache_dir: Path) -> Denoiser:
        from edmgrid.engine.denoiser import AnalyticDenoiser

        return AnalyticDenoiser(dataset.x, chunk=self.chunk)


@models.register
class PickleModel(ModelSpec):
    """An official EDM network pickle's ``ema`` network (needs the NVlabs/edm code importable)."""

    kind: Literal["pickle"] = "pickle"
    path: str = Field(min_length=1)

    def build(self, dataset: Dataset, cache_dir: Path) -> Denoiser:
        from edmgrid.engine.models import load_network_pickle, network_denoiser

        return network_denoiser(load_network_pickle(self.path), dataset, self.path)


@models.register
class EntrypointModel(ModelSpec):
    """A torch.nn.Module from the factory ``target`` ("module:function") called with ``kwargs``.

    The module is called as ``net(x, sigma, class_labels)`` (see :mod:`edmgrid.engine.models`).
    """

    kind: Literal["entrypoint"] = "entrypoint"
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def build(self, dataset: Dataset, cache_dir: Path) -> Denoiser:
        from edmgrid.engine.models import load_entrypoint, network_denoiser

        return network_denoiser(load_entrypoint(self.target, self.kwargs), dataset, self.target)
