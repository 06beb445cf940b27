"""Turn what the user passes as ``net`` into a torch module that returns logits.

A ``net`` is one of

- a skorch :class:`~skorch.NeuralNetClassifier`, fitted or not;
- a fitted skorch net wrapped in :class:`sklearn.frozen.FrozenEstimator`;
- a trained :class:`torch.nn.Module` that returns one logit per class.

skorch's predict path runs with gradients off, so the attack calls the wrapped
module (``net.module_``) directly, inside :func:`eval_mode`.
"""

from contextlib import contextmanager

import numpy as np
import torch
from skorch import NeuralNet, NeuralNetClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

NET_TYPES_MESSAGE = (
    "a skorch NeuralNetClassifier, a FrozenEstimator wrapping a fitted "
    "NeuralNetClassifier, or a trained torch.nn.Module that returns logits"
)


def check_net(net):
    """Return the skorch net or module inside ``net``; raise for anything else."""
    inner = net.estimator if isinstance(net, FrozenEstimator) else net
    if isinstance(inner, NeuralNetClassifier):
        return inner
    if isinstance(inner, NeuralNet):
        raise TypeError(
            f"net must be a classifier: got a {type(inner).__name__}. "
            f"Expected {NET_TYPES_MESSAGE}."
        )
    if isinstance(inner, nn.Module) and inner is net:
        return inner
    raise TypeError(f"net must be {NET_TYPES_MESSAGE}; got {type(net).__name__}.")


def is_trained(net):
    """Whether ``net`` can be attacked as it is.

    A torch module is assumed trained. A skorch net counts as trained once it is
    initialized, which is scikit-learn's and skorch's own notion of "fitted"
    (``initialize()`` followed by ``load_params`` is a trained net).
    """
    inner = check_net(net)
    if isinstance(inner, nn.Module):
        return True
    try:
        check_is_fitted(inner)
    except Exception:  # skorch raises its own NotInitializedError
        return False
    return True


def outputs_probabilities(net, net_output):
    """Whether the module returns probabilities rather than logits.

    With ``net_output="auto"``, follow skorch's convention: a net trained with
    ``NLLLoss`` (skorch's default) returns probabilities, one trained with
    ``CrossEntropyLoss`` returns logits, and a torch module returns logits.
    """
    if net_output != "auto":
        return net_output == "proba"
    inner = check_net(net)
    if isinstance(inner, nn.Module):
        return False
    criterion = getattr(inner, "criterion_", inner.criterion)
    criterion = criterion if isinstance(criterion, type) else type(criterion)
    if issubclass(criterion, nn.NLLLoss):
        return True
    if issubclass(criterion, nn.CrossEntropyLoss):
        return False
    raise ValueError(
        f"Cannot tell whether the net's module returns logits or probabilities "
        f"from its criterion {criterion.__name__}; set net_output='logits' or "
        f"net_output='proba'."
    )


class ProbaToLogits(nn.Module):
    """Wrap a module that returns probabilities so that it returns log-probabilities.

    Log-probabilities are valid logits: their softmax gives back the
    probabilities. Probabilities are clamped at the smallest positive float so
    that a class with probability exactly 0 does not give ``-inf``.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        proba = self.module(x)
        return torch.log(proba.clamp_min(torch.finfo(proba.dtype).tiny))


class Normalized(nn.Module):
    """``module((x - mean) / std)``: a net that expects normalised inputs, fed pixels.

    ``mean`` and ``std`` are buffers (not saved in the state dict), so they move
    with the module.
    """

    def __init__(self, module, mean, std):
        super().__init__()
        self.module = module
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        return self.module((x - self.mean) / self.std)


def logit_module(net, net_output):
    """The torch module inside ``net``, returning logits."""
    inner = check_net(net)
    module = inner if isinstance(inner, nn.Module) else inner.module_
    return ProbaToLogits(module) if outputs_probabilities(net, net_output) else module


def net_classes(net, n_outputs):
    """The labels of the net's outputs: skorch's ``classes_``, else ``0..K-1``."""
    inner = check_net(net)
    try:
        classes = np.asarray(inner.classes_)
    except AttributeError:
        return np.arange(n_outputs)
    if len(classes) != n_outputs:
        raise ValueError(
            f"The net's module returns {n_outputs} scores per sample, but the net "
            f"has {len(classes)} classes {classes.tolist()}."
        )
    return classes


def module_device(module):
    """The device of the module's first parameter or buffer (CPU if it has none)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


def module_dtype(module):
    """The floating dtype of the module's first floating parameter (else float32)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@contextmanager
def eval_mode(module):
    """Put ``module`` in eval mode with frozen parameters, and restore it afterwards.

    Each submodule's ``training`` flag and each parameter's ``requires_grad`` is
    restored, also when the body raises.
    """
    training = [(m, m.training) for m in module.modules()]
    requires_grad = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.eval()
        for p, _ in requires_grad:
            p.requires_grad_(False)
        yield module
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)


def forward(module, x):
    """``module(x)``, with a clear error when ``x`` does not fit or logits are off."""
    try:
        logits = module(x)
    except RuntimeError as exc:
        raise ValueError(
            f"The net cannot take input of shape {tuple(x.shape)}: {exc}"
        ) from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(x) \
            or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(
            "The net must be a classifier that returns one score per class, of shape "
            f"(n_samples, n_classes) with n_classes >= 2; for {len(x)} samples it "
            f"returned {shape}."
        )
    return logits


@contextmanager
def on_device(module, device):
    """Move ``module`` to ``device`` for the duration, then back to where it was."""
    original = module_device(module)
    try:
        module.to(device)
        yield module
    finally:
        module.to(original)


@contextmanager
def channels_last_weights(module, enabled=True):
    """Store the module's 4-D parameters channels-last for the duration, then restore them.

    The original tensors are put back, so the module is left exactly as it was.
    """
    original = [(p, p.data) for p in module.parameters() if enabled and p.dim() == 4]
    try:
        for p, data in original:
            p.data = data.to(memory_format=torch.channels_last)
        yield module
    finally:
        for p, data in original:
            p.data = data
