"""The ``metrics:`` axis: which result columns an evaluation job measures.

These are the schemas, registered by the name of their result column; the computing code is
:mod:`edmgrid.engine.metrics` (``compute`` dispatches on the metric's class), so that checking a
spec needs neither torch nor Inception.
"""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from edmgrid.config.sampler import SamplerSpec
from edmgrid.files import content_hash
from edmgrid.registry import Choice, Registry

if TYPE_CHECKING:
    from edmgrid.config.job import JobSpec

metrics = Registry("metric", "evaluation metric (a result column)")


class Metric(Choice, ABC):
    """A metric: a new one is a registered subclass with a ``name`` literal (its result
    column), its computation registered with ``edmgrid.engine.metrics.compute.register``
    ({column: value}) and, if it needs inputs of its own, with ``check.register``."""

    name: str

    def shared_work(self, job: JobSpec) -> str | None:
        """A key of the cached work this metric shares with other jobs (computed by the first
        job that needs it), or None. A scheduling hint: jobs that need the same work are not
        started side by side while it is being done."""
        return None

    def bounds(self, data_scale: float) -> dict[str, float]:
        """Upper bounds of its columns beyond which a value cannot be right for data in
        [−data_scale, data_scale] (the row is then ``suspect``); default: none."""
        return {}


@metrics.register
class ODEError(Metric):
    """RMS distance to a high-accuracy solution of the same ODE from the same latents.

    The reference is EDM Heun (Eq. 5, ρ = 7) with ``reference_steps`` steps, over

    - ``reference_range: run`` (default): the run's own [σ_{N−1}, σ_0]. Both solve
      dx/dσ = (x − D(x; σ))/σ between the same end points, so the error is the run's
      discretisation error alone; runs over different σ ranges (the Table 1 families) are
      then measured against different references, and comparable only within one range.
    - ``reference_range: common``: one range [``common_sigma_min``, ``common_sigma_max``]
      (EDM's [0.002, 80] by default) for every run. The error is the distance to one map from
      latents to samples, like-for-like across families; it includes the run's own range
      truncation (a larger σ_min, a different σ_max).

    The row records the reference's range (``ode_error_sigma_min``, ``ode_error_sigma_max``).
    256 steps by default: within 2e-5 of a DOP853 solution on the digits denoiser
    (tests/test_sampler.py), at 511 NFE per sample already about 15× an 18-step run.
    """

    name: Literal["ode_error"] = "ode_error"
    reference_steps: int = Field(256, ge=2)
    reference_range: Literal["run", "common"] = "run"
    common_sigma_min: float = Field(0.002, gt=0)
    common_sigma_max: float = Field(80.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ODEError:
        if self.common_sigma_min >= self.common_sigma_max:
            raise ValueError(
                f"common_sigma_min ({self.common_sigma_min}) must be < common_sigma_max "
                f"({self.common_sigma_max})"
            )
        return self

    @model_serializer(mode="wrap")
    def _id_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """With the run's range, the common range's settings do not affect the result, and
        are left out of the job (its id is the one from before the option existed)."""
        data: dict[str, Any] = handler(self)
        if self.reference_range == "run":
            for key in ("reference_range", "common_sigma_min", "common_sigma_max"):
                data.pop(key, None)
        return data

    def reference(self, sigma_last: float, sigma_first: float) -> SamplerSpec:
        """The reference sampler of a run whose σ_{N−1}, σ_0 are ``sigma_last``, ``sigma_first``."""
        if self.reference_range == "common":
            sigma_last, sigma_first = self.common_sigma_min, self.common_sigma_max
        return SamplerSpec.model_validate(
            {
                "timesteps": {
                    "name": "edm",
                    "num_steps": self.reference_steps,
                    "sigma_min": sigma_last,
                    "sigma_max": sigma_first,
                }
            }
        )

    def bounds(self, data_scale: float) -> dict[str, float]:
        """2·max|data|: two points of the data's range differ by at most that per element, so
        an RMS error beyond it means the sample or the reference has left the range."""
        return {"ode_error": 2 * data_scale}

    def shared_work(self, job: JobSpec) -> str | None:
        """The reference solution: one per data, model, seeds and σ range (of the run: the
        time steps' choice and bounds, whatever the number of steps; else the common one)."""
        dump = job.model_dump(mode="json", include={"data", "model", "seeds"})
        if self.reference_range == "run":
            dump["timesteps"] = job.sampler.timesteps.model_dump(mode="json", exclude={"num_steps"})
        return content_hash({**dump, "metric": self.model_dump()})


@metrics.register
class FDRaw(Metric):
    """Fréchet distance between samples and data in data space (float64 statistics)."""

    name: Literal["fd_raw"] = "fd_raw"


@metrics.register
class FD(Metric):
    """Fréchet distance of samples and data in a small classifier's features (digits' FID).

    The classifier is trained once per data set on its labels and cached by content hash.
    """

    name: Literal["fd"] = "fd"

    def shared_work(self, job: JobSpec) -> str | None:
        """The data set's classifier."""
        return content_hash({"fd": job.data.model_dump(mode="json")})


@metrics.register
class FID(Metric):
    """Fréchet Inception Distance (EDM App. F.1) with Inception-v3 weights from a local file.

    The reference is ``reference`` (an ``.npz`` with ``mu``/``sigma``) or else the statistics of
    every data set image, computed once and cached by content hash. ``protocol: paper`` takes
    three runs of n = len(seeds) images on the job's seeds and the two ranges after them (seeds
    0-49999 give the paper's 0–49999, 50000–99999, 100000–149999) and reports the minimum.
    Weights: ``inception``, else ``$EDMGRID_INCEPTION`` (which ``edmgrid run --inception`` sets).
    """

    name: Literal["fid"] = "fid"
    input_paths = ("inception", "reference")
    inception: str | None = None
    reference: str | None = None
    protocol: Literal["single", "paper"] = "single"

    def shared_work(self, job: JobSpec) -> str | None:
        """The data set's reference statistics (none to compute with a given ``reference``)."""
        if self.reference is not None:
            return None
        return content_hash({"fid": job.data.model_dump(mode="json"), "weights": self.inception})
