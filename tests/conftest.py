"""Small data and tiny trained nets, so that the suite needs no download."""

import numpy as np
import pytest
import torch

from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net


def tiny_cnn_net(**params):
    """An untrained skorch CNN for 8x8 digits: about 98% accurate after 2 s of training."""
    params = {"image_size": 8, "channels": (8, 16), "hidden": 64, "max_epochs": 30, "lr": 1e-2,
              **params}
    return make_net(SimpleCNN, **params)


@pytest.fixture(scope="session")
def digits():
    """Digits images split into a training half and a test half."""
    X, y = load_digits_images()
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    train, test = order[:900], order[900:]
    return X[train], y[train], X[test], y[test]


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A skorch CNN trained on the digits training half."""
    X, y, _, _ = digits
    torch.manual_seed(0)
    return tiny_cnn_net().fit(X, y)
