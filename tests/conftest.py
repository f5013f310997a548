"""Shared fixtures: a small slice of Fashion-MNIST and a quickly trained model.

The data comes from ``data/`` (``make data`` builds it); tests needing it are skipped with a
clear reason if it is absent, which `make test` never allows to happen.
"""
from __future__ import annotations

import pytest
import torch

from advlab.core import data, models, training
from advlab.paths import repo_root

ROOT = repo_root(__file__)


@pytest.fixture(scope="session")
def fmnist():
    """(x_train [2000], y_train, x_test [500], y_test): stratified Fashion-MNIST slices."""
    if not (ROOT / "data" / "fashion_mnist" / "train_images.npy").exists():
        pytest.skip("data/ missing: run `make data`")
    xtr, ytr = data.load_dataset("fashion_mnist", "train", ROOT / "data")
    xte, yte = data.load_dataset("fashion_mnist", "test", ROOT / "data")
    tr = data.stratified_indices(ytr, 200, seed=0)
    te = data.stratified_indices(yte, 50, seed=0)
    return xtr[tr], ytr[tr], xte[te], yte[te]


@pytest.fixture(scope="session")
def trained_model(fmnist):
    """small_cnn trained 2 epochs on 2,000 images (~80% clean accuracy), in eval mode."""
    torch.manual_seed(0)
    model = models.create_model("small_cnn")
    cfg = training.TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="constant")
    training.fit(model, fmnist[:2], training.Method("standard"), cfg, progress=False)
    return model.eval()


@pytest.fixture
def tiny_batch(fmnist):
    return fmnist[2][:64], fmnist[3][:64]
