"""The feature classifier of the ``fd`` metric, trained on the data's own labels.

The CPU analogue of FID for data sets without Inception weights (digits, toy 2-D): the
classifier is trained once per data set, cached by its content hash, and its penultimate
layer's features feed the same float64 statistics and Fréchet distance as FID.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edmgrid.engine.data import Dataset
from edmgrid.errors import DataError
from edmgrid.files import atomic_write, load_cached

FEATURES = 128
STEPS = 800
CLASSIFIER_VERSION = 1  # bump when the architecture or recipe changes (invalidates caches)


def make_classifier(dataset: Dataset) -> nn.Sequential:
    """A small conv net for images, an MLP for points; ``features`` is its penultimate layer."""
    if dataset.is_image:
        c = dataset.x.shape[1]
        body: nn.Module = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, FEATURES), nn.SiLU(),
        )  # fmt: skip
    else:
        body = nn.Sequential(
            nn.Linear(dataset.x.shape[1], 64), nn.SiLU(), nn.Linear(64, FEATURES), nn.SiLU()
        )
    return nn.Sequential(body, nn.Linear(FEATURES, dataset.label_dim))


def features(classifier: nn.Sequential, x: Tensor, batch: int = 1024) -> np.ndarray:
    """Penultimate-layer features of x, float32 [N, FEATURES], computed in batches on the
    classifier's device."""
    body = classifier[0]
    device = next(body.parameters()).device
    with torch.no_grad():
        out = [
            body(x[i : i + batch].to(device, torch.float32)).cpu() for i in range(0, len(x), batch)
        ]
    return torch.cat(out).numpy()


def trained_classifier(dataset: Dataset, cache_dir: Path, device: torch.device) -> nn.Sequential:
    """Train (or load from the cache) the data set's feature classifier, on ``device``.

    Its initial weights and every batch and noise draw come from CPU generators, so it is
    the same classifier on every device up to float error (the cache holds CPU weights)."""

    if dataset.labels is None or dataset.label_dim < 2:
        raise DataError(
            "the fd metric needs a labelled data set (its classifier learns the labels)"
        )
    path = cache_dir / "classifiers" / f"{dataset.digest}-v{CLASSIFIER_VERSION}.pt"
    torch.manual_seed(0)
    with torch.device("cpu"):
        classifier = make_classifier(dataset)
    state = load_cached(path, cache_dir)
    if state is not None:
        classifier.load_state_dict(state)
        return classifier.to(device).eval()
    classifier.to(device)
    gen = torch.Generator("cpu").manual_seed(0)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    for _ in range(STEPS):
        index = torch.randint(len(dataset.x), (128,), generator=gen, device="cpu")
        y = dataset.x[index]
        x = y + 0.05 * torch.randn(y.shape, generator=gen, device="cpu")
        labels = dataset.labels[index].to(device)
        loss = nn.functional.cross_entropy(classifier(x.to(device)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {k: v.cpu() for k, v in classifier.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return classifier.eval()
