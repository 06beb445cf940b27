"""One table of bad arguments to the public functions, and the message each gets.

Each row is ``(callable, args, kwargs, exception, match)``: ``callable(*args, **kwargs)`` must
raise ``exception`` with a message that ``match`` finds (``re.search``). The test ids are made
from the rows. To cover another function, append its rows; a setting that only fails when
used goes through a one-line helper, as ``attack_with`` does for ResistanceAttack's settings.
"""

import re

import numpy as np
import pytest
import torch
from sklearn.model_selection import GroupKFold, ShuffleSplit
from skorch import NeuralNetClassifier
from torch import nn

from resistclf import ResistanceAttack, ResistanceClassifier, ResultStore, metrics
from resistclf.datasets import corrupt
from resistclf.scores import deepfool, input_margin, minimum_norm, resistance_error_scores
from resistclf.study import analyse, measure

X = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
X_NAN = X.clone()
X_NAN[1, 2] = torch.nan
X_ZERO = X.clone()  # the first entry of the second input is 0, where NaNGradient's is NaN
X_ZERO[1, 0] = 0.0
IS_ERROR = np.array([True, False, True, False])
LINEAR = nn.Linear(4, 3)
STUDY = {"attack": ResistanceAttack(max_iter=2), "competitors": ()}
IMAGES8 = np.random.RandomState(0).rand(2, 1, 8, 8).astype(np.float32)


def store_rows(**kwargs):
    """``ResultStore(None).rows`` of two rows, with ``kwargs``."""
    return ResultStore(None).rows("table", "s", np.ones((2, 2), np.float32),
                                  lambda rows: {"v": np.ones(len(rows))}, **kwargs)
SCORE = np.array([0.9, 0.1, 0.6, 0.4])
PROBA = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])


class NaNLogits(nn.Module):
    """A linear net whose second input gets NaN logits."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return torch.where(torch.arange(len(x))[:, None] == 1, torch.nan, self.linear(x))


class NaNGradient(nn.Module):
    """A linear net plus ``0 * sqrt(x_0)``: finite logits, a NaN input gradient at x_0 = 0."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) + 0 * x[:, :1].sqrt()


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x), x


def attack_with(**settings):
    """ResistanceAttack(**settings) run on a linear net: settings are checked when it runs."""
    return ResistanceAttack(**{"max_iter": 3, **settings})(nn.Linear(4, 3), X)


def attack(module, X, **kwargs):
    """A short ResistanceAttack run: the checks of ``__call__``'s own arguments."""
    return ResistanceAttack(max_iter=3)(module, X, **kwargs)


RATE = r"must be a number in \[0, 1\]"
TOPK_SHAPES = r"y_true must have shape \(n_samples,\) and ranked_labels shape \(n_samples, k\)"
META = "device='meta' holds no data"

BAD_ARGUMENTS = [
    # ResistanceAttack's settings
    (attack_with, (), {"max_iter": True}, TypeError, "max_iter must be a number, not a bool"),
    (attack_with, (), {"max_iter": 0}, ValueError, "'max_iter' parameter of ResistanceAttack"),
    (attack_with, (), {"batch_size": True}, TypeError, "batch_size must be a number, not a bool"),
    (attack_with, (), {"batch_size": 0}, ValueError, "'batch_size' parameter of ResistanceAttack"),
    (attack_with, (), {"early_exit": True}, TypeError, "early_exit must be a number, not a bool"),
    (attack_with, (), {"step_size": True}, TypeError, "step_size must be a number, not a bool"),
    # The parameter is ResistanceAttack's, not __call__'s (scikit-learn's decorator renamed it).
    (attack_with, (), {"step_size": -1}, ValueError,
     r"The 'step_size' parameter of ResistanceAttack must be"),
    (attack_with, (), {"step_size": float("inf")}, ValueError,
     r"'step_size' parameter of ResistanceAttack must be a float in the range \(0.0, inf\)"),
    (attack_with, (), {"step_size": 1e30}, ValueError,
     r"\|r\| overflowed to inf for image 0 at step 1: step_size=1e\+30 is too large"),
    (attack_with, (), {"n_jobs": 0}, ValueError, "n_jobs=0 has no meaning"),
    (attack_with, (), {"norm": "l3"}, ValueError, "'norm' parameter of ResistanceAttack"),
    (attack_with, (), {"clip": ("a", "b")}, ValueError,
     r"clip must be None or a pair of numbers \(low, high\) with low < high; got \('a', 'b'\)"),
    (attack_with, (), {"clip": (1.0, 0.0)}, ValueError, "clip must be None or a pair of numbers"),
    (attack_with, (), {"clip": (0.0, float("nan"))}, ValueError, "clip must be None or a pair"),
    (attack_with, (), {"clip": (False, True)}, ValueError, "clip must be None or a pair"),
    (attack_with, (), {"thresholds": (True, True)}, ValueError, "thresholds must be two numbers"),
    (attack_with, (), {"thresholds": (0.9, 0.2)}, ValueError, "thresholds must be two numbers"),
    (attack_with, (), {"preprocessing": {"std": 0.0}}, ValueError,
     "std must be positive and finite"),
    (attack_with, (), {"early_exit": 5, "optimizer": "adam"}, ValueError,
     "early_exit works with optimizer='sgd'"),
    (attack_with, (), {"device": "meta"}, ValueError, META),
    (attack_with, (), {"device": "gpu"}, ValueError, "device='gpu' is not a device torch knows"),
    # ResistanceAttack.__call__
    (attack, (ResistanceClassifier(nn.Linear(4, 3)), X), {}, TypeError,
     r"got a ResistanceClassifier\. Pass the torch module of its net, for example "
     r"clf\.net_\.module_"),
    (attack, (NeuralNetClassifier(nn.Linear(4, 3)), X), {}, TypeError,
     r"got a NeuralNetClassifier\. Pass its torch module, net\.module_"),
    (attack, ("net.pt", X), {}, TypeError, "module must be a torch.nn.Module that returns logits"),
    (attack, (nn.Linear(4, 3), [[0.5] * 4] * 6), {}, TypeError,
     r"^X must be a torch.Tensor, a NumPy array or a map-style Dataset; got a list\.$"),
    (attack, (nn.Linear(4, 3), (X * 255).to(torch.uint8)), {}, ValueError,
     r"X holds torch.uint8 values, but the attack needs floating-point pixels"),
    (attack, (nn.Linear(4, 3), (X.numpy() * 255).astype(np.int64)), {}, ValueError,
     "X holds int64 values"),
    (attack, (nn.Linear(4, 3), X_NAN), {}, ValueError,
     "X must be finite; image 1 holds NaN or infinite values"),
    (attack, (nn.Linear(4, 3), X), {"rank": True}, TypeError,
     "rank must be an integer; got a bool"),
    (attack, (nn.Linear(4, 3), X), {"rank": -1}, ValueError, "rank must be >= 0"),
    (attack, (nn.Linear(4, 3), X), {"rank": 3}, ValueError, "rank=3 is out of range"),
    (attack, (nn.Linear(4, 3), X), {"return_trace": "yes"}, TypeError,
     "return_trace must be a bool"),
    (attack, (NaNLogits(), X), {}, ValueError,
     "The net returned NaN or infinite logits for image 1, before any perturbation"),
    (attack, (NaNGradient(), X_ZERO), {}, ValueError,
     r"\|r\| is NaN for image 1 at step 1: the net's input gradient was NaN or infinite"),
    (attack, (ReturnsTuple(), X), {}, ValueError,
     "for 6 samples it returned a tuple; return the logits alone"),
    (attack, (nn.Linear(4, 3).to("meta"), X), {}, ValueError,
     "The module's weights are on the meta device"),
    # resistclf.metrics
    (metrics.fpr_at_tpr, (IS_ERROR, SCORE), {"tpr": 2}, ValueError, f"tpr {RATE}; got 2"),
    (metrics.fpr_at_tpr, (IS_ERROR, SCORE), {"tpr": float("nan")}, ValueError, f"tpr {RATE}"),
    (metrics.fpr_at_tpr, (IS_ERROR, SCORE), {"tpr": True}, ValueError, f"tpr {RATE}"),
    (metrics.tpr_at_fpr, (IS_ERROR, SCORE), {"fpr": -0.1}, ValueError, f"fpr {RATE}; got -0.1"),
    (metrics.tpr_at_fpr, (IS_ERROR, SCORE), {"fpr": "5%"}, ValueError, f"fpr {RATE}"),
    (metrics.auroc, (IS_ERROR, SCORE[:3]), {}, ValueError, "must have the same length"),
    (metrics.aurc, (IS_ERROR, [0.1, np.nan, 0.2, 0.3]), {}, ValueError, "1 NaN values"),
    (metrics.eaurc, ([0, 1, 2, 1], SCORE), {}, ValueError, "is_error must be boolean"),
    (metrics.augrc, ([], []), {}, ValueError, "is_error and error_score are empty"),
    (metrics.detection_metrics, (IS_ERROR, SCORE[:, None]), {}, ValueError,
     "must be 1-D arrays"),
    (metrics.risk_coverage_curve, (IS_ERROR, ["a", "b", "c", "d"]), {}, ValueError,
     "error_score must be numeric"),
    (metrics.topk_accuracy, ([1, 2, 3], [3, 1, 2]), {}, ValueError,
     TOPK_SHAPES + r".*got shapes \(3,\) and \(3,\)"),
    (metrics.topk_accuracy, ([[1], [2]], [[1, 0], [2, 0]]), {}, ValueError,
     TOPK_SHAPES + r".*got shapes \(2, 1\) and \(2, 2\)"),
    (metrics.topk_accuracy, ([1, 2, 3], [[1], [2]]), {}, ValueError, TOPK_SHAPES),
    (metrics.topk_accuracy, ([], np.zeros((0, 2))), {}, ValueError, TOPK_SHAPES),
    (metrics.topk_accuracy, ([1, 2], np.zeros((2, 0))), {}, ValueError, TOPK_SHAPES),
    (metrics.softmax_topk, (PROBA, [0, 1, 2], -1), {}, ValueError,
     "k must be an integer from 1 to n_classes=3; got -1"),
    (metrics.softmax_topk, (PROBA, [0, 1, 2], 0), {}, ValueError, "k must be an integer"),
    (metrics.softmax_topk, (PROBA, [0, 1, 2], 4), {}, ValueError, "k must be an integer"),
    (metrics.softmax_topk, (PROBA, [0, 1, 2], 1.5), {}, ValueError, "k must be an integer"),
    (metrics.softmax_topk, (PROBA, [0, 1, 2], True), {}, ValueError, "k must be an integer"),
    (metrics.softmax_topk, (PROBA[0], [0, 1, 2], 1), {}, ValueError,
     r"proba must have shape \(n_samples, n_classes\)"),
    (metrics.softmax_topk, (PROBA, [0, 1], 1), {}, ValueError,
     r"classes shape \(n_classes,\); got shapes \(2, 3\) and \(2,\)"),
    (metrics.bootstrap_interval, (np.mean, np.array([])), {}, ValueError,
     "The arrays are empty"),
    (metrics.bootstrap_interval, (np.mean,), {}, ValueError, "at least one array"),
    (metrics.bootstrap_interval, (np.mean, SCORE, SCORE[:3]), {}, ValueError,
     "must have the same length"),
    (metrics.bootstrap_interval, (np.mean, 3.0), {}, ValueError, "got a scalar"),
    (metrics.bootstrap_interval, ("mean", SCORE), {}, TypeError, "statistic must be a callable"),
    (metrics.bootstrap_interval, (np.mean, SCORE), {"n_resamples": 0}, ValueError,
     "n_resamples must be a positive integer"),
    (metrics.bootstrap_interval, (np.mean, SCORE), {"confidence": 1.5}, ValueError,
     "confidence must be a number strictly between 0 and 1"),
    (metrics.bootstrap_interval, (np.mean, SCORE), {"confidence": 0}, ValueError,
     "confidence must be a number strictly between 0 and 1"),
    (metrics.bootstrap_interval, (np.mean, SCORE), {"groups": [0, 1]}, ValueError,
     r"groups must hold one source per sample, shape \(4,\); got shape \(2,\)"),
    (metrics.equivalence_test, (np.mean, SCORE), {"margin": 0}, ValueError,
     "margin must be a positive number; got 0"),
    (metrics.equivalence_test, (np.mean, SCORE), {"margin": 0.1, "alpha": 0.5}, ValueError,
     "alpha must be a number strictly between 0 and 0.5"),
    (metrics.equivalence_test, (lambda s: {"a": np.mean(s)}, SCORE), {"margin": {"b": 1}},
     ValueError, r"margin gives no margin for \['a'\]"),
    (metrics.MetricDifference, ("AUROC",), {}, ValueError,
     r"metric must name metrics of detection_metrics, \['auroc', .*\]; got 'AUROC'"),
    (metrics.MetricDifference, ((),), {}, ValueError, "metric must name metrics"),
    (metrics.DetectionMetric, (("auroc", "f1"),), {}, ValueError,
     r"metric must name metrics of detection_metrics, .*; got \('auroc', 'f1'\)"),
    (metrics.mcnemar_test, (IS_ERROR, IS_ERROR[:3]), {}, ValueError,
     "a_right and b_right must be 1-D arrays of one length"),
    (metrics.mcnemar_test, (IS_ERROR, IS_ERROR.astype(int)), {}, ValueError,
     "a_right and b_right must be boolean"),
    (metrics.holm, ([0.5, 1.5],), {}, ValueError, r"p_values must be a 1-D array of numbers in "
     r"\[0, 1\]"),
    # resistclf.scores: the attack-based distances
    (input_margin, (ResistanceClassifier(nn.Linear(4, 3)), X), {}, TypeError,
     "clf.net_.module_"),
    (input_margin, (nn.Linear(4, 3), X), {"norm": "l1"}, ValueError, "norm must be 'l2' or"),
    (input_margin, (nn.Linear(4, 3), X), {"batch_size": 0}, ValueError,
     "batch_size must be a positive integer"),
    (input_margin, (nn.Linear(4, 3), X), {"device": "meta"}, ValueError, META),
    (input_margin, (nn.Linear(4, 3), X_NAN), {}, ValueError, "X must be finite"),
    (input_margin, (NaNLogits(), X), {}, ValueError,
     "The net returned NaN or infinite logits for input 1: its distance to the decision "
     "boundary is undefined"),
    (input_margin, (NaNGradient(), X_ZERO), {}, ValueError,
     "NaN or infinite input gradients for input 1"),
    (deepfool, (nn.Linear(4, 3), X), {"clip": ("a", "b")}, ValueError,
     "clip must be None or a pair of numbers"),
    (deepfool, (nn.Linear(4, 3), X), {"max_iter": True}, ValueError,
     "max_iter must be a positive integer"),
    (deepfool, (nn.Linear(4, 3), X), {"overshoot": -1.0}, ValueError, "overshoot must be"),
    (deepfool, (nn.Linear(4, 3), X), {"device": "meta"}, ValueError, META),
    (deepfool, (NaNLogits(), X), {}, ValueError,
     "The net returned NaN or infinite logits for input 1"),
    (deepfool, (NaNGradient(), X_ZERO), {}, ValueError,
     "NaN or infinite input gradients for input 1"),
]


# ResistanceClassifier: cv, groups and the inputs' shapes and dtypes, checked when fit or predict
# runs (the splits before any training).
Y = np.array([0, 1, 2, 0, 1, 2])
IMAGES = X.numpy().reshape(6, 1, 2, 2)


def fit_with(method="fit", groups=None, **params):
    """``ResistanceClassifier(**params).fit(X, Y, groups=groups)`` on a small skorch net."""
    net = NeuralNetClassifier(nn.Linear(4, 3), criterion=nn.CrossEntropyLoss, max_epochs=1,
                              train_split=None, verbose=0)
    clf = ResistanceClassifier(net, attack=ResistanceAttack(max_iter=3), **params)
    return getattr(clf, method)(X.numpy(), Y, groups=groups)


def predict_after_fit(X_fit, X_predict):
    """predict(X_predict) of a ResistanceClassifier fit on X_fit, with a flattening module."""
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    return ResistanceClassifier(module, attack=ResistanceAttack(max_iter=3)).fit(
        X_fit, Y).predict(X_predict)


BAD_ARGUMENTS += [
    (fit_with, (), {"cv": 1}, ValueError, "The 'cv' parameter of ResistanceClassifier must be"),
    (fit_with, (), {"cv": "always"}, ValueError, "The 'cv' parameter of ResistanceClassifier"),
    (fit_with, (), {"cv": 1.0}, ValueError, "The 'cv' parameter of ResistanceClassifier"),
    (fit_with, (), {"cv": [0.2]}, ValueError,
     (r"cv must give \(train, test\) pairs of non-empty arrays of indices into X's 6 samples; "
      r"split 0 is not one")),
    (fit_with, (), {"cv": [(np.arange(3), np.arange(3, 7))]}, ValueError, "split 0 is not one"),
    (fit_with, (), {"cv": [(np.arange(4), np.arange(2, 6))]}, ValueError,
     "cv's split 0 trains on samples that it holds out"),
    (fit_with, (), {"cv": []}, ValueError, r"cv gave no \(train, test\) splits"),
    (fit_with, (), {"cv": GroupKFold(2)}, ValueError, "The 'groups' parameter should not be None"),
    (fit_with, (), {"cv": GroupKFold(2), "groups": [0, 1, 0]}, ValueError,
     "inconsistent numbers of samples"),
    (fit_with, ("fit_transform",), {"cv": ShuffleSplit(3, test_size=0.5, random_state=0)},
     ValueError, (r"cv holds sample \d+ out \d times, so fit_transform has no single "
                  "out-of-sample value")),
    (predict_after_fit, (IMAGES, IMAGES.reshape(6, 2, 2, 1)), {}, ValueError,
     (r"X has images with 2 channels \(samples of shape \(2, 2, 1\)\), but ResistanceClassifier "
      r"was fitted on images with 1 channel \(samples of shape \(1, 2, 2\)\)")),
    (predict_after_fit, (IMAGES, IMAGES.reshape(6, 4)), {}, ValueError,
     (r"X has samples of shape \(4,\), but ResistanceClassifier was fitted on samples of shape "
      r"\(1, 2, 2\): give X the same number of dimensions")),
    (predict_after_fit, (IMAGES, (IMAGES * 255).astype(np.uint8)), {}, ValueError,
     "X holds uint8 values, but the attack needs floating-point pixels"),
    (predict_after_fit, ((IMAGES * 255).astype(np.uint8), IMAGES), {}, ValueError,
     "X holds uint8 values, but the attack needs floating-point pixels"),
    # The study engine and its store.
    (measure, (LINEAR, X.numpy(), np.array([0, 1, 2, 0, 1, 5])), STUDY, ValueError,
     r"y holds labels outside the net's classes: \[5\]"),
    (measure, (LINEAR, X.numpy(), np.zeros(3, int)), STUDY, ValueError,
     r"y must have one label per sample, shape \(6,\)"),
    (measure, (LINEAR, (X.numpy() * 255).astype(np.uint8)), STUDY, ValueError,
     "X must hold floats in the units the attack expects; got an array of dtype uint8"),
    (measure, (LINEAR, X.numpy()), {**STUDY, "ranks": 0}, ValueError,
     "ranks must be a positive integer"),
    (measure, (LINEAR, X.numpy()), {**STUDY, "competitors": ("CW",)}, ValueError,
     "competitors must be names from"),
    (measure, ("net", X.numpy()), STUDY, TypeError, "net must be"),
    (measure, (LINEAR, X.numpy()), {**STUDY, "attack": "pgd"}, TypeError,
     "attack must be a ResistanceAttack or None; got str"),
    (analyse, ({"logits": X},), {}, TypeError, "measurements must be Measurements"),
    (ResultStore.key, (object(),), {}, TypeError, "cannot key on a object"),
    (store_rows, (), {"chunk_size": 0}, ValueError, "chunk_size must be a positive integer"),
    (store_rows, (), {"digests": [b"x"]}, ValueError,
     r"digests must have one entry per row of X \(2\); got 1"),
    # Scores, corruptions and the minimum-norm attacks.
    (resistance_error_scores, (None, ["confidence"]), {}, ValueError,
     "features must be a non-empty sequence of names"),
    (corrupt, (IMAGES8, "snow"), {}, ValueError, "fog"),
    (corrupt, (IMAGES8 * 2, "fog"), {}, ValueError, r"\[0, 1\]"),
    (minimum_norm, (LINEAR, X), {"attack": "cw"}, ValueError, "attack must be one of"),
    (minimum_norm, (LINEAR, X * 3), {}, ValueError, r"X must lie within bounds=\(0.0, 1.0\)"),
    (minimum_norm, (LINEAR, X), {"steps": 0}, ValueError, "steps must be a positive integer"),
]


def _describe(value):
    """A short readable form of an argument, for the test ids."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        dtype = str(value.dtype).replace("torch.", "")
        return f"{type(value).__name__}{list(value.shape)}{'' if 'float' in dtype else dtype}"
    if isinstance(value, (bool, int, float, str, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list)) and len(value) <= 3:
        inner = ", ".join(map(_describe, value))
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return type(value).__name__


def _row_id(row):
    func, args, kwargs = row[:3]
    described = [*map(_describe, args), *(f"{k}={_describe(v)}" for k, v in kwargs.items())]
    return re.sub(r"\s+", "", f"{func.__name__}({','.join(described)})")


@pytest.mark.parametrize("func, args, kwargs, exception, match", BAD_ARGUMENTS,
                         ids=[_row_id(row) for row in BAD_ARGUMENTS])
def test_bad_argument_gets_a_clear_error(func, args, kwargs, exception, match):
    with pytest.raises(exception, match=match):
        func(*args, **kwargs)
