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
    "bootstrap_distribution",
    "bootstrap_interval",
    "detection_metrics",
    "DetectionMetric",
    "eaurc",
    "equivalence_test",
    "fpr_at_tpr",
    "holm",
    "holm_family",
    "Mean",
    "MeanDifference",
    "mcnemar_test",
    "MetricDifference",
    "paired_difference",
    "risk_coverage_curve",
    "softmax_topk",
    "topk_accuracy",
    "tpr_at_fpr",
    "verdict",
]


#: Resamples are computed a few at a time, about this many values per pass, so that a
#: pass's arrays stay in the CPU's cache (measured: one 17,000-row resample per pass ran
#: twice as fast as five).
_VALUES_PER_PASS = 16_384
#: The keys of :func:`detection_metrics`.
_DETECTION_METRICS = ("auroc", "aupr", "fpr_at_95_tpr", "tpr_at_5_fpr", "aurc", "eaurc",
                      "augrc")


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
        ``fpr_at_95_tpr`` (see :func:`fpr_at_tpr`) and ``tpr_at_5_fpr`` (see
        :func:`tpr_at_fpr`), which are NaN where there are no errors or no
        correct predictions; ``aurc``, ``eaurc`` and
        ``augrc`` (see :func:`aurc`), which are defined for any non-empty
        input.
    """
    blocks = _tie_blocks(is_error, error_score)[1:]
    return {
        "auroc": _auroc(*blocks),
        "aupr": _aupr(*blocks),
        "fpr_at_95_tpr": _fpr_at_tpr(*blocks, 0.95),
        "tpr_at_5_fpr": _tpr_at_fpr(*blocks, 0.05),
        **_risk_coverage_areas(*blocks),
    }


def _resampled_detection_metrics(is_error, error_scores, counts, keys=_DETECTION_METRICS):
    """:func:`detection_metrics` of each score on every resample, computed together.

    A resample draws each sample some number of times (``counts``, one array per
    resample), so its tie blocks are the original blocks with those counts, the empty
    ones left out. The blocks of many resamples form one array, empty blocks included
    (they add nothing to any metric), and every metric is computed for all of them at
    once. The integers are the ones :func:`_tie_blocks` gives on each resample; AUROC
    and AUGRC, exact sums of integers, are equal to the last bit, the other metrics up
    to the rounding of a sum taken in another order.

    Returns
    -------
    values : list of dict of str to ndarray of shape (n_resamples,)
        One per score, with the metrics ``keys``.
    """
    checked = [_check_detection_input(is_error, score) for score in error_scores]
    is_error = checked[0][0]
    n = len(is_error)
    blocks = []
    for _, score in checked:
        order = np.argsort(score, kind="stable")
        ordered = score[order]
        blocks.append((order, np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]),
                       is_error[order]))
    chunk = max(1, _VALUES_PER_PASS // n)
    values = [[] for _ in checked]
    for batch in _batches(counts, chunk):
        drawn = np.stack(batch)
        for (order, starts, errors), score_values in zip(blocks, values):
            counts = drawn[:, order]
            per_error = counts * errors
            if len(starts) < n:  # some scores tie: their samples share a block
                counts = np.add.reduceat(counts, starts, axis=1)
                per_error = np.add.reduceat(per_error, starts, axis=1)
            score_values.append(_block_metrics(counts, per_error, keys))
    return [{key: np.concatenate([v[key] for v in score_values]) for key in keys}
            for score_values in values]


def _batches(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _block_metrics(counts, errors, keys):
    """The metrics ``keys`` of :func:`detection_metrics` for each row of tie blocks (samples
    and errors per block, ascending scores; shape (n_resamples, n_blocks)): the arithmetic
    of the one-row functions above, written for many rows."""
    accepted, accepted_errors = np.cumsum(counts, axis=1), np.cumsum(errors, axis=1)
    before = accepted - counts
    errors_before = accepted_errors - errors
    n, n_errors = accepted[:, -1], accepted_errors[:, -1]
    n_correct = n - n_errors
    defined = (n_errors > 0) & (n_correct > 0)
    values = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if "auroc" in keys:
            # Twice a block's average rank is N' + N + 1: integers, summed exactly.
            rank_sum = _row_dot(errors, accepted + before + 1) / 2
            values["auroc"] = np.where(defined, (rank_sum - n_errors * (n_errors + 1) / 2)
                                       / (n_errors * n_correct), np.nan)
        if {"aupr", "fpr_at_95_tpr", "tpr_at_5_fpr"} & set(keys):
            # Each block's ROC point flags it and every block above it: all samples but the
            # ``before`` ones. Read from the highest score down, the points' new true
            # positives are the blocks' errors.
            rows = np.arange(len(counts))
            tps = n_errors[:, None] - errors_before
            flagged = n[:, None] - before
            fps = flagged - tps
        if "aupr" in keys:
            precision = tps / np.maximum(flagged, 1)  # a block with errors flags some
            values["aupr"] = np.where(defined, _row_dot(errors, precision) / n_errors, np.nan)
        if "fpr_at_95_tpr" in keys:
            # The strictest threshold that reaches 95% of the errors: the last such block.
            reached = np.count_nonzero(tps / n_errors[:, None] >= 0.95, axis=1)
            values["fpr_at_95_tpr"] = np.where(
                defined, fps[rows, np.maximum(reached - 1, 0)] / n_correct, np.nan)
        if "tpr_at_5_fpr" in keys:
            # The ROC curve starts at (0, 0); the loosest point with FPR at most 5% counts.
            within = np.count_nonzero(fps / n_correct[:, None] <= 0.05, axis=1)
            tpr = np.where(within > 0, tps[rows, np.minimum(counts.shape[1] - within,
                                                             counts.shape[1] - 1)]
                           / n_errors, 0.0)
            values["tpr_at_5_fpr"] = np.where(defined, tpr, np.nan)
        if {"aurc", "eaurc"} & set(keys):
            harmonic = _harmonic_numbers(int(n.max()))
            # A block's H[N' + c] - H[N']: the next block starts where this one ends.
            inverse_sum = np.diff(harmonic[accepted], axis=1, prepend=0.0)
            share = errors / np.maximum(counts, 1)  # empty blocks: 0, as is their inverse sum
            values["aurc"] = (n_errors + _row_dot(errors_before - before * share,
                                                  inverse_sum)) / n
            values["eaurc"] = values["aurc"] - (
                n - n_correct - n_correct * (harmonic[n] - harmonic[n_correct])) / n
        if "augrc" in keys:
            # Twice a block's share, 2 c E' + e (c + 1): integers, summed exactly.
            values["augrc"] = (2 * _row_dot(counts, errors_before)
                               + _row_dot(errors, counts + 1)) / 2 / n**2
    return {key: values[key] for key in keys}


def _row_dot(a, b):
    """Each row's sum of products, without the product array."""
    return np.einsum("ij,ij->i", a, b)


# bootstrap_distribution computes every resample at once through this.
detection_metrics.on_resamples = lambda is_error, error_score, *, counts: \
    _resampled_detection_metrics(is_error, [error_score], counts)[0]


class DetectionMetric:
    """A statistic: some metrics of :func:`detection_metrics`, and only those.

    As the statistic of :func:`bootstrap_interval` it computes every resample
    at once (see :func:`bootstrap_distribution`), and only the metrics asked
    for, with the values :func:`detection_metrics` gives.

    Parameters
    ----------
    metric : str or tuple of str, default="auroc"
        Keys of :func:`detection_metrics`; a tuple makes the statistic a dict.

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.metrics import DetectionMetric, bootstrap_interval
    >>> rng = np.random.RandomState(0)
    >>> is_error = rng.rand(200) < 0.2
    >>> low, high = bootstrap_interval(DetectionMetric("auroc"), is_error,
    ...                                0.5 * is_error + rng.rand(200), n_resamples=200)
    >>> 0.5 < low < high < 1
    True
    """

    def __init__(self, metric="auroc"):
        self.metric = metric
        self._keys = _metric_keys(metric)

    def _pick(self, values):
        return values[self.metric] if isinstance(self.metric, str) else \
            {key: values[key] for key in self._keys}

    def __call__(self, is_error, error_score):
        """The metrics on the samples as they are (a float, or a dict for several)."""
        return self._pick(detection_metrics(is_error, error_score))

    def on_resamples(self, is_error, error_score, *, counts):
        """The metrics on every resample (``counts``: each sample's draws), as arrays."""
        return self._pick(_resampled_detection_metrics(is_error, [error_score], counts,
                                                       self._keys)[0])

    def __repr__(self):
        return f"DetectionMetric({self.metric!r})"


class Mean:
    """A statistic: the mean of one array, such as the share of True in a mask.

    As the statistic of :func:`bootstrap_interval` it computes every resample
    at once (see :func:`bootstrap_distribution`), with the values ``np.mean``
    gives on each resample: equal to the last bit for booleans and integers,
    whose sums are exact, and up to the rounding of a sum taken in another
    order for floats.

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.metrics import Mean, bootstrap_interval
    >>> right = np.arange(100) % 4 != 0
    >>> low, high = bootstrap_interval(Mean(), right, n_resamples=200)
    >>> low < 0.75 < high
    True
    """

    def __call__(self, values):
        """The mean of ``values`` as they are."""
        return float(np.mean(values))

    def on_resamples(self, values, *, counts):
        """The mean on every resample (``counts``: each sample's draws), as an array."""
        return _resampled_means([values], counts)[0]

    def __repr__(self):
        return "Mean()"


class MeanDifference:
    """A paired statistic: ``mean(a) - mean(b)`` on the same samples.

    Two methods' right-or-wrong outcomes on the same samples, for example. As
    the statistic of :func:`paired_difference` it computes every resample at
    once, with the values ``np.mean(a) - np.mean(b)`` gives on each (see
    :class:`Mean`).

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.metrics import MeanDifference, paired_difference
    >>> a_right = np.arange(200) % 5 != 0
    >>> b_right = np.arange(200) % 3 != 0
    >>> round(paired_difference(MeanDifference(), a_right, b_right,
    ...                         n_resamples=200)["difference"], 3)
    0.135
    """

    def __call__(self, a, b):
        """The difference on the samples as they are."""
        return float(np.mean(a) - np.mean(b))

    def on_resamples(self, a, b, *, counts):
        """The difference on every resample (``counts``: each sample's draws), as an array."""
        mean_a, mean_b = _resampled_means([a, b], counts)
        return mean_a - mean_b

    def __repr__(self):
        return "MeanDifference()"


def _resampled_means(arrays, counts):
    """Each array's mean on every resample: its sum weighted by the draws, over the draws."""
    # Booleans and integers sum exactly, in integers, as np.mean's float sum of them does.
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a.astype(np.int64) if a.dtype.kind in "bui" else a.astype(np.float64)
              for a in arrays]
    chunk = max(1, _VALUES_PER_PASS // len(arrays[0]))
    means = [[] for _ in arrays]
    for batch in _batches(counts, chunk):
        drawn = np.stack(batch)
        total = drawn.sum(axis=1)
        for a, values in zip(arrays, means):
            values.append((drawn @ a) / total)
    return [np.concatenate(values) for values in means]


def _metric_keys(metric):
    keys = (metric,) if isinstance(metric, str) else tuple(metric)
    if not keys or any(key not in _DETECTION_METRICS for key in keys):
        raise ValueError(f"metric must name metrics of detection_metrics, "
                         f"{list(_DETECTION_METRICS)}; got {metric!r}.")
    return keys


class MetricDifference:
    """A paired statistic: ``metric(is_error, a) - metric(is_error, b)``.

    Two error scores of the same samples compared on one metric of
    :func:`detection_metrics`, or on several. As the statistic of
    :func:`paired_difference` or :func:`equivalence_test` it computes every
    resample at once, many times faster than the equivalent ``lambda`` and with
    the same values (see :func:`bootstrap_distribution`).

    Parameters
    ----------
    metric : str or tuple of str, default="auroc"
        Keys of :func:`detection_metrics`; a tuple makes the statistic a dict.

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.metrics import MetricDifference, paired_difference
    >>> rng = np.random.RandomState(0)
    >>> is_error = rng.rand(200) < 0.2
    >>> good, noise = is_error + rng.rand(200), rng.rand(200)
    >>> paired_difference(MetricDifference("auroc"), is_error, good, noise,
    ...                   n_resamples=200)["ci"][0] > 0
    True
    """

    def __init__(self, metric="auroc"):
        self.metric = metric
        self._keys = _metric_keys(metric)

    def _difference(self, with_, without):
        differences = {key: with_[key] - without[key] for key in self._keys}
        return differences[self.metric] if isinstance(self.metric, str) else differences

    def __call__(self, is_error, a, b):
        """The difference on the samples as they are (a float, or a dict for several)."""
        return self._difference(detection_metrics(is_error, a), detection_metrics(is_error, b))

    def on_resamples(self, is_error, a, b, *, counts):
        """The difference on every resample (``counts``: each sample's draws), as arrays."""
        return self._difference(*_resampled_detection_metrics(is_error, [a, b], counts,
                                                              self._keys))

    def __repr__(self):
        return f"MetricDifference({self.metric!r})"


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


def bootstrap_distribution(statistic, *arrays, groups=None, n_resamples=1000, random_state=0):
    """The values of ``statistic(*arrays)`` over bootstrap resamples of the samples.

    Without ``groups``, each resample draws ``n_samples`` rows with
    replacement. With ``groups``, it draws as many groups as there are, with
    replacement, and takes every row of each group drawn, as often as it is
    drawn (the cluster bootstrap): rows that share a source, such as an image
    and its corrupted copies, are resampled together, since only the sources
    were drawn at random. Arrays resampled together stay paired, so a
    statistic that compares two methods on the same rows gets a paired
    distribution.

    Parameters
    ----------
    statistic : callable
        Takes the arrays (resampled together, along their first axis) and
        returns a float, or a dict of str to float. A statistic with an
        ``on_resamples(*arrays, counts=counts)`` method, such as
        :func:`detection_metrics`, :class:`DetectionMetric` and
        :class:`MetricDifference`, gets every resample at once, as how often
        each row is drawn (an iterable of integer arrays of shape
        ``(n_samples,)``, one per resample), and returns what calling it on
        each resample would, as arrays; it must not depend on the order of
        the rows.
    *arrays : array-like of shape (n_samples, ...)
    groups : array-like of shape (n_samples,) or None, default=None
        The source of each row; rows of one source are drawn together.
    n_resamples : int, default=1000
    random_state : int, default=0

    Returns
    -------
    values : ndarray of shape (n_resamples,) or dict of str to ndarray
        One value per resample (NaN where the statistic is undefined, such as
        an AUROC on a resample without errors).
    """
    if not callable(statistic):
        raise TypeError(f"statistic must be a callable; got a {type(statistic).__name__}.")
    arrays = [np.asarray(a) for a in arrays]
    if isinstance(n_resamples, bool) or not (
            isinstance(n_resamples, numbers.Integral) and n_resamples >= 1):
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}.")
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
    codes = None if groups is None else _group_codes(n, groups)
    rng = np.random.RandomState(random_state)
    on_resamples = getattr(statistic, "on_resamples", None)
    if on_resamples is not None:
        return on_resamples(*arrays, counts=_resampled_counts(n, codes, n_resamples, rng))
    values = [statistic(*(a[i] for a in arrays))
              for i in _resampled_rows(n, codes, n_resamples, rng)]
    if isinstance(values[0], dict):
        return {key: np.array([v[key] for v in values], dtype=float) for key in values[0]}
    return np.asarray(values, dtype=float)


def _group_codes(n, groups):
    """Each row's group as an integer 0 .. n_groups - 1."""
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must hold one source per sample, shape ({n},); got shape "
                         f"{groups.shape}.")
    return np.unique(groups, return_inverse=True)[1]


def _resampled_rows(n, codes, n_resamples, rng):
    """Row indices of each resample: rows, or whole groups of rows (``codes``), drawn with
    replacement."""
    if codes is None:
        # One row of indices at a time: the same stream as one (n_resamples, n) draw.
        for _ in range(n_resamples):
            yield rng.randint(0, n, n)
        return
    rows_by_group = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    for _ in range(n_resamples):
        drawn = rng.randint(0, len(sizes), len(sizes))
        drawn_sizes = sizes[drawn]
        # Position within each drawn group, added to that group's first row.
        offsets = np.arange(drawn_sizes.sum()) - np.repeat(np.cumsum(drawn_sizes)
                                                           - drawn_sizes, drawn_sizes)
        yield rows_by_group[np.repeat(starts[drawn], drawn_sizes) + offsets]


def _resampled_counts(n, codes, n_resamples, rng):
    """How often each row is drawn in each resample of :func:`_resampled_rows` (the same
    random stream): a row is drawn as often as its group."""
    n_units = n if codes is None else int(codes.max()) + 1
    for _ in range(n_resamples):
        drawn = np.bincount(rng.randint(0, n_units, n_units), minlength=n_units)
        yield drawn if codes is None else drawn[codes]


def bootstrap_interval(statistic, *arrays, groups=None, n_resamples=1000, confidence=0.95,
                       random_state=0):
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling samples jointly.

    Resamples on which the statistic is undefined (NaN, such as an AUROC on a
    resample with no errors) are left out. Without ``groups`` the resamples
    are those of ``scipy.stats.bootstrap(..., random_state=random_state)``, so
    a seed gives the same interval as the scipy-based version of this function
    did.

    Parameters
    ----------
    statistic : callable
        Takes the arrays (resampled together, along their first axis) and
        returns a float, or a dict of str to float (such as
        :func:`detection_metrics`): then every entry gets its interval from
        the same resamples, for the cost of one pass.
    *arrays : array-like of shape (n_samples, ...)
    groups : array-like of shape (n_samples,) or None, default=None
        The source of each row: rows of one source (an image and its
        corrupted copies, one image under several nets) are resampled
        together, as a cluster bootstrap (see :func:`bootstrap_distribution`).
        None treats every row as drawn independently.
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
    _check_confidence(confidence)
    values = bootstrap_distribution(statistic, *arrays, groups=groups, n_resamples=n_resamples,
                                    random_state=random_state)
    tail = 100 * (1 - confidence) / 2
    if isinstance(values, dict):
        return {key: _percentile_interval(v, tail) for key, v in values.items()}
    return _percentile_interval(values, tail)


def _check_confidence(confidence):
    if isinstance(confidence, bool) or not (
            isinstance(confidence, numbers.Real) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a number strictly between 0 and 1; got "
                         f"{confidence!r}.")


def _percentile_interval(values, tail):
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():
        return np.nan, np.nan
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(statistic, *arrays, groups=None, n_resamples=1000, confidence=0.95,
                      random_state=0):
    """A difference between two methods on the same samples, with its paired bootstrap test.

    Parameters
    ----------
    statistic : callable
        Takes the arrays and returns the difference (method A − method B), a
        float, or a dict of str to float for several differences at once.
        Both methods' values must come from the arrays it is given, so that
        every resample pairs them on the same samples.
    *arrays : array-like of shape (n_samples, ...)
    groups : array-like of shape (n_samples,) or None, default=None
        Sources of the rows, resampled together (see :func:`bootstrap_interval`).
    n_resamples : int, default=1000
    confidence : float, default=0.95
    random_state : int, default=0

    Returns
    -------
    result : dict, or dict of str to dict
        ``difference`` (on the samples as they are), ``ci`` (the percentile
        interval) and ``p_value``: twice the smaller share of resamples on
        either side of 0, the two-sided p-value that matches the percentile
        interval (below ``1 - confidence`` exactly where the interval
        excludes 0, up to resampling ties).
    """
    _check_confidence(confidence)
    observed = statistic(*(np.asarray(a) for a in arrays))
    values = bootstrap_distribution(statistic, *arrays, groups=groups, n_resamples=n_resamples,
                                    random_state=random_state)
    tail = 100 * (1 - confidence) / 2

    def summary(value, resampled):
        resampled = resampled[~np.isnan(resampled)]
        p_value = float(min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))) \
            if len(resampled) else np.nan
        return {"difference": float(value), "ci": _percentile_interval(resampled, tail),
                "p_value": p_value, "resamples": int(len(resampled))}

    if isinstance(observed, dict):
        return {key: summary(observed[key], values[key]) for key in observed}
    return summary(observed, values)


def equivalence_test(statistic, *arrays, margin, groups=None, n_resamples=1000, alpha=0.05,
                     random_state=0):
    """Two one-sided tests (TOST) that a difference lies within ``±margin``.

    The difference is declared equivalent to 0 when the whole ``1 - 2 alpha``
    percentile bootstrap interval (90% at the default ``alpha``) lies strictly
    inside ``(-margin, margin)``: both one-sided tests at level ``alpha``
    reject. A difference test that finds nothing is no evidence of
    equivalence; a noisy method gets a wide interval here, which fails.

    Parameters
    ----------
    statistic : callable
        Takes the arrays and returns the difference (A − B), or a dict of str to
        float.
    *arrays : array-like of shape (n_samples, ...)
    margin : float or dict of str to float
        The largest difference that counts as none, fixed before the data are
        seen; a dict gives one per key of the statistic's dict.
    groups : array-like of shape (n_samples,) or None, default=None
        Sources of the rows, resampled together.
    n_resamples : int, default=1000
    alpha : float, default=0.05
        The level of each one-sided test, strictly between 0 and 0.5.
    random_state : int, default=0

    Returns
    -------
    result : dict, or dict of str to dict
        ``difference``, ``ci`` (the ``1 - 2 alpha`` interval), ``margin`` and
        ``equivalent`` (bool).
    """
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0 < alpha < 0.5):
        raise ValueError(f"alpha must be a number strictly between 0 and 0.5; got {alpha!r}.")
    tested = paired_difference(statistic, *arrays, groups=groups, n_resamples=n_resamples,
                               confidence=1 - 2 * alpha, random_state=random_state)

    def judge(result, bound):
        if isinstance(bound, bool) or not (isinstance(bound, numbers.Real) and bound > 0):
            raise ValueError(f"margin must be a positive number; got {bound!r}.")
        low, high = result["ci"]
        return {"difference": result["difference"], "ci": (low, high), "margin": float(bound),
                "equivalent": bool(-bound < low and high < bound)}

    if "difference" in tested:
        return judge(tested, margin)
    margins = margin if isinstance(margin, dict) else dict.fromkeys(tested, margin)
    missing = sorted(set(tested) - set(margins))
    if missing:
        raise ValueError(f"margin gives no margin for {missing}.")
    return {key: judge(result, margins[key]) for key, result in tested.items()}


def mcnemar_test(a_right, b_right):
    """Exact McNemar test of two methods' paired right-or-wrong outcomes on the same samples.

    Only the samples where the two differ count: under the null hypothesis
    each of them favours either method with probability 1/2 (a two-sided
    binomial test, ``scipy.stats.binomtest``). The samples must be drawn
    independently; for rows that share a source use :func:`paired_difference`
    with ``groups``.

    Parameters
    ----------
    a_right, b_right : array-like of bool, shape (n_samples,)
        Whether each method is right on each sample.

    Returns
    -------
    result : dict
        ``a_only`` and ``b_only`` (samples only one method gets right),
        ``difference`` (``a_only - b_only``) and ``p_value``.
    """
    from scipy.stats import binomtest

    a_right, b_right = np.asarray(a_right), np.asarray(b_right)
    if a_right.shape != b_right.shape or a_right.ndim != 1:
        raise ValueError(f"a_right and b_right must be 1-D arrays of one length; got shapes "
                         f"{a_right.shape} and {b_right.shape}.")
    if a_right.dtype != bool or b_right.dtype != bool:
        raise ValueError(f"a_right and b_right must be boolean; got dtypes {a_right.dtype} and "
                         f"{b_right.dtype}.")
    a_only, b_only = int(np.sum(a_right & ~b_right)), int(np.sum(b_right & ~a_right))
    p_value = 1.0 if a_only + b_only == 0 else float(
        binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "difference": a_only - b_only,
            "p_value": p_value}


def holm(p_values):
    """Holm's step-down adjustment of p-values for a family of tests.

    Rejecting where the adjusted p-value is below alpha controls the chance of
    any false rejection in the family at alpha, whatever the tests'
    dependence. NaN p-values (tests that could not be run) stay NaN and do
    not count towards the family.

    Parameters
    ----------
    p_values : array-like of shape (n_tests,) or dict of str to float

    Returns
    -------
    adjusted : ndarray of shape (n_tests,) or dict of str to float
    """
    if isinstance(p_values, dict):
        return dict(zip(p_values, holm(np.array(list(p_values.values()), dtype=float))
                        .tolist()))
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p_values must be a 1-D array of numbers in [0, 1]; got {p_values!r}.")
    adjusted = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(steps, 1.0)
    return adjusted


def verdict(difference, p_value, *, words=("better", "worse"), alpha=0.05):
    """The word for a two-sided test of a difference between methods A and B (A − B).

    Parameters
    ----------
    difference : float
        Oriented so that positive favours A (negate an AURC or an error rate).
    p_value : float
    words : (str, str), default=("better", "worse")
        A's word when the test finds A ahead, and when it finds A behind.
    alpha : float, default=0.05

    Returns
    -------
    word : str
        ``words[0]`` or ``words[1]`` where ``p_value < alpha``; "no difference
        found" where it is not, which is no evidence that there is none (that
        takes :func:`equivalence_test`); "n/a" where the test could not be run
        (a NaN p-value).
    """
    if np.isnan(p_value):
        return "n/a"
    if not p_value < alpha:
        return "no difference found"
    return words[0] if difference > 0 else words[1]


def holm_family(tests, *, words=("better", "worse"), favours_a=None):
    """Holm-adjust a family of tests and give each its verdict, in place.

    Parameters
    ----------
    tests : dict of str to dict
        Each with ``difference`` and ``p_value`` (as :func:`paired_difference`
        returns); each gets ``p_holm`` and ``verdict`` (see :func:`verdict`,
        at the adjusted p-value).
    words : (str, str), default=("better", "worse")
    favours_a : callable or None, default=None
        ``favours_a(test)`` is False for a test whose positive difference favours
        B (a difference in AURC); None means every positive difference favours A.

    Returns
    -------
    tests : dict
        The same dict.
    """
    adjusted = holm({name: test["p_value"] for name, test in tests.items()})
    for name, test in tests.items():
        sign = 1 if favours_a is None or favours_a(test) else -1
        test["p_holm"] = adjusted[name]
        test["verdict"] = verdict(sign * test["difference"], adjusted[name], words=words)
    return tests
