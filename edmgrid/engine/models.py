"""External networks as denoisers: official EDM pickles and ``module:function`` factories.

Both follow the official calling convention ``net(x, sigma, class_labels) -> D(x; σ)`` and may
carry the official attributes ``sigma_min``, ``sigma_max``, ``round_sigma``, ``label_dim``,
``img_channels`` and ``img_resolution`` (missing ones mean: the whole σ range, no rounding,
unconditional, any shape).

An official network pickle (``edm-cifar10-32x32-cond-vp.pkl`` …) is a dict whose ``ema`` entry is
the network; unpickling it imports the modules of the NVlabs/edm code (``torch_utils``,
``dnnlib``, ``training``), so a checkout of that code must be importable (``--pythonpath``). A
pickle can run code: edmgrid reads one only from a path the user named.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edmgrid.design.precision import DEFAULT, Precision, forward_precision
from edmgrid.engine.data import Dataset
from edmgrid.engine.denoiser import label_dim, round_sigma, sigma_limits
from edmgrid.engine.device import worker_device
from edmgrid.errors import DataError

OFFICIAL_CODE = (
    "the official EDM pickles refer to modules of the NVlabs/edm code (torch_utils, dnnlib, "
    "training): point --pythonpath (or the PYTHONPATH variable) at a checkout of "
    "https://github.com/NVlabs/edm"
)


class NetworkDenoiser:
    """A ``net(x, sigma, class_labels)`` module as a denoiser, run without autograd.

    The network gets x as float32 [N, C, H, W], σ as float32 [N] and one-hot class labels, all
    on its device (the official EDMPrecond casts to float32 itself, so this changes nothing for
    it), and runs in ``precision``; D(x; σ) comes back in float64 on x's device for the float64
    sampler.
    """

    def __init__(
        self, net: nn.Module, device: torch.device, precision: Precision = DEFAULT
    ) -> None:
        self.net, self.device = net.eval().requires_grad_(False).to(device), device
        self.sigma_min, self.sigma_max = sigma_limits(net)
        self.label_dim = label_dim(net)
        self.precision = precision

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return round_sigma(self.net, sigma)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1)
        labels = None if class_labels is None else class_labels.to(self.device, torch.float32)
        with torch.no_grad(), forward_precision(self.precision, self.device):
            out = self.net(x.to(self.device, torch.float32), s.expand(len(x)), labels)
        return out.to(x.device, torch.float64)


def network_denoiser(
    net: nn.Module, dataset: Dataset, source: str, precision: Precision = DEFAULT
) -> NetworkDenoiser:
    """Wrap ``net`` on the worker's device after checking that the images it makes have the
    data set's shape."""
    channels, resolution = getattr(net, "img_channels", None), getattr(net, "img_resolution", None)
    if channels is not None and resolution is not None:
        made = (int(channels), int(resolution), int(resolution))
        if made != dataset.sample_shape:
            raise DataError(
                f"{source} makes images of shape {list(made)} but the data set's are "
                f"{list(dataset.sample_shape)}: give the data the network was trained on"
            )
    return NetworkDenoiser(net, worker_device(), precision)


def load_network_pickle(path: str) -> nn.Module:
    """The ``ema`` network of an official EDM network pickle at ``path``."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(
            f"network pickle not found at {path}: provide an official EDM network pickle "
            "(a dict with an 'ema' network, e.g. edm-cifar10-32x32-cond-vp.pkl)"
        )
    return _unpickle_ema(p, p.stat().st_mtime_ns)


@lru_cache(maxsize=1)
def _unpickle_ema(path: Path, mtime: int) -> nn.Module:
    """Unpickled once per process and file version: a grid over samplers loads it once."""
    try:
        with path.open("rb") as f:
            data = pickle.load(f)  # the user named this file (module docstring)
    except ModuleNotFoundError as e:
        raise DataError(
            f"{path}: unpickling needs the Python module {e.name!r}, which is not importable; "
            f"{OFFICIAL_CODE}. Searched: {', '.join(p for p in sys.path if p) or '(nothing)'}"
        ) from e
    except AttributeError as e:
        raise DataError(
            f"{path}: the importable code lacks what the pickle refers to ({e}); {OFFICIAL_CODE}"
        ) from e
    except Exception as e:
        raise DataError(f"{path}: not a readable network pickle ({type(e).__name__}: {e})") from e
    net = data.get("ema") if isinstance(data, dict) else None
    if not isinstance(net, nn.Module):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"{path}: expected an official EDM network pickle, a dict whose 'ema' entry is a "
            f"torch module; found {found}"
        )
    missing = [a for a in ("sigma_min", "sigma_max", "round_sigma") if not hasattr(net, a)]
    if missing:
        raise DataError(
            f"{path}: the 'ema' network lacks {', '.join(missing)}; expected an official EDM "
            "preconditioned network (EDMPrecond, VPPrecond, VEPrecond or iDDPMPrecond)"
        )
    return net


def load_entrypoint(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory ``module:function`` (``function`` may be dotted) with ``kwargs``."""
    module_name, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise DataError(
            f"model entry point {target!r}: module {e.name!r} is not importable; add the folder "
            "that holds it with --pythonpath or the PYTHONPATH variable"
        ) from e
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise DataError(f"model entry point {target!r}: {module_name} has no {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"model entry point {target!r} is a {type(obj).__name__}, not callable")
    with torch.device("cpu"):  # built on the host: any random init is the same on every worker
        net = obj(**kwargs)
    if not isinstance(net, nn.Module):
        raise DataError(
            f"model entry point {target!r} returned a {type(net).__name__}; expected a "
            "torch.nn.Module called as net(x, sigma, class_labels)"
        )
    return net
