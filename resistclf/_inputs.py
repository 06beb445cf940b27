"""The inputs of the attack-based scores (:mod:`resistclf.scores` and its minimum-norm
attacks): checked once, read in batches on the net's device, and their outputs checked
row by row."""

from numbers import Integral

import numpy as np
import torch

from ._nets import module_dtype


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def as_input_tensor(X):
    """X as a tensor; never written to (each batch is copied before use)."""
    if isinstance(X, torch.Tensor):
        X = X.detach()
    else:
        X = np.asarray(X)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"X must hold real numbers; got dtype {X.dtype}.")
        X = torch.from_numpy(np.array(X, dtype=np.float64))
    if X.dtype == torch.bool or X.dtype.is_complex:
        raise ValueError(f"X must hold real numbers; got dtype {X.dtype}.")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(
            f"X must hold at least one sample and have shape (n_samples, ...); got shape "
            f"{tuple(X.shape)}."
        )
    if not torch.isfinite(X).all():
        raise ValueError("X must be finite; got NaN or infinite values.")
    return X


def device_batches(module, X, batch_size, device):
    """The numbers of X's batches' inputs, and copies of the batches on ``device`` in the
    module's dtype."""
    dtype = module_dtype(module)
    for start in range(0, len(X), batch_size):
        batch = X[start : start + batch_size]
        yield range(start, start + len(batch)), batch.to(device=device, dtype=dtype, copy=True)


def check_finite_rows(values, numbers, what):
    """Raise, naming the input, where a row of ``values`` (the net's ``what``) is not finite.

    ``numbers[i]`` is the number, in X, of the input of row ``i``.
    """
    finite = torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    if not bool(finite.all()):
        number = numbers[int((~finite).nonzero()[0, 0])]
        raise ValueError(f"The net returned NaN or infinite {what} for input {int(number)}: "
                         "its distance to the decision boundary is undefined.")
