"""Small data and tiny trained nets, so that the suite needs no download."""

import os
import shutil
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import Phase, settings

from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net


def tiny_cnn_net(**params):
    """An untrained skorch CNN for 8x8 digits: about 98% accurate after 2 s of training."""
    params = {"image_size": 8, "channels": (8, 16), "hidden": 64, "max_epochs": 30, "lr": 1e-2,
              **params}
    return make_net(SimpleCNN, **params)


# benchmarks/mutation.py runs the tests once per mutant: fixed examples, and no shrinking of
# the failures it provokes (which can take minutes and tells nothing there).
settings.register_profile("mutation", derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Under mutation testing, these files run first: they are quick and catch most mutants, and
#: pytest -x stops at the first failure.
QUICK_FIRST = ["test_attack_reference.py", "test_attack_settings.py", "test_estimator_cases.py",
               "test_metrics.py", "test_risk_coverage.py", "test_cache.py", "test_callbacks.py",
               "test_properties.py"]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RESISTCLF_MUTATION"):
        rank = {name: i for i, name in enumerate(QUICK_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


# The data and the trained CNN are made once per process, not once per session: mutation
# testing (benchmarks/mutation.py) runs many sessions in processes forked from one.
@cache
def digits_split():
    X, y = load_digits_images()
    rng = np.random.RandomState(0)
    order = rng.permutation(len(X))
    train, test = order[:900], order[900:]
    return X[train], y[train], X[test], y[test]


@cache
def cnn_trained_on_digits():
    X, y, _, _ = digits_split()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return tiny_cnn_net().fit(X, y)


@pytest.fixture(scope="session")
def digits():
    """Digits images split into a training half and a test half."""
    return digits_split()


@pytest.fixture(scope="session")
def trained_cnn():
    """A skorch CNN trained on the digits training half."""
    return cnn_trained_on_digits()


def _write_idx(path, array):
    """Write ``array`` (uint8) in the IDX format torchvision reads."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_mnist_root(tmp_path_factory):
    """Digits scaled up to 28x28 and written where torchvision looks for MNIST; the same
    digits transposed, as FashionMNIST (the other data set of new-class shift)."""
    X, y = load_digits_images()
    images = np.pad(np.kron(X[:, 0], np.ones((3, 3))), ((0, 0), (2, 2), (2, 2))) * 255
    root = tmp_path_factory.mktemp("data")
    for name, pictures in (("MNIST", images), ("FashionMNIST", images.transpose(0, 2, 1))):
        raw = root / name / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "train-images-idx3-ubyte", pictures[:1000])
        _write_idx(raw / "train-labels-idx1-ubyte", y[:1000])
        _write_idx(raw / "t10k-images-idx3-ubyte", pictures[1000:])
        _write_idx(raw / "t10k-labels-idx1-ubyte", y[1000:])
    return root


@pytest.fixture(scope="session")
def fake_mnist_net(fake_mnist_root, tmp_path_factory):
    """A ResultStore folder holding the reference CNN trained on the fake MNIST.

    Copy its files into a command's cache folder and the command loads the net instead
    of training it.
    """
    from resistclf import ResultStore
    from resistclf.reports._reference import load_dataset, reference_net

    X, y, _, _ = load_dataset("mnist", fake_mnist_root)
    folder = tmp_path_factory.mktemp("net")
    reference_net(X, y, store=ResultStore(folder), verbose=False)
    return folder


def copy_net(folder, cache):
    """Put the kept net of ``fake_mnist_net`` into the cache folder ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("net-*"):
        shutil.copy(path, cache / path.name)


@pytest.fixture
def fast_mnist(monkeypatch):
    """A fast mode for MNIST, as if the benchmark had shown one equivalent and it ran
    faster here: the tests of ``--fast`` need one whatever the committed benchmark found.
    Returns its name."""
    from resistclf import _modes
    from resistclf.reports import _reference

    monkeypatch.setitem(_reference.FAST_MODES, "mnist", "all three")
    # And as if it ran faster than exact mode here (this machine may lack bfloat16).
    monkeypatch.setattr(_modes, "_time_modes",
                        lambda *args: ({"exact": 1.0, "all three": 0.5}, {}))
    return "all three"
