"""edmgrid: a declarative design-space experiment runner for diffusion models (EDM, Karras 2022)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The public API is imported lazily so that `edmgrid --help` does not pay for torch.
_LAZY = {
    "SamplerSpec": "edmgrid.config.sampler",
    "JobSpec": "edmgrid.config.job",
    "sample": "edmgrid.engine.sample",
    "latents": "edmgrid.engine.sample",
    "KDiffusionDenoiser": "edmgrid.engine.adapters",
    "EpsilonDenoiser": "edmgrid.engine.adapters",
}

__all__ = [
    "EpsilonDenoiser",
    "JobSpec",
    "KDiffusionDenoiser",
    "SamplerSpec",
    "__version__",
    "latents",
    "sample",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edmgrid' has no attribute {name!r}")
