"""Confidence scores other than resistance, to compare error detectors on the same net.

Directions
----------
Two kinds of scores live here, and they point in opposite directions:

- **Scores from logits** (:func:`one_minus_max_softmax`, :func:`negative_max_logit`,
  :func:`one_minus_softmax_margin`, :func:`negative_logit_margin`, :func:`entropy`,
  :func:`energy`, :func:`doctor_alpha`, :func:`doctor_beta`) are **error
  scores**: higher means the prediction is more likely wrong. They plug into
  :mod:`resistclf.metrics` as they are, with no sign flip.
- **Attack-based scores** (:func:`input_margin`, :func:`deepfool`) are
  **distances** in input space, like resistance: a small distance means the
  prediction is likely wrong. Pass their negative to :mod:`resistclf.metrics`;
  :func:`resistance_error_scores` does so for the resistance features, and
  :meth:`resistclf.study.Measurements.error_scores` for every score of a study.

Where only the probability of the prediction is at hand (an estimator's
``predict_proba``, the attack's ``AttackResult.conf0``),
:func:`one_minus_confidence` makes it an error score.

Each function's name says its direction: ``one_minus_max_softmax`` is ``1 - p_max``,
``negative_logit_margin`` is ``-(z_1 - z_2)``; no name here reads as the confidence
itself.

Scores from logits are computed in float64 from the logits, never from
probabilities rounded to 1: ``1 - max_softmax`` is computed from the other
classes' probabilities relative to the top class, so it stays positive and
distinct for confident predictions (down to about ``exp(-745)``, float64's
smallest positive number).
"""

from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch

from ._attack import check_clip
from ._inputs import as_input_tensor, check_finite_rows, check_positive_int, \
    device_batches
from ._minimum_norm import MinimumNormResult, minimum_norm
from ._nets import check_module, eval_mode, forward, on_device, resolve_device

__all__ = ["SOFTMAX_SCORES", "DeepFoolResult", "MinimumNormResult", "deepfool", "doctor_alpha",
           "doctor_beta", "energy", "entropy", "input_margin", "minimum_norm",
           "negative_logit_margin", "negative_max_logit", "one_minus_confidence",
           "one_minus_max_softmax",
           "one_minus_softmax_margin", "resistance_error_scores", "softmax_scores"]


# ------------------------------------------------------------- scores from logits

def _check_logits(logits):
    """The logits as a float64 array of shape (n_samples, n_classes)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().to("cpu", torch.float64).numpy()
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.number) or np.issubdtype(logits.dtype, np.complexfloating):
        raise ValueError(f"logits must be real numbers; got dtype {logits.dtype}.")
    logits = logits.astype(np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(
            "logits must have shape (n_samples, n_classes) with n_samples >= 1 and "
            f"n_classes >= 2; got shape {logits.shape}."
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite; got NaN or infinite values.")
    return logits


def _top_and_gaps(logits):
    """The top logit, and ``z_j - z_top`` (<= 0) for the other classes, shape (n, K - 1)."""
    z = _check_logits(logits)
    top = z.argmax(axis=1)
    others = np.ones(z.shape, dtype=bool)
    others[np.arange(len(z)), top] = False
    z_top = z[np.arange(len(z)), top]
    return z_top, z[others].reshape(len(z), -1) - z_top[:, None]


def _odds(gaps):
    """``p_j / p_top = exp(z_j - z_top)`` for the other classes, and their sum.

    The sum is ``(1 - p_max) / p_max``: it never rounds to 0 because it is not
    computed from ``p_max``.
    """
    odds = np.exp(gaps)
    return odds, odds.sum(axis=1)


def one_minus_max_softmax(logits):
    """``1 - max_j softmax(z)_j``: one minus the maximum softmax probability.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        In [0, 1 - 1/n_classes]; higher means more likely an error.
    """
    _, total_odds = _odds(_top_and_gaps(logits)[1])
    return total_odds / (1 + total_odds)


def one_minus_confidence(confidence):
    """``1 - p``: the error score of the probability ``p`` a net gives its prediction.

    For when only that probability is at hand: the row maxima of an
    estimator's ``predict_proba``, or :class:`~resistclf.AttackResult`'s
    ``conf0``. The subtraction is done in the input's precision, so it rounds
    to 0 wherever ``p`` rounds to 1 (in float32, above about ``1 - 6e-8``)
    and confident predictions tie; from logits, :func:`one_minus_max_softmax`
    keeps them apart.

    Parameters
    ----------
    confidence : array-like of shape (n_samples,)
        Probabilities, in [0, 1].

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        In [0, 1], of the input's floating dtype (float64 for other input);
        higher means more likely an error.
    """
    confidence = np.asarray(confidence)
    if not np.issubdtype(confidence.dtype, np.floating):
        confidence = confidence.astype(np.float64)
    if confidence.ndim != 1:
        raise ValueError(f"confidence must be a 1-D array of probabilities; got shape "
                         f"{confidence.shape}.")
    outside = np.flatnonzero(~((confidence >= 0) & (confidence <= 1)))
    if len(outside):
        raise ValueError(f"confidence must hold probabilities in [0, 1]; sample "
                         f"{outside[0]} is {float(confidence[outside[0]])!r}.")
    return 1 - confidence


def negative_max_logit(logits):
    """``-max_j z_j``: the negated maximum logit (Hendrycks et al., 2022).

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        Higher means more likely an error.
    """
    return -_top_and_gaps(logits)[0]


def one_minus_softmax_margin(logits):
    """``1 - (p_1 - p_2)``: the gap between the two largest probabilities, reversed.

    This is the negated margin ``-(p_1 - p_2)`` shifted by 1, which changes no
    ranking metric; it is computed as ``(1 - p_1) + p_2``, so that the margins
    of confident predictions do not all round to 1.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        In [0, 1]; higher means more likely an error.
    """
    odds, total_odds = _odds(_top_and_gaps(logits)[1])
    return (total_odds + odds.max(axis=1)) / (1 + total_odds)


def negative_logit_margin(logits):
    """``-(z_1 - z_2)``: the negated gap between the two largest logits.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        At most 0; higher means more likely an error.
    """
    return _top_and_gaps(logits)[1].max(axis=1)


def entropy(logits):
    """Shannon entropy of the softmax, in nats.

    Computed as ``log(1 + sum_j o_j) - sum_j p_j (z_j - z_1)`` over the other
    classes (``o_j = p_j / p_1``), a sum of two non-negative terms, so that
    confident predictions keep distinct, positive entropies.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        In [0, log(n_classes)]; higher means more likely an error.
    """
    gaps = _top_and_gaps(logits)[1]
    odds, total_odds = _odds(gaps)
    return np.log1p(total_odds) - (odds * gaps).sum(axis=1) / (1 + total_odds)


def energy(logits):
    """``-logsumexp(z)``: the free energy at temperature 1 (Liu et al., 2020).

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        Higher means more likely an error.
    """
    z_top, gaps = _top_and_gaps(logits)
    return -(z_top + np.log1p(_odds(gaps)[1]))


def doctor_alpha(logits):
    """DOCTOR's ``D_alpha = (1 - g) / g`` with ``g = sum_j p_j**2`` (Granese et al., 2021).

    ``D_alpha`` is an increasing function of the Gini impurity ``1 - g``, so
    both rank samples alike. Computed from the odds ``o_j = p_j / p_1`` of
    the other classes as ``(2 A + A**2 - B) / (1 + B)`` with ``A = sum o_j``
    and ``B = sum o_j**2``, which does not round to 0 for confident
    predictions. This is DOCTOR's totally-black-box score: temperature 1, no
    input pre-processing.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        At least 0; higher means more likely an error.
    """
    odds, total_odds = _odds(_top_and_gaps(logits)[1])
    squares = (odds**2).sum(axis=1)
    return (2 * total_odds + total_odds**2 - squares) / (1 + squares)


def doctor_beta(logits):
    """DOCTOR's ``D_beta = (1 - p_max) / p_max`` (Granese et al., 2021).

    Computed exactly as ``sum_j exp(z_j - z_max)`` over the other classes.
    An increasing function of :func:`one_minus_max_softmax`, so both rank samples alike.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    error_score : ndarray of shape (n_samples,)
        At least 0; higher means more likely an error.
    """
    return _odds(_top_and_gaps(logits)[1])[1]


#: Display name to score function, for every error score computed from logits.
SOFTMAX_SCORES = {
    "max-softmax": one_minus_max_softmax,
    "max-logit": negative_max_logit,
    "softmax margin": one_minus_softmax_margin,
    "logit margin": negative_logit_margin,
    "entropy": entropy,
    "energy": energy,
    "DOCTOR D_alpha": doctor_alpha,
    "DOCTOR D_beta": doctor_beta,
}


def resistance_error_scores(result, features=("res_n", "res_max", "res_min", "res_mean")):
    """The resistance features of an attack's result, as error scores.

    A small resistance means a likely error, so each feature is negated: this
    is the one place where resistance is turned into an error score.

    Parameters
    ----------
    result : AttackResult
        From :class:`~resistclf.ResistanceAttack`.
    features : sequence of str, default=("res_n", "res_max", "res_min", "res_mean")
        Names of :class:`~resistclf.AttackResult`'s features.

    Returns
    -------
    scores : dict of str to ndarray of shape (n_samples,)
        Feature name to ``-feature``, float64; higher means more likely an
        error.
    """
    from ._attack import check_feature_names

    return {name: -getattr(result, name).astype(np.float64)
            for name in check_feature_names(features)}


def softmax_scores(logits):
    """Every score of :data:`SOFTMAX_SCORES` for the same logits.

    Parameters
    ----------
    logits : array-like or torch.Tensor of shape (n_samples, n_classes)

    Returns
    -------
    scores : dict of str to ndarray of shape (n_samples,)
        Display name to error score; higher means more likely an error.
    """
    logits = _check_logits(logits)
    return {name: score(logits) for name, score in SOFTMAX_SCORES.items()}


# ------------------------------------------------------------- attack-based distances

def _linearised_boundaries(logits, x, predicted):
    """For each class j other than the prediction c: ``z_c - z_j`` and its input gradient.

    One backward pass per class j (K - 1 in all), through the graph of one
    forward pass. Yields tensors of shapes (n,) and (n, n_inputs).
    """
    n, n_classes = logits.shape
    rows = torch.arange(n, device=logits.device)
    classes = torch.arange(n_classes, device=logits.device).expand(n, n_classes)
    others = classes[classes != predicted[:, None]].view(n, n_classes - 1)
    for column in range(n_classes - 1):
        difference = logits[rows, predicted] - logits[rows, others[:, column]]
        (gradient,) = torch.autograd.grad(difference.sum(), x,
                                          retain_graph=column < n_classes - 2)
        yield difference.detach(), gradient.flatten(1)


def input_margin(module, X, *, norm="l2", batch_size=256, device=None):
    """First-order distance from each input to the net's nearest decision boundary.

    For the predicted class ``c``, the margin is ``min_{j != c} (z_c - z_j) /
    ||grad_x (z_c - z_j)||_*``, where ``||.||_*`` is the dual norm of
    ``norm``: the distance to the nearest boundary of the net linearised at
    ``x``. With ``norm="l2"`` it is the length of DeepFool's first step
    (Moosavi-Dezfooli et al., 2016); for a linear classifier it is the exact
    distance to the nearest boundary. With ``norm="linf"`` the gradient's L1
    norm is used, which over the runner-up class only is the ``RR_exp`` score
    of RAT's code (Yan and Weng, 2025, arXiv:2503.14783; repository
    Trustworthy-ML-Lab/RAT_MisD, ``utils/ConfidenceScores.py``,
    ``RobustRadiusFastExp``). RAT's ``RR-Fast`` (``RobustRadiusFast``) differs:
    it measures, along the sign of the gradient of the log max-softmax, by a
    finite difference, the L-infinity step at which each logit gap closes.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch of inputs to logits of shape (n_samples, n_classes). It
        is run in eval mode with its parameters frozen, on ``device``; its
        mode, ``requires_grad`` flags and device are restored afterwards, also
        after an error. To measure in pixel units a net that expects
        normalised inputs, pass ``ResistanceAttack(preprocessing=...)
        .preprocessed(module, X.shape[1:])``.
    X : torch.Tensor or array-like of shape (n_samples, ...)
        The inputs; never modified.
    norm : {"l2", "linf"}, default="l2"
        The norm in which the distance is measured.
    batch_size : int, default=256
        Inputs per forward pass.
    device : str, torch.device or None, default=None
        Where to compute; None means the module's device.

    Returns
    -------
    margin : ndarray of shape (n_samples,), dtype float64
        A distance: **small means the prediction is likely wrong** (pass
        ``-margin`` to :mod:`resistclf.metrics`). ``inf`` where every logit
        gap has a zero gradient.

    Notes
    -----
    Cost per input: 1 forward pass and ``n_classes - 1`` backward passes.
    """
    check_module(module)
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf'; got {norm!r}.")
    check_positive_int("batch_size", batch_size)
    X = as_input_tensor(X)
    device = resolve_device(device, module)
    margins = []
    with on_device(module, device), eval_mode(module), torch.enable_grad():
        for numbers, x in device_batches(module, X, batch_size, device):
            x.requires_grad_(True)
            logits = forward(module, x)
            check_finite_rows(logits, numbers, "logits")
            margin = torch.full((len(x),), torch.inf, dtype=torch.float64, device=device)
            for difference, gradient in _linearised_boundaries(logits, x, logits.argmax(1)):
                check_finite_rows(gradient, numbers, "input gradients")
                dual = gradient.norm(p=2 if norm == "l2" else 1, dim=1).double()
                margin = torch.minimum(margin, _distance(difference.double(), dual))
            margins.append(margin.cpu())
    return torch.cat(margins).numpy()


def _distance(difference, gradient_norm):
    """``difference / gradient_norm``; a zero gradient is infinitely far unless already tied."""
    return torch.where(gradient_norm > 0, difference / gradient_norm,
                       torch.where(difference > 0, torch.inf, 0.0))


@dataclass(frozen=True)
class DeepFoolResult:
    """Per-input outcome of :func:`deepfool`.

    Attributes
    ----------
    distance : ndarray of shape (n_samples,), dtype float64
        L2 norm of the final perturbation (after ``clip``). A distance:
        **small means the prediction is likely wrong**. Where ``success`` is
        False it is the norm reached when the attack stopped.
    success : ndarray of shape (n_samples,), dtype bool
        Whether the prediction on the perturbed input differs from the
        prediction on the input.
    adversarial_class : ndarray of shape (n_samples,), dtype int64
        The prediction on the perturbed input (the original prediction where
        ``success`` is False). Indices of the module's outputs.
    n_iter : ndarray of shape (n_samples,), dtype int64
        Linearisation steps taken, from 1 to ``max_iter``.
    n_classes : int
        The module's number of outputs.
    """

    distance: np.ndarray
    success: np.ndarray
    adversarial_class: np.ndarray
    n_iter: np.ndarray
    n_classes: int

    @property
    def forward_passes(self):
        """Forward passes spent on each input: ``2 * n_iter``.

        Each step runs one forward pass to linearise the net and one to check
        the new iterate's prediction.
        """
        return 2 * self.n_iter

    @property
    def backward_passes(self):
        """Backward passes spent on each input: ``(n_classes - 1) * n_iter``."""
        return (self.n_classes - 1) * self.n_iter


def deepfool(module, X, *, max_iter=50, overshoot=0.02, clip=None, batch_size=256, device=None):
    """DeepFool's minimal L2 perturbation that changes the net's prediction.

    Moosavi-Dezfooli, Fawzi and Frossard (2016), Algorithm 2, over all
    classes: at each step, linearise the net at the current iterate, take the
    smallest step ``r_i`` to the nearest linearised boundary between the
    original prediction ``c`` and another class, and set the iterate to
    ``x + (1 + overshoot) * sum_i r_i`` (clipped to ``clip``), until the
    prediction is no longer ``c``. This follows the authors' reference code and
    Foolbox. Without ``clip`` it is the same recursion as torchattacks'
    ``x_{i+1} = x_i + (1 + overshoot) r_i``; with ``clip``, torchattacks
    steps from the clipped iterate instead, so the two can differ once a step
    is clipped. Inputs leave the batch as soon as their prediction changes.

    With ``clip``, a step that pushes pixels against the box is cut, the
    iterates can then approach the boundary geometrically without crossing
    it, and the attack may stop at ``max_iter`` with ``success`` False (on 8x8
    digits in [0, 1], whose background pixels sit at 0, this happens often).

    Parameters
    ----------
    module : torch.nn.Module
        Maps a batch of inputs to logits of shape (n_samples, n_classes). It
        is run in eval mode with its parameters frozen, on ``device``; its
        mode, ``requires_grad`` flags and device are restored afterwards, also
        after an error.
    X : torch.Tensor or array-like of shape (n_samples, ...)
        The inputs; never modified.
    max_iter : int, default=50
        Most linearisation steps per input.
    overshoot : float, default=0.02
        Relative overshoot, so that iterates cross the boundary instead of
        landing on it; with 0 they may stop exactly on it.
    clip : tuple of two floats or None, default=None
        If given, every iterate is clipped to this box (for example ``(0,
        1)``), as in :class:`~resistclf.ResistanceAttack`.
    batch_size : int, default=256
        Inputs attacked together.
    device : str, torch.device or None, default=None
        Where to compute; None means the module's device.

    Returns
    -------
    result : DeepFoolResult
        ``result.distance`` is the score; small means likely wrong.

    Notes
    -----
    Cost per input: ``n_iter`` steps, each of one forward pass (linearise),
    ``n_classes - 1`` backward passes (one per other class) and one forward
    pass (check the prediction): ``2 * n_iter`` forward and ``(n_classes - 1)
    * n_iter`` backward passes, given per input by
    :attr:`DeepFoolResult.forward_passes` and
    :attr:`DeepFoolResult.backward_passes`.
    """
    check_module(module)
    check_positive_int("max_iter", max_iter)
    check_positive_int("batch_size", batch_size)
    if isinstance(overshoot, bool) or not isinstance(overshoot, Real) \
            or not 0 <= overshoot < np.inf:
        raise ValueError(f"overshoot must be a finite number >= 0; got {overshoot!r}.")
    check_clip(clip)
    X = as_input_tensor(X)
    device = resolve_device(device, module)
    parts = []
    with on_device(module, device), eval_mode(module), torch.enable_grad():
        for numbers, x0 in device_batches(module, X, batch_size, device):
            parts.append(_deepfool_batch(module, x0, max_iter, overshoot, clip, numbers))
    n_classes = parts[0][-1]
    distance, success, adversarial_class, n_iter = (
        torch.cat([part[i] for part in parts]).cpu().numpy() for i in range(4)
    )
    return DeepFoolResult(distance=distance, success=success,
                          adversarial_class=adversarial_class, n_iter=n_iter,
                          n_classes=n_classes)


def _deepfool_batch(module, x0, max_iter, overshoot, clip, numbers):
    n = len(x0)
    x = x0.clone()
    total_step = torch.zeros_like(x0)
    active = torch.arange(n, device=x0.device)
    success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    adversarial_class = torch.empty(n, dtype=torch.int64, device=x0.device)
    n_iter = torch.zeros(n, dtype=torch.int64, device=x0.device)
    predicted = None
    for step in range(max_iter):
        xa = x[active].requires_grad_(True)
        logits = forward(module, xa)
        where = "logits" if step == 0 else f"logits at DeepFool step {step + 1}"
        check_finite_rows(logits, [numbers[i] for i in active.tolist()], where)
        if predicted is None:
            predicted = logits.argmax(1).detach()
        best = torch.full((len(active),), torch.inf, dtype=xa.dtype, device=x0.device)
        step = torch.zeros_like(xa).flatten(1)
        for difference, gradient in _linearised_boundaries(logits, xa, predicted[active]):
            check_finite_rows(gradient, [numbers[i] for i in active.tolist()], "input gradients")
            squared_norm = (gradient**2).sum(1)
            distance = _distance(difference, squared_norm.sqrt())
            closer = distance < best
            best = torch.where(closer, distance, best)
            # The smallest step onto the linearised boundary between c and j.
            scale = torch.where(closer & (squared_norm > 0), difference / squared_norm, 0.0)
            step = torch.where(closer[:, None], -scale[:, None] * gradient, step)
        total_step[active] += step.view_as(xa)
        iterate = x0[active] + (1 + overshoot) * total_step[active]
        x[active] = iterate if clip is None else iterate.clamp(*clip)
        n_iter[active] += 1
        with torch.no_grad():
            now = forward(module, x[active]).argmax(1)
        adversarial_class[active] = now
        flipped = now != predicted[active]
        success[active[flipped]] = True
        # An input whose logit gaps all have zero gradient cannot move: it stops.
        active = active[~flipped & torch.isfinite(best)]
        if len(active) == 0:
            break
    distance = (x - x0).flatten(1).double().norm(dim=1)
    return distance, success, adversarial_class, n_iter, logits.shape[1]
