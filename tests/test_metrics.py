"""The metrics against values worked out by hand, scikit-learn, and brute force over thresholds."""

import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

from resistclf.metrics import (
    auroc,
    bootstrap_interval,
    detection_metrics,
    fpr_at_tpr,
    softmax_topk,
    topk_accuracy,
    tpr_at_fpr,
)

# Four errors and four correct predictions; errors mostly score higher.
#   score:  0.9  0.8  0.7  0.6  0.5  0.3  0.2  0.1
#   error:   T    T    T    F    F    F    T    F
IS_ERROR = np.array([True, True, True, False, False, False, True, False])
SCORE = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2, 0.1])


def rates(is_positive, score):
    """TPR and FPR of "score >= t" for t from +inf down through every distinct score."""
    is_positive, score = np.asarray(is_positive, dtype=bool), np.asarray(score)
    thresholds = np.r_[np.inf, np.unique(score)[::-1]]
    tpr = np.array([np.mean(score[is_positive] >= t) for t in thresholds])
    fpr = np.array([np.mean(score[~is_positive] >= t) for t in thresholds])
    return tpr, fpr


def brute_fpr_at_tpr(is_positive, score, tpr):
    """FPR at the strictest threshold whose TPR reaches ``tpr``."""
    tprs, fprs = rates(is_positive, score)
    return fprs[np.argmax(tprs >= tpr)]


def brute_tpr_at_fpr(is_positive, score, fpr):
    """TPR at the loosest threshold whose FPR stays at most ``fpr``."""
    tprs, fprs = rates(is_positive, score)
    return tprs[np.flatnonzero(fprs <= fpr)[-1]]


def brute_auroc(is_positive, score):
    """P(a positive outscores a negative), ties counting one half."""
    is_positive, score = np.asarray(is_positive, dtype=bool), np.asarray(score)
    diff = score[is_positive][:, None] - score[~is_positive][None, :]
    return np.mean((diff > 0) + 0.5 * (diff == 0))


def test_fpr_at_tpr_hand_computed():
    # Reaching all four errors needs the threshold 0.2, which lets three of four correct in.
    assert fpr_at_tpr(IS_ERROR, SCORE) == 0.75
    assert fpr_at_tpr(IS_ERROR, SCORE, tpr=0.75) == 0.0  # threshold 0.7
    assert fpr_at_tpr(IS_ERROR, SCORE, tpr=0.76) == 0.75
    assert fpr_at_tpr(IS_ERROR, SCORE, tpr=0.25) == 0.0


def test_tpr_at_fpr_hand_computed():
    assert tpr_at_fpr(IS_ERROR, SCORE) == 0.75  # FPR 0 up to the threshold 0.7
    assert tpr_at_fpr(IS_ERROR, SCORE, fpr=0.5) == 0.75  # threshold 0.5
    assert tpr_at_fpr(IS_ERROR, SCORE, fpr=0.74) == 0.75
    assert tpr_at_fpr(IS_ERROR, SCORE, fpr=0.75) == 1.0  # threshold 0.2


def test_rates_at_a_threshold_on_a_straight_stretch_of_the_roc_curve():
    # A score shared by an error and a correct prediction (0.1) puts its ROC point on a
    # straight segment; it is a threshold all the same. (Found by the brute-force test.)
    is_error = [False, False, True, False, True, False, False]
    score = [0.0, 0.5, 0.1, 0.1, 0.0, 0.25, 0.5]
    assert fpr_at_tpr(is_error, score, tpr=0.5) == 0.8
    assert tpr_at_fpr(is_error, score, fpr=0.8) == 0.5


def test_auroc_and_aupr_hand_computed():
    # 13 of the 16 (error, correct) pairs are ordered right.
    assert auroc(IS_ERROR, SCORE) == pytest.approx(13 / 16)
    # Precision 1 at the first three errors, 4/7 at the fourth.
    metrics = detection_metrics(IS_ERROR, SCORE)
    assert metrics["aupr"] == pytest.approx(0.75 + 0.25 * 4 / 7)
    assert metrics["auroc"] == pytest.approx(13 / 16)
    assert metrics["fpr_at_95_tpr"] == 0.75


def test_auroc_counts_ties_as_half():
    assert auroc([True, True, False, False], [1.0, 0.0, 1.0, 0.0]) == 0.5
    assert auroc([True, False], [2.0, 1.0]) == 1.0
    assert auroc([True, False], [1.0, 2.0]) == 0.0


@pytest.mark.parametrize("is_positive", [[True, True, True], [False, False, False]],
                         ids=["all-positive", "no-positive"])
def test_metrics_undefined_without_both_classes_are_nan(is_positive):
    score = [0.1, 0.5, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN by design, not scikit-learn's complaint
        assert np.isnan(auroc(is_positive, score))
    assert np.isnan(tpr_at_fpr(is_positive, score))
    metrics = detection_metrics(is_positive, score)
    assert set(metrics) >= {"auroc", "aupr", "fpr_at_95_tpr"}
    assert all(np.isnan(metrics[key]) for key in ("auroc", "aupr", "fpr_at_95_tpr"))


labelled_scores = st.integers(2, 40).flatmap(lambda n: st.tuples(
    arrays(bool, n, elements=st.booleans()).filter(lambda a: a.any() and not a.all()),
    # Few distinct values, so that ties between errors and correct predictions are common.
    arrays(float, n, elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0, 3.0])),
    st.randoms(use_true_random=False),
))


@settings(max_examples=60, deadline=None)
@given(labelled_scores, st.sampled_from([0.05, 0.5, 0.9, 0.95, 1.0]))
def test_detection_metrics_match_sklearn_and_brute_force(data, rate):
    is_error, score, _ = data
    before = (is_error.copy(), score.copy())
    metrics = detection_metrics(is_error, score)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(is_error, score))
    assert metrics["auroc"] == pytest.approx(brute_auroc(is_error, score))
    assert metrics["aupr"] == pytest.approx(average_precision_score(is_error, score))
    assert metrics["fpr_at_95_tpr"] == pytest.approx(brute_fpr_at_tpr(is_error, score, 0.95))
    assert metrics["tpr_at_5_fpr"] == pytest.approx(brute_tpr_at_fpr(is_error, score, 0.05))
    assert auroc(is_error, score) == pytest.approx(brute_auroc(is_error, score))
    assert fpr_at_tpr(is_error, score, rate) == pytest.approx(
        brute_fpr_at_tpr(is_error, score, rate))
    assert tpr_at_fpr(is_error, score, rate) == pytest.approx(
        brute_tpr_at_fpr(is_error, score, rate))
    np.testing.assert_array_equal(is_error, before[0])
    np.testing.assert_array_equal(score, before[1])


@settings(max_examples=40, deadline=None)
@given(labelled_scores)
def test_detection_metrics_do_not_depend_on_sample_order(data):
    is_error, score, random = data
    order = np.array(random.sample(range(len(score)), len(score)))
    assert detection_metrics(is_error[order], score[order]) == pytest.approx(
        detection_metrics(is_error, score))
    assert auroc(is_error[order], score[order]) == pytest.approx(auroc(is_error, score))
    assert tpr_at_fpr(is_error[order], score[order]) == tpr_at_fpr(is_error, score)


def test_topk_accuracy_hand_computed():
    y = np.array(["cat", "dog", "owl", "cat"])
    ranked = np.array([["cat", "dog"], ["owl", "cat"], ["cat", "owl"], ["dog", "owl"]])
    assert topk_accuracy(y, ranked) == 0.5  # samples 0 and 2
    assert topk_accuracy(y, ranked[:, :1]) == 0.25
    assert topk_accuracy(y[[3, 1, 0, 2]], ranked[[3, 1, 0, 2]]) == 0.5


def test_softmax_topk_orders_by_probability_and_breaks_ties_by_class_order():
    proba = np.array([[0.1, 0.6, 0.3], [0.4, 0.2, 0.4], [0.2, 0.3, 0.5]])
    classes = np.array(["a", "b", "c"])
    np.testing.assert_array_equal(softmax_topk(proba, classes, 2),
                                  [["b", "c"], ["a", "c"], ["c", "b"]])
    np.testing.assert_array_equal(softmax_topk(proba, classes, 3)[:, 2], ["a", "b", "a"])
    # Thirty classes, so that a sort that is not stable (quicksort) would reorder the ties.
    tied = np.full((1, 30), 0.5 / 29)
    tied[0, 5] = 0.5
    np.testing.assert_array_equal(softmax_topk(tied, np.arange(30), 30)[0],
                                  [5, *range(5), *range(6, 30)])


def test_softmax_topk_accuracy_matches_sklearn():
    rng = np.random.RandomState(0)
    proba = rng.dirichlet(np.ones(5), size=50)
    classes = np.array([3, 7, 8, 10, 12])
    y = classes[rng.randint(5, size=50)]
    for k in (1, 2, 3):
        assert topk_accuracy(y, softmax_topk(proba, classes, k)) == pytest.approx(
            top_k_accuracy_score(y, proba, k=k, labels=classes))


def test_bootstrap_interval_covers_the_true_mean():
    # 200 samples of 40 from N(1, 1): a 90% percentile interval of the mean covers 1 in 87%
    # of them here (the percentile bootstrap runs a little narrow at n = 40). The seeds are
    # fixed, so the count is the same on every run, and the bounds sit 3.5 binomial standard
    # deviations (2.3% each) from 88% all the same; an 80% interval would cover about 78%.
    rng = np.random.RandomState(0)
    covered = []
    for seed in range(200):
        sample = rng.normal(1.0, 1.0, size=40)
        low, high = bootstrap_interval(np.mean, sample, n_resamples=200, confidence=0.9,
                                       random_state=seed)
        assert low < sample.mean() < high
        covered.append(low <= 1.0 <= high)
    assert 0.8 <= np.mean(covered) <= 0.96


def test_bootstrap_interval_is_scipys_percentile_interval():
    rng = np.random.RandomState(1)
    sample = rng.exponential(size=30)
    low, high = bootstrap_interval(np.mean, sample, n_resamples=300, confidence=0.8,
                                   random_state=7)
    expected = scipy.stats.bootstrap((sample,), np.mean, n_resamples=300,
                                     confidence_level=0.8, method="percentile",
                                     vectorized=False, random_state=7).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    # The defaults: 1000 resamples, 95%, seed 0.
    expected = scipy.stats.bootstrap((sample,), np.mean, n_resamples=1000,
                                     confidence_level=0.95, method="percentile",
                                     vectorized=False, random_state=0).confidence_interval
    assert bootstrap_interval(np.mean, sample) == pytest.approx((expected.low, expected.high),
                                                                rel=1e-12)


def test_bootstrap_interval_passes_on_the_statistics_warnings():
    def noisy(sample):
        warnings.warn("the statistic's own warning", UserWarning, stacklevel=1)
        return np.mean(sample)

    with pytest.warns(UserWarning, match="the statistic's own warning"):
        bootstrap_interval(noisy, np.arange(10.0), n_resamples=20)


def test_bootstrap_interval_narrows_with_confidence_and_repeats_with_its_seed():
    sample = np.random.RandomState(2).normal(size=50)
    wide = bootstrap_interval(np.mean, sample, confidence=0.95, random_state=0)
    narrow = bootstrap_interval(np.mean, sample, confidence=0.5, random_state=0)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert bootstrap_interval(np.mean, sample, random_state=0) == wide
    assert bootstrap_interval(np.mean, sample, random_state=1) != wide


def test_bootstrap_interval_resamples_arrays_jointly():
    # b - a is 1 for every sample, so every joint resample has mean difference 1.
    a = np.random.RandomState(3).normal(size=25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zero-width interval is no reason for a warning
        low, high = bootstrap_interval(lambda a, b: np.mean(b - a), a, a + 1.0,
                                       n_resamples=100)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_bootstrap_interval_leaves_out_undefined_resamples():
    # AUROC with one error among 20 is undefined on the resamples that miss it (about a third).
    is_error = np.zeros(20, dtype=bool)
    is_error[0] = True
    score = np.linspace(1, 0, 20)  # the error scores highest: AUROC 1 wherever defined
    assert bootstrap_interval(auroc, is_error, score, n_resamples=200) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_interval(auroc, np.zeros(20, bool), score, n_resamples=50)))


def test_bootstrap_interval_does_not_modify_inputs():
    sample = np.random.RandomState(4).normal(size=30)
    before = sample.copy()
    bootstrap_interval(np.mean, sample, n_resamples=50)
    np.testing.assert_array_equal(sample, before)
