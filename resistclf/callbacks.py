"""skorch callbacks: resistance measured while a net trains."""

import time
from numbers import Real

import numpy as np
import torch
from skorch.callbacks import Callback

from ._attack import ResistanceAttack
from ._nets import logit_module
from .metrics import detection_metrics
from .scores import one_minus_confidence, resistance_error_scores


class ResistanceMonitor(Callback):
    """Record, after each epoch, how resistance separates a net's errors on fixed images.

    At the end of every epoch the net's current module is attacked on
    ``X_val`` with ``attack`` and these values are written to the net's
    history (``net.history[-1, key]``), as skorch's scoring callbacks do. Each
    key starts with ``name`` and an underscore:

    - ``accuracy`` and ``n_errors``: the net's predictions on ``X_val``;
    - ``res_n_mean_correct`` and ``res_n_mean_incorrect``: mean Res_N of
      correctly and incorrectly predicted images;
    - ``res_n_q<P>_correct`` and ``res_n_q<P>_incorrect``: Res_N quantiles,
      one pair per ``quantiles`` entry, ``P`` in percent (``q10``, ``q50``...);
    - ``auroc_res_n`` and ``auroc_max_softmax``: error-detection AUROC of
      low Res_N and of low max-softmax (the baseline), errors positive;
    - ``correction_rate``: the fraction of errors whose adversarial class is
      the true label;
    - ``flip_rate``: the fraction of images whose prediction the attack
      changed (an image the net is less than ``thresholds[0]`` sure of is not
      attacked at all, which is common early in training);
    - ``seconds``: the time the monitor took.

    A value is NaN where it is undefined (no errors, or no correct
    predictions). The attack is deterministic and runs in eval mode, so the
    monitor changes neither the net's training mode nor any random state:
    a net trains the same with or without it.

    Parameters
    ----------
    X_val : array-like of shape (n_samples, ...)
        The fixed images, as the net takes them. Copied; never modified.
    y_val : array-like of shape (n_samples,)
        Their true labels, as given to the net's ``fit``.
    attack : ResistanceAttack or None, default=None
        The attack's settings; None means ``ResistanceAttack()``.
    quantiles : tuple of float, default=(0.1, 0.5, 0.9)
        Res_N quantiles to record, each in [0, 1].
    name : str, default="resistance"
        Prefix of the history keys.
    net_output : {"auto", "logits", "proba"}, default="auto"
        What the net's module returns; see :class:`ResistanceClassifier`.

    Attributes
    ----------
    keys_ : list of str
        The history keys written each epoch.
    attack_results_ : list of AttackResult
        The attack's result on ``X_val`` after each epoch, for per-image
        analyses (:meth:`summarize` turns one into the recorded values).

    Examples
    --------
    >>> from resistclf import ResistanceAttack, ResistanceMonitor
    >>> from resistclf.datasets import load_digits_images
    >>> from resistclf.models import SimpleCNN, make_net
    >>> X, y = load_digits_images()
    >>> monitor = ResistanceMonitor(X[:32], y[:32],
    ...                             attack=ResistanceAttack(max_iter=20, batch_size=32))
    >>> net = make_net(SimpleCNN, image_size=8, max_epochs=2).set_params(callbacks=[monitor])
    >>> net = net.fit(X[32:500], y[32:500])
    >>> len(net.history[:, "resistance_auroc_res_n"])
    2
    """

    def __init__(self, X_val, y_val, *, attack=None, quantiles=(0.1, 0.5, 0.9),
                 name="resistance", net_output="auto"):
        self.X_val = X_val
        self.y_val = y_val
        self.attack = attack
        self.quantiles = quantiles
        self.name = name
        self.net_output = net_output

    def initialize(self):
        """Check the parameters and copy the fixed images.

        Returns
        -------
        self : ResistanceMonitor
        """
        X = np.array(self.X_val, dtype=np.float32)  # a copy: X_val stays the caller's
        y = np.asarray(self.y_val)
        if X.ndim < 2 or len(X) == 0:
            raise ValueError(
                f"X_val must hold at least one sample, with shape (n_samples, ...); got "
                f"shape {X.shape}."
            )
        if y.shape != (len(X),):
            raise ValueError(
                f"y_val must have shape (n_samples,) = ({len(X)},) to match X_val; got "
                f"{y.shape}."
            )
        if not (self.attack is None or isinstance(self.attack, ResistanceAttack)):
            raise TypeError(
                f"attack must be a ResistanceAttack or None; got {type(self.attack).__name__}."
            )
        if not (isinstance(self.quantiles, (tuple, list)) and self.quantiles
                and all(isinstance(q, Real) and 0 <= q <= 1 for q in self.quantiles)):
            raise ValueError(
                f"quantiles must be a non-empty tuple of numbers in [0, 1]; got "
                f"{self.quantiles!r}."
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string; got {self.name!r}.")
        self._X = torch.from_numpy(X)
        self.keys_ = [*self._value_keys(), f"{self.name}_seconds"]
        self.attack_results_ = []
        return self

    def _value_keys(self):
        percents = [f"q{100 * q:g}" for q in self.quantiles]
        return [f"{self.name}_{key}" for key in [
            "accuracy", "n_errors", "res_n_mean_correct", "res_n_mean_incorrect",
            *(f"res_n_{p}_{group}" for group in ("correct", "incorrect") for p in percents),
            "auroc_res_n", "auroc_max_softmax", "correction_rate", "flip_rate"]]

    def on_epoch_end(self, net, **kwargs):
        """Attack ``X_val`` with the net as it is now and record the values."""
        start = time.perf_counter()
        attack = ResistanceAttack() if self.attack is None else self.attack
        result = attack(logit_module(net, self.net_output), self._X)
        self.attack_results_.append(result)
        try:  # skorch's labels of the module's outputs
            classes = np.asarray(net.classes_)
        except AttributeError:
            classes = None
        values = self.summarize(result, classes)
        values[f"{self.name}_seconds"] = round(time.perf_counter() - start, 2)
        for key, value in values.items():
            net.history.record(key, value)

    def summarize(self, result, classes=None):
        """The values recorded for one epoch, from the attack's result on ``X_val``.

        Parameters
        ----------
        result : AttackResult
            The attack's result on ``X_val`` (one of :attr:`attack_results_`).
        classes : array-like or None, default=None
            The net's labels of its outputs (skorch's ``classes_``); None means
            the outputs' indices are the labels.

        Returns
        -------
        values : dict
            Every key of :attr:`keys_` but ``<name>_seconds``, with its value.
        """
        y = np.asarray(self.y_val)

        def to_label(index):
            return index if classes is None else np.asarray(classes)[index]

        is_error = to_label(result.c0) != y
        correct, wrong = result.res_n[~is_error], result.res_n[is_error]

        def stat(function, values):
            return float(function(values)) if len(values) else np.nan

        values = [
            float(1 - is_error.mean()), int(is_error.sum()),
            stat(np.mean, correct), stat(np.mean, wrong),
            *(stat(lambda v, q=q: np.quantile(v, q), group)
              for group in (correct, wrong) for q in self.quantiles),
            detection_metrics(is_error, resistance_error_scores(result, ["res_n"])["res_n"])[
                "auroc"],
            # Max-softmax as an error score, from the attack's float32 Conf at r = 0.
            detection_metrics(is_error, one_minus_confidence(result.conf0))["auroc"],
            stat(np.mean, to_label(result.adversarial_class[is_error]) == y[is_error]),
            float(result.flipped.mean()),
        ]
        return dict(zip(self._value_keys(), values))
