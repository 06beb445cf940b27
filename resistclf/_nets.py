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


def check_module(module):
    """Raise a TypeError, saying what to pass instead, unless ``module`` is a torch module."""
    if isinstance(module, nn.Module):
        return
    if isinstance(module, NeuralNet):
        hint = " Pass its torch module, net.module_."
    elif isinstance(module, FrozenEstimator):
        hint = " Pass the torch module of the net it wraps, frozen.estimator.module_."
    elif hasattr(module, "net"):  # a ResistanceClassifier, fitted or not
        hint = (" Pass the torch module of its net, for example clf.net_.module_ for a "
                "fitted ResistanceClassifier clf whose net is a skorch net.")
    else:
        hint = ""
    raise TypeError(f"module must be a torch.nn.Module that returns logits; got a "
                    f"{type(module).__name__}.{hint}")


def resolve_device(device, module):
    """The device to compute on: ``device``, or the module's own for None.

    Raise a ValueError for a device that does not exist here, and for the meta
    device, which holds no data: a module moved there and back loses its weights.
    """
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        raise ValueError("The module's weights are on the meta device, which holds no data; "
                         "load them first (for example with module.to_empty and "
                         "load_state_dict).")
    if device is None:
        return module_device(module)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a device torch knows: {exc}") from exc
    if resolved.type == "meta":
        raise ValueError("device='meta' holds no data: the module moved there would lose its "
                         "weights. Choose a device that computes, such as 'cpu' or 'cuda'.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available.")
    return resolved


def forward(module, x, n_samples=None):
    """``module(x)``, with a clear error when ``x`` does not fit or logits are off.

    ``n_samples`` is the number of the caller's samples among the rows of ``x``
    (all of them by default): the attack pads its batch with idle rows.
    """
    n_samples = len(x) if n_samples is None else n_samples
    try:
        logits = module(x)
    except RuntimeError as exc:
        raise ValueError(
            f"The net cannot take input of shape {tuple(x.shape)}: {exc}"
        ) from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(x) \
            or logits.shape[1] < 2:
        if not isinstance(logits, torch.Tensor):
            got = (f"for {n_samples} samples it returned a {type(logits).__name__}; return "
                   "the logits alone (wrap the module if it returns more)")
        else:
            rows = (f"{n_samples} samples" if n_samples == len(x) else
                    f"{n_samples} samples, padded to a batch of {len(x)} rows")
            got = f"for {rows} it returned a tensor of shape {tuple(logits.shape)}"
        raise ValueError(
            "The net must be a classifier that returns one score per class, a tensor of "
            f"shape (n_samples, n_classes) with n_classes >= 2; {got}."
        )
    return logits


@contextmanager
def on_device(module, device):
    """Move ``module`` to ``device`` for the duration, then put back its own tensors.

    Each parameter (with its gradient) and buffer gets back the very tensor it
    held, rather than a copy moved back: nothing is lost even where the move
    could not be undone, and a module spread over several devices stays so.
    """
    # torch moves a parameter, and its gradient, by swapping their .data in place.
    parameters = [(owner, name, p, p.data, p.grad, None if p.grad is None else p.grad.data)
                  for owner in module.modules()
                  for name, p in owner._parameters.items() if p is not None]
    buffers = [(owner, name, b) for owner in module.modules()
               for name, b in owner._buffers.items() if b is not None]
    try:
        module.to(device)
        yield module
    finally:
        for owner, name, p, data, grad, grad_data in parameters:
            owner._parameters[name] = p
            p.data = data
            if grad is not None:
                grad.data = grad_data
            p.grad = grad
        for owner, name, b in buffers:
            owner._buffers[name] = b


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
