"""Image data as float32 arrays of shape (n, 1, H, W) in [0, 1], with int64 labels, and
MNIST-C's corruptions of such images (:func:`corrupt`), for corruption shift."""

import numpy as np
from sklearn.datasets import load_digits

from ._corruptions import FUNCTIONS, corrupt

__all__ = ["CORRUPTIONS", "corrupt", "load_digits_images", "load_fashion_mnist", "load_mnist"]

#: The names :func:`corrupt` takes: MNIST-C's 15 corruptions, in its order and with its
#: names.
CORRUPTIONS = tuple(FUNCTIONS)


def load_digits_images():
    """scikit-learn's bundled 8x8 digits, as images. Needs no download.

    Returns
    -------
    X : ndarray of shape (1797, 1, 8, 8), dtype float32
        Pixel values scaled from 0-16 to [0, 1].
    y : ndarray of shape (1797,), dtype int64
    """
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    return X, digits.target.astype(np.int64)


def _load_torchvision(name, root, train, download):
    from torchvision import datasets

    try:
        data = getattr(datasets, name)(root=root, train=train, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"{name} was not found under root={str(root)!r}: torchvision expects the "
            f"raw files in {root}/{name}/raw. Pass download=True to fetch them."
        ) from exc
    X = data.data.numpy().astype(np.float32)[:, None] / 255.0
    return X, data.targets.numpy().astype(np.int64)


def load_mnist(root, *, train=False, download=False):
    """MNIST through :class:`torchvision.datasets.MNIST`.

    Parameters
    ----------
    root : str or path
        Folder holding ``MNIST/raw``.
    train : bool, default=False
        The training split instead of the 10,000-image test split.
    download : bool, default=False
        Fetch the files if they are missing.

    Returns
    -------
    X : ndarray of shape (n, 1, 28, 28), dtype float32, in [0, 1]
    y : ndarray of shape (n,), dtype int64
    """
    return _load_torchvision("MNIST", root, train, download)


def load_fashion_mnist(root, *, train=False, download=False):
    """FashionMNIST through :class:`torchvision.datasets.FashionMNIST`.

    Parameters and returns are those of :func:`load_mnist`, with
    ``FashionMNIST/raw`` under ``root``.
    """
    return _load_torchvision("FashionMNIST", root, train, download)
