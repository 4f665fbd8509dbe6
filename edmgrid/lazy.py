"""``torch``, loaded on first use, so that reading and checking specs need not wait for it.

The schema layers (``edmgrid.config``, ``edmgrid.design``) and the
modules a run's driver imports take ``torch`` from here. The module object exists at once;
torch itself runs on the first attribute access (``importlib.util.LazyLoader``), after which it
is the ordinary module. A module stays lazy only if it also imports ``Tensor`` and the like
under ``TYPE_CHECKING``, evaluates no ``torch.*`` at import (defaults, decorators, module
constants) and defines no ``nn.Module`` subclass; a plain ``import torch`` anywhere loads it
for real. ``tests/test_lazy_imports.py`` pins which commands stay torch-free. Some specs need
torch to be checked: ``uniform`` time steps evaluate the schedule's σ(t) for their default
range, and ``edmgrid run`` loads the Inception weights a ``fid`` metric names.

Before Python 3.12, LazyLoader is not thread-safe: the first use of torch must not race another.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["torch"]


def lazy_import(name: str) -> ModuleType:
    """The module ``name``, executed when first used (the Python docs' LazyLoader recipe)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import torch as torch
else:
    torch = lazy_import("torch")
