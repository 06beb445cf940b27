"""Metrics for error detection, risk-coverage areas and top-k accuracy, with bootstrap intervals.

Conventions, for every function here:

- the net's **errors are the positive class** (``is_error``);
- an ``error_score`` is **higher for samples more likely to be errors**. Pass
  ``-res_n`` for resistance features and ``1 - max_softmax`` (or
  ``-max_softmax``) for the confidence baseline; :mod:`resistclf.scores`
  returns error scores in this direction already;
- a selective classifier **accepts the samples with the lowest scores**.

Every metric here depends on the scores only through their order, and none
depends on the order of the samples: tied scores are handled as ties, never by
the position a sort happens to give them. All of them are computed from one
sort of the scores, which makes them cheap enough to bootstrap.
"""

import functools
import numbers

import numpy as np

__all__ = [
    "augrc",
    "aurc",
    "auroc",
    "bootstrap_interval",
    "detection_metrics",
    "eaurc",
    "fpr_at_tpr",
    "risk_coverage_curve",
    "softmax_topk",
    "topk_accuracy",
    "tpr_at_fpr",
]


def _check_detection_input(is_error, error_score):
    """``is_error`` as bool and ``error_score`` as float64, both 1-D, of one length."""
    is_error = np.asarray(is_error)
    error_score = np.asarray(error_score)
    if is_error.ndim != 1 or error_score.ndim != 1:
        raise ValueError(
            f"is_error and error_score must be 1-D arrays; got shapes {is_error.shape} "
            f"and {error_score.shape}."
        )
    if len(is_error) != len(error_score):
        raise ValueError(
            f"is_error and error_score must have the same length; got {len(is_error)} "
            f"and {len(error_score)}."
        )
    if len(is_error) == 0:
        raise ValueError("is_error and error_score are empty: there is nothing to rank.")
    if is_error.dtype != bool:
        if not (np.issubdtype(is_error.dtype, np.number) and np.isin(is_error, (0, 1)).all()):
            raise ValueError(
                f"is_error must be boolean (or 0/1); got values of dtype {is_error.dtype} "
                f"such as {np.unique(is_error)[:5].tolist()}."
            )
        is_error = is_error.astype(bool)
    if not (np.issubdtype(error_score.dtype, np.number) or error_score.dtype == bool):
        raise ValueError(f"error_score must be numeric; got dtype {error_score.dtype}.")
    error_score = error_score.astype(np.float64)
    if np.isnan(error_score).any():
        raise ValueError(
            f"error_score contains {int(np.isnan(error_score).sum())} NaN values; a NaN "
            f"has no place in a ranking."
        )
    return is_error, error_score


def _check_rate(name, value):
    """Raise unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}.")


def _tie_blocks(is_error, error_score):
    """The distinct scores, ascending, and how many samples and errors score at most each.

    One sort of the scores (``np.sort`` is several times faster than
    ``np.argsort``). Every metric below is a function of these blocks.

    Returns
    -------
    thresholds : ndarray of shape (n_blocks,)
    accepted : ndarray of int of shape (n_blocks,)
        Samples with a score at most each threshold; the last is n.
    accepted_errors : ndarray of int of shape (n_blocks,)
        Errors among them.
    """
    is_error, error_score = _check_detection_input(is_error, error_score)
    score = np.sort(error_score)
    accepted = np.append(np.flatnonzero(score[1:] != score[:-1]) + 1, len(score))
    thresholds = score[accepted - 1]
    # Each error's block is found among the thresholds, which hold every score.
    block_of_error = np.searchsorted(thresholds, error_score[is_error])
    accepted_errors = np.cumsum(np.bincount(block_of_error, minlength=len(thresholds)))
    return thresholds, accepted, accepted_errors


@functools.lru_cache(maxsize=8)
def _harmonic_numbers(n):
    """``H[k] = sum_{i=1..k} 1/i`` for k = 0..n (read-only; bootstraps reuse one n)."""
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])
    harmonic.flags.writeable = False
    return harmonic


def _risk_coverage_areas(accepted, accepted_errors):
    """AURC, E-AURC and AUGRC from the tie blocks.

    Block ``b`` holds the positions ``k = N' + 1 .. N' + c`` (``N'`` accepted
    before it, ``c`` in it); the expected errors there are ``E' + t * e / c``
    for ``t = k - N'``, with ``E'`` errors before it and ``e`` in it. So its
    share of ``sum_k err_k / k`` is ``e + (E' - N' * e / c) * (H[N' + c] - H[N'])``
    and its share of ``sum_k err_k`` is ``c * E' + e * (c + 1) / 2``.
    """
    n = int(accepted[-1])
    n_correct = n - int(accepted_errors[-1])
    harmonic = _harmonic_numbers(n)
    inverse_sum = np.diff(harmonic[accepted], prepend=0.0)
    accepted = accepted.astype(np.float64)
    accepted_errors = accepted_errors.astype(np.float64)
    before = np.concatenate([[0.0], accepted[:-1]])
    errors_before = np.concatenate([[0.0], accepted_errors[:-1]])
    counts = accepted - before
    errors = accepted_errors - errors_before
    aurc_value = float(np.sum(errors + (errors_before - before * (errors / counts))
                              * inverse_sum)) / n
    # The optimal score accepts every correct prediction before any error.
    optimal = float(n - n_correct - n_correct * (harmonic[n] - harmonic[n_correct])) / n
    return {
        "aurc": aurc_value,
        "eaurc": aurc_value - optimal,
        "augrc": float(np.sum(counts * errors_before + errors * (counts + 1) / 2)) / n**2,
    }


def _roc_points(accepted, accepted_errors):
    """True and false positives flagged at each threshold, from the highest score down.

    Flagging the scores at or above a threshold flags all samples but those
    accepted below it.
    """
    tps = accepted_errors[-1] - np.concatenate([accepted_errors[::-1][1:], [0]])
    fps = (accepted[-1] - accepted_errors[-1]) \
        - np.concatenate([(accepted - accepted_errors)[::-1][1:], [0]])
    return tps, fps


def _auroc(accepted, accepted_errors):
    """Mann-Whitney AUROC with average ranks for ties (equal to the trapezoidal ROC area)."""
    n_errors = int(accepted_errors[-1])
    n_correct = int(accepted[-1]) - n_errors
    if n_errors == 0 or n_correct == 0:
        return np.nan
    errors = np.diff(accepted_errors, prepend=0)
    # The ranks N' + 1 .. N' + c of a block average to N' + (c + 1) / 2 = (N' + N + 1) / 2.
    average_rank = (accepted + np.concatenate([[0], accepted[:-1]]) + 1) / 2
    rank_sum = float(np.dot(errors, average_rank))
    return (rank_sum - n_errors * (n_errors + 1) / 2) / (n_errors * n_correct)


def _aupr(accepted, accepted_errors):
    """Average precision (scikit-learn's ``average_precision_score``), errors positive."""
    tps, fps = _roc_points(accepted, accepted_errors)
    if tps[-1] == 0 or fps[-1] == 0:
        return np.nan
    return float(np.dot(np.diff(tps, prepend=0), tps / (tps + fps)) / tps[-1])


def _fpr_at_tpr(accepted, accepted_errors, tpr):
    tps, fps = _roc_points(accepted, accepted_errors)
    if tps[-1] == 0 or fps[-1] == 0:
        return np.nan
    first = np.searchsorted(tps / tps[-1], tpr, side="left")
    return float(fps[first] / fps[-1])


def _tpr_at_fpr(accepted, accepted_errors, fpr):
    tps, fps = _roc_points(accepted, accepted_errors)
    if tps[-1] == 0 or fps[-1] == 0:
        return np.nan
    # The ROC curve starts at (0, 0): flag nothing.
    last = np.searchsorted(np.r_[0, fps / fps[-1]], fpr, side="right") - 1
    return float(np.r_[0, tps / tps[-1]][last])


def fpr_at_tpr(is_error, error_score, tpr=0.95):
    """False-positive rate at the first threshold that flags a fraction ``tpr`` of the errors.

    Every threshold counts, including those that scikit-learn's ``roc_curve``
    drops as collinear by default (dropping them can skip the first point that
    reaches ``tpr`` when scores are tied).

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.
    tpr : float, default=0.95
        In [0, 1].

    Returns
    -------
    fpr : float
        NaN where there are no errors or no correct predictions.
    """
    _check_rate("tpr", tpr)
    return _fpr_at_tpr(*_tie_blocks(is_error, error_score)[1:], tpr)


def auroc(is_positive, score):
    """Area under the ROC curve; NaN where there are no positives or no negatives.

    Computed from average ranks (the Mann-Whitney statistic), which equals
    scikit-learn's ``roc_auc_score``, ties included, and is much faster.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
    score : array-like of shape (n_samples,)
        Higher means more likely positive.

    Returns
    -------
    auroc : float
    """
    return _auroc(*_tie_blocks(is_positive, score)[1:])


def tpr_at_fpr(is_positive, score, fpr=0.05):
    """True-positive rate at the last threshold whose false-positive rate is at most ``fpr``.

    Every threshold counts, including those that scikit-learn's ``roc_curve``
    drops as collinear by default.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
    score : array-like of shape (n_samples,)
        Higher means more likely positive.
    fpr : float, default=0.05
        In [0, 1].

    Returns
    -------
    tpr : float
        NaN where there are no positives or no negatives.
    """
    _check_rate("fpr", fpr)
    return _tpr_at_fpr(*_tie_blocks(is_positive, score)[1:], fpr)


def risk_coverage_curve(is_error, error_score):
    """Coverage and selective risk of accepting the samples whose score is at most a threshold.

    There is one point per distinct score: all samples tied at a threshold are
    accepted together, so the curve does not depend on the order of the samples.

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
        Whether the net's prediction is wrong.
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    coverage : ndarray of shape (n_thresholds,)
        Fraction of the samples accepted, increasing; the last is 1.
    selective_risk : ndarray of shape (n_thresholds,)
        Fraction of errors among the accepted samples.
    thresholds : ndarray of shape (n_thresholds,)
        The distinct scores, increasing: samples with ``error_score <=
        threshold`` are accepted.

    See Also
    --------
    aurc : The area under this curve, with ties handled in expectation.
    resistclf.plotting.RiskCoverageDisplay : Plot of this curve.
    """
    thresholds, accepted, accepted_errors = _tie_blocks(is_error, error_score)
    return accepted / accepted[-1], accepted_errors / accepted, thresholds


def aurc(is_error, error_score):
    """Area under the risk-coverage curve (lower is better).

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
        Whether the net's prediction is wrong.
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    aurc : float
        In [0, 1].

    See Also
    --------
    eaurc, augrc, risk_coverage_curve, detection_metrics

    Notes
    -----
    Samples are accepted by increasing error score. Let ``err_k`` be the
    expected number of errors among the first ``k`` accepted samples, with
    tied scores accepted in a uniformly random order: a block of tied samples
    contributes its errors at the block's average rate. Then

    - ``AURC = (1/n) * sum_{k=1..n} err_k / k`` (mean selective risk),
    - ``AUGRC = (1/n) * sum_{k=1..n} err_k / n`` (mean generalised risk,
      Traub et al., 2024),
    - ``E-AURC = AURC - AURC*``, where ``AURC*`` is the AURC, on the same
      samples, of a score that ranks every error last (Geifman et al., 2019).

    The value does not depend on the order of the samples, ties included.
    All three are defined for any non-empty input: with no errors they are 0;
    with only errors, AURC is 1, AUGRC is ``(n + 1) / (2n)`` and E-AURC is 0.
    They are not scaled (FD-Shifts reports them multiplied by 1000).

    How FD-Shifts differs (read in IML-DKFZ/fd-shifts):

    - ``fd_shifts/analysis/metrics.py`` (``StatsCache.rc_curve_stats`` with
      the ``aurc`` and ``eaurc`` metric functions; the FD-Shifts benchmark,
      Jaeger et al., 2023) orders samples with ``np.argsort`` of the
      confidence, which is not a stable sort, and removes them one at a time
      from the least confident. It adds a curve point right after removing
      the *first* sample of each run of tied confidences (it compares each
      sample with the one before it) and folds the rest of the run into the
      next point's weight; the AURC is a trapezoidal sum over these points.
      The risk at such a point counts or does not count that first sample
      depending on whether the sort put an error or a correct prediction
      first in the run, so with ties its AURC changes when the input
      samples are shuffled. Its E-AURC subtracts the large-sample limit
      ``r + (1 - r) * log(1 - r)`` (``r`` the error rate) instead of the
      optimal AURC on the same samples.
    - ``fd_shifts/analysis/rc_stats.py`` (``RiskCoverageStats``, with
      ``rc_stats_utils.selective_risk_stats`` and ``generalized_risk_stats``;
      the AUGRC paper) adds a point only at the end of each run of ties, so
      it does not depend on the order of the samples, but it integrates
      linearly between those points and down to coverage 0. Its AUGRC is
      therefore this AUGRC minus ``r / (2n)``; its AURC differs from this
      one by O(1/n) without ties and by more inside large tie blocks, where
      the expected selective risk is not linear in the coverage.

    References
    ----------
    Geifman, Uziel and El-Yaniv, "Bias-reduced uncertainty estimation for deep
    neural classifiers", ICLR 2019.
    Jaeger et al., "A call to reflect on evaluation practices for failure
    detection in image classification", ICLR 2023.
    Traub et al., "Overcoming common flaws in the evaluation of selective
    classification systems", NeurIPS 2024 (arXiv:2407.01032).
    """
    return _risk_coverage_areas(*_tie_blocks(is_error, error_score)[1:])["aurc"]


def eaurc(is_error, error_score):
    """Excess AURC: the AURC minus that of the best possible score on the same samples.

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
        Whether the net's prediction is wrong.
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    eaurc : float
        0 for a score that ranks every error above every correct prediction.

    See Also
    --------
    aurc, augrc, detection_metrics

    Notes
    -----
    Ties are handled as for :func:`aurc`, whose notes give the definition.
    """
    return _risk_coverage_areas(*_tie_blocks(is_error, error_score)[1:])["eaurc"]


def augrc(is_error, error_score):
    """Area under the generalised risk-coverage curve (errors accepted over all samples).

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
        Whether the net's prediction is wrong.
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    augrc : float
        In [0, 1].

    See Also
    --------
    aurc, eaurc, detection_metrics

    Notes
    -----
    Ties are handled as for :func:`aurc`, whose notes give the definition.
    """
    return _risk_coverage_areas(*_tie_blocks(is_error, error_score)[1:])["augrc"]


def detection_metrics(is_error, error_score):
    """Every error-detection metric of one score, from a single sort.

    Parameters
    ----------
    is_error : array-like of bool, shape (n_samples,)
        Whether the net's prediction is wrong.
    error_score : array-like of shape (n_samples,)
        Higher means more likely an error.

    Returns
    -------
    metrics : dict of str to float
        ``auroc`` (equal to scikit-learn's ``roc_auc_score``), ``aupr``
        (scikit-learn's ``average_precision_score``, errors positive) and
        ``fpr_at_95_tpr`` (see :func:`fpr_at_tpr`), which are NaN where there
        are no errors or no correct predictions; ``aurc``, ``eaurc`` and
        ``augrc`` (see :func:`aurc`), which are defined for any non-empty
        input.
    """
    blocks = _tie_blocks(is_error, error_score)[1:]
    return {
        "auroc": _auroc(*blocks),
        "aupr": _aupr(*blocks),
        "fpr_at_95_tpr": _fpr_at_tpr(*blocks, 0.95),
        **_risk_coverage_areas(*blocks),
    }


def topk_accuracy(y_true, ranked_labels):
    """Fraction of samples whose true label is among their ranked labels.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    ranked_labels : array-like of shape (n_samples, k)
        Each sample's ``k >= 1`` labels, such as :func:`softmax_topk` returns.

    Returns
    -------
    accuracy : float
    """
    y_true, ranked_labels = np.asarray(y_true), np.asarray(ranked_labels)
    if y_true.ndim != 1 or ranked_labels.ndim != 2 or len(y_true) != len(ranked_labels) \
            or not ranked_labels.size:
        raise ValueError(
            "y_true must have shape (n_samples,) and ranked_labels shape (n_samples, k), with "
            f"n_samples >= 1 and k >= 1; got shapes {y_true.shape} and {ranked_labels.shape}."
        )
    return float((ranked_labels == y_true[:, None]).any(axis=1).mean())


def softmax_topk(proba, classes, k):
    """The ``k`` most probable labels per sample, best first.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_classes)
    classes : array-like of shape (n_classes,)
    k : int
        From 1 to ``n_classes``.

    Returns
    -------
    labels : ndarray of shape (n_samples, k)
    """
    proba, classes = np.asarray(proba), np.asarray(classes)
    if proba.ndim != 2 or classes.shape != proba.shape[1:]:
        raise ValueError(
            "proba must have shape (n_samples, n_classes) and classes shape (n_classes,); "
            f"got shapes {proba.shape} and {classes.shape}."
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= len(classes):
        raise ValueError(f"k must be an integer from 1 to n_classes={len(classes)}; got {k!r}.")
    return classes[np.argsort(-proba, axis=1, kind="stable")[:, :k]]


def bootstrap_interval(statistic, *arrays, n_resamples=1000, confidence=0.95,
                       random_state=0):
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling samples jointly.

    Resamples on which the statistic is undefined (NaN, such as an AUROC on a
    resample with no errors) are left out. The resamples are those of
    ``scipy.stats.bootstrap(..., random_state=random_state)``, so a seed gives
    the same interval as the scipy-based version of this function did.

    Parameters
    ----------
    statistic : callable
        Takes the arrays (resampled together, along their first axis) and
        returns a float, or a dict of str to float (such as
        :func:`detection_metrics`): then every entry gets its interval from
        the same resamples, for the cost of one pass.
    *arrays : array-like of shape (n_samples, ...)
    n_resamples : int, default=1000
    confidence : float, default=0.95
        Strictly between 0 and 1.
    random_state : int, default=0

    Returns
    -------
    low, high : float
        NaN if the statistic is undefined on every resample. A dict of
        str to ``(low, high)`` if ``statistic`` returns a dict.
    """
    if not callable(statistic):
        raise TypeError(f"statistic must be a callable; got a {type(statistic).__name__}.")
    arrays = [np.asarray(a) for a in arrays]
    if isinstance(n_resamples, bool) or not (
            isinstance(n_resamples, numbers.Integral) and n_resamples >= 1):
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}.")
    if isinstance(confidence, bool) or not (
            isinstance(confidence, numbers.Real) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a number strictly between 0 and 1; got "
                         f"{confidence!r}.")
    if not arrays:
        raise ValueError("bootstrap_interval needs at least one array to resample.")
    if any(a.ndim == 0 for a in arrays):
        raise ValueError("The arrays must have shape (n_samples, ...); got a scalar.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(
            f"The arrays must have the same length; got {[len(a) for a in arrays]}."
        )
    if n == 0:
        raise ValueError("The arrays are empty: there are no samples to resample.")
    rng = np.random.RandomState(random_state)
    # One row of indices at a time: the same stream as one (n_resamples, n) draw.
    values = [statistic(*(a[i] for a in arrays))
              for i in (rng.randint(0, n, n) for _ in range(n_resamples))]
    tail = 100 * (1 - confidence) / 2
    if isinstance(values[0], dict):
        return {key: _percentile_interval([v[key] for v in values], tail) for key in values[0]}
    return _percentile_interval(values, tail)


def _percentile_interval(values, tail):
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return np.nan, np.nan
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)
