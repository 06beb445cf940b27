"""Metrics for error detection and top-k accuracy, with bootstrap intervals.

Detection treats the net's errors as the positive class. A score is "higher
means more likely an error": pass ``-res_n`` for resistance features and
``-max_softmax`` for the confidence baseline.
"""

import warnings

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def fpr_at_tpr(is_error, error_score, tpr=0.95):
    """False-positive rate at the first threshold that reaches ``tpr`` true positives."""
    fpr, tpr_curve, _ = roc_curve(is_error, error_score, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])


def auroc(is_positive, score):
    """Area under the ROC curve; NaN where there are no positives or no negatives.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
    score : array-like of shape (n_samples,)
        Higher means more likely positive.

    Returns
    -------
    auroc : float
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return np.nan
    return float(roc_auc_score(is_positive, score))


def tpr_at_fpr(is_positive, score, fpr=0.05):
    """True-positive rate at the last threshold whose false-positive rate is at most ``fpr``.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
    score : array-like of shape (n_samples,)
        Higher means more likely positive.
    fpr : float, default=0.05

    Returns
    -------
    tpr : float
        NaN where there are no positives or no negatives.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return np.nan
    fpr_curve, tpr_curve, _ = roc_curve(is_positive, score, drop_intermediate=False)
    return float(tpr_curve[np.searchsorted(fpr_curve, fpr, side="right") - 1])


def detection_metrics(is_error, error_score):
    """AUROC, AUPR (errors positive) and FPR at 95% TPR of an error score.

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    metrics : dict
        ``auroc``, ``aupr`` and ``fpr_at_95_tpr``; NaN where there are no
        errors or no correct predictions.
    """
    is_error = np.asarray(is_error, dtype=bool)
    if is_error.all() or not is_error.any():
        return {"auroc": np.nan, "aupr": np.nan, "fpr_at_95_tpr": np.nan}
    return {
        "auroc": float(roc_auc_score(is_error, error_score)),
        "aupr": float(average_precision_score(is_error, error_score)),
        "fpr_at_95_tpr": fpr_at_tpr(is_error, error_score),
    }


def topk_accuracy(y_true, ranked_labels):
    """Fraction of samples whose true label is among their ranked labels.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    ranked_labels : array-like of shape (n_samples, k)

    Returns
    -------
    accuracy : float
    """
    ranked_labels = np.asarray(ranked_labels)
    return float((ranked_labels == np.asarray(y_true)[:, None]).any(axis=1).mean())


def softmax_topk(proba, classes, k):
    """The ``k`` most probable labels per sample, best first."""
    return np.asarray(classes)[np.argsort(-np.asarray(proba), axis=1, kind="stable")[:, :k]]


def bootstrap_interval(statistic, *arrays, n_resamples=1000, confidence=0.95,
                       random_state=0):
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling samples jointly.

    Resamples on which the statistic is undefined (NaN, such as an AUROC on a
    resample with no errors) are left out.

    Parameters
    ----------
    statistic : callable
        Takes the arrays (resampled together, along their first axis) and
        returns a float.
    *arrays : array-like of shape (n_samples, ...)
    n_resamples : int, default=1000
    confidence : float, default=0.95
    random_state : int, default=0

    Returns
    -------
    low, high : float
        NaN if the statistic is undefined on every resample.
    """
    with warnings.catch_warnings():
        # A constant statistic (a rate of 0 or 1) is a valid, zero-width interval.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.arange(len(arrays[0])),),
            lambda i: statistic(*(np.asarray(a)[i] for a in arrays)),
            n_resamples=n_resamples,
            method="percentile",
            vectorized=False,
            random_state=random_state,
        )
    values = result.bootstrap_distribution
    if np.isnan(values).all():
        return np.nan, np.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)
