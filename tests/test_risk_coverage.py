"""Risk-coverage metrics, the fast detection metrics, bootstrap intervals, and their figures."""

import itertools
import warnings
from fractions import Fraction

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import DegenerateDataWarning, bootstrap
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf.metrics import (
    augrc,
    aurc,
    auroc,
    bootstrap_interval,
    detection_metrics,
    eaurc,
    fpr_at_tpr,
    risk_coverage_curve,
    tpr_at_fpr,
)
from resistclf.plotting import RiskCoverageDisplay, plot_histograms, plot_roc_curves

matplotlib.use("Agg")


def naive_areas(is_error, error_score):
    """AURC and AUGRC of one ordering: stable sort, one sample accepted at a time."""
    accepted_errors = np.cumsum(np.asarray(is_error)[np.argsort(error_score, kind="stable")])
    k = np.arange(1, len(accepted_errors) + 1)
    return np.mean(accepted_errors / k), np.mean(accepted_errors) / len(k)


def average_over_orderings(is_error, error_score):
    """The exact mean of ``naive_areas`` over every ordering of the samples.

    A stable sort of each permutation puts the tied samples in every order
    equally often, so this is the expectation over random tie-breaking.
    """
    is_error, error_score = np.asarray(is_error), np.asarray(error_score)
    areas = [naive_areas(is_error[list(p)], error_score[list(p)])
             for p in itertools.permutations(range(len(is_error)))]
    return np.mean(areas, axis=0)


def random_tied(rng, n, n_levels=4):
    is_error = rng.random(n) < 0.4
    return is_error, rng.integers(0, n_levels, n) + 0.5 * is_error * rng.integers(0, 2, n)


# --------------------------------------------------------------- definition, by hand

@pytest.mark.parametrize("is_error, error_score, expected", [
    # Untied: errors accepted at k = 2 and 4, so err_k = 0, 1, 1, 2.
    ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4],
     {"aurc": (1 / 2 + 1 / 3 + 2 / 4) / 4, "augrc": 4 / 16,
      "eaurc": (1 / 2 + 1 / 3 + 2 / 4) / 4 - (1 / 3 + 2 / 4) / 4}),
    # A block of three (one error) then an error: err_k = 1/3, 2/3, 1, 2.
    ([1, 0, 0, 1], [1, 1, 1, 2],
     {"aurc": (1 / 3 + 1 / 3 + 1 / 3 + 2 / 4) / 4, "augrc": 4 / 16,
      "eaurc": 3 / 8 - (1 / 3 + 2 / 4) / 4}),
    # One block: the selective risk is the error rate at every coverage.
    ([1, 0, 0, 0, 1], [7, 7, 7, 7, 7],
     {"aurc": 2 / 5, "augrc": (2 / 5) * 6 / 10, "eaurc": 2 / 5 - (1 / 4 + 2 / 5) / 5}),
    # No errors, and only errors: defined, not NaN.
    ([0, 0, 0], [3, 1, 2], {"aurc": 0.0, "augrc": 0.0, "eaurc": 0.0}),
    ([1, 1, 1], [3, 1, 1], {"aurc": 1.0, "augrc": 4 / 6, "eaurc": 0.0}),
])
def test_risk_coverage_areas_match_hand_computed_values(is_error, error_score, expected):
    is_error = np.array(is_error, dtype=bool)
    for name, metric in [("aurc", aurc), ("augrc", augrc), ("eaurc", eaurc)]:
        assert metric(is_error, error_score) == pytest.approx(expected[name], abs=1e-12)
        assert detection_metrics(is_error, error_score)[name] == pytest.approx(
            expected[name], abs=1e-12)


def test_risk_coverage_areas_are_the_expectation_over_tie_orderings():
    rng = np.random.default_rng(0)
    for n in (3, 5, 7):
        for _ in range(4):
            is_error, error_score = random_tied(rng, n)
            expected_aurc, expected_augrc = average_over_orderings(is_error, error_score)
            assert aurc(is_error, error_score) == pytest.approx(expected_aurc, abs=1e-9)
            assert augrc(is_error, error_score) == pytest.approx(expected_augrc, abs=1e-9)


def test_risk_coverage_areas_match_exact_rational_arithmetic_on_many_samples():
    rng = np.random.default_rng(1)
    n = 3000
    is_error = rng.random(n) < 0.1
    error_score = rng.integers(0, 40, n) + 2.0 * is_error
    order = np.argsort(error_score, kind="stable")
    scores, errors = error_score[order], is_error[order]
    expected_errors, total, k = Fraction(0), Fraction(0), 0
    for value in np.unique(scores):
        block = errors[scores == value]
        rate = Fraction(int(block.sum()), len(block))
        for _ in block:
            k += 1
            expected_errors += rate
            total += expected_errors / k
    assert aurc(is_error, error_score) == pytest.approx(float(total / n), abs=1e-12)


def test_risk_coverage_areas_do_not_depend_on_sample_order():
    rng = np.random.default_rng(2)
    is_error, error_score = random_tied(rng, 500, n_levels=6)
    reference = detection_metrics(is_error, error_score)
    for _ in range(5):
        order = rng.permutation(len(is_error))
        shuffled = detection_metrics(is_error[order], error_score[order])
        for key, value in reference.items():
            assert shuffled[key] == pytest.approx(value, abs=1e-12)
    # The per-sample (order-dependent) area does change with the order here.
    naive = {naive_areas(is_error[p], error_score[p])[0]
             for p in (rng.permutation(len(is_error)) for _ in range(5))}
    assert len(naive) > 1


@pytest.mark.parametrize("n_correct, n_errors", [(10, 3), (1, 1), (50, 49), (7, 0)])
def test_eaurc_is_zero_for_a_perfect_score(n_correct, n_errors):
    rng = np.random.default_rng(3)
    is_error = np.r_[np.zeros(n_correct, bool), np.ones(n_errors, bool)]
    # Ties inside each group, every error above every correct prediction.
    error_score = np.r_[rng.integers(0, 3, n_correct), 5 + rng.integers(0, 3, n_errors)]
    order = rng.permutation(len(is_error))
    assert eaurc(is_error[order], error_score[order]) == pytest.approx(0, abs=1e-12)
    # The reversed score is the worst one: all errors first.
    assert eaurc(is_error, -error_score) >= 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=6))
def test_risk_coverage_areas_property_expectation_and_bounds(samples):
    is_error = np.array([e for e, _ in samples], dtype=bool)
    error_score = np.array([s for _, s in samples], dtype=float)
    expected_aurc, expected_augrc = average_over_orderings(is_error, error_score)
    metrics = detection_metrics(is_error, error_score)
    assert metrics["aurc"] == pytest.approx(expected_aurc, abs=1e-9)
    assert metrics["augrc"] == pytest.approx(expected_augrc, abs=1e-9)
    assert metrics["eaurc"] >= -1e-12
    assert 0 <= metrics["augrc"] <= metrics["aurc"] + 1e-12 <= 1 + 2e-12


# --------------------------------------------------------------- ROC-based metrics

def test_detection_metrics_equal_scikit_learn():
    rng = np.random.default_rng(4)
    for trial in range(20):
        n = int(rng.integers(2, 400))
        is_error = rng.random(n) < rng.uniform(0.05, 0.6)
        if is_error.all() or not is_error.any():
            continue
        error_score = (rng.normal(size=n) + is_error if trial % 2
                       else rng.integers(0, 5, n) + is_error * rng.integers(0, 2, n))
        metrics = detection_metrics(is_error, error_score)
        assert metrics["auroc"] == pytest.approx(roc_auc_score(is_error, error_score), abs=1e-12)
        assert auroc(is_error, error_score) == metrics["auroc"]
        assert metrics["aupr"] == pytest.approx(
            average_precision_score(is_error, error_score), abs=1e-12)
        fpr, tpr, _ = roc_curve(is_error, error_score, drop_intermediate=False)
        assert metrics["fpr_at_95_tpr"] == fpr[np.searchsorted(tpr, 0.95, side="left")]
        assert fpr_at_tpr(is_error, error_score, 0.8) == fpr[np.searchsorted(tpr, 0.8)]
        assert tpr_at_fpr(is_error, error_score, 0.1) == \
            tpr[np.searchsorted(fpr, 0.1, side="right") - 1]


def test_fpr_at_tpr_counts_thresholds_that_roc_curve_drops():
    # Twenty tie blocks of one error and one correct prediction: the ROC
    # points are collinear, and roc_curve's default keeps only the ends.
    is_error = np.tile([True, False], 20)
    error_score = np.repeat(np.arange(20), 2)
    assert fpr_at_tpr(is_error, error_score) == pytest.approx(0.95)
    assert tpr_at_fpr(is_error, error_score, 0.5) == pytest.approx(0.5)
    fpr, tpr, _ = roc_curve(is_error, error_score)
    assert fpr[np.searchsorted(tpr, 0.95)] == 1.0


@pytest.mark.parametrize("is_error", [np.zeros(6, bool), np.ones(6, bool)])
def test_detection_metrics_nan_only_where_undefined(is_error):
    metrics = detection_metrics(is_error, np.arange(6.0))
    assert set(metrics) == {"auroc", "aupr", "fpr_at_95_tpr", "tpr_at_5_fpr", "aurc", "eaurc",
                            "augrc"}
    for key in ("auroc", "aupr", "fpr_at_95_tpr", "tpr_at_5_fpr"):
        assert np.isnan(metrics[key])
    assert metrics["aurc"] == float(is_error[0]) and metrics["eaurc"] == 0.0
    assert np.isnan(auroc(is_error, np.arange(6.0)))


def test_detection_metrics_accept_integer_labels_and_infinite_scores():
    metrics = detection_metrics([0, 1, 1, 0], [-np.inf, np.inf, 2, 1])
    assert metrics["auroc"] == 1.0 and metrics["eaurc"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("is_error, error_score, match", [
    ([[True, False]], [[0.1, 0.2]], "1-D"),
    ([True, False], [[0.1], [0.2]], "1-D"),
    ([[True], [False]], [0.1, 0.2], "1-D"),
    ([True, False], [0.1, 0.2, 0.3], "same length"),
    ([], [], "empty"),
    ([0, 2, 1], [0.1, 0.2, 0.3], "boolean"),
    (["yes", "no"], [0.1, 0.2], "boolean"),
    ([True, False], [0.1, np.nan], "NaN"),
    ([True, False], ["a", "b"], "numeric"),
])
@pytest.mark.parametrize("metric", [detection_metrics, aurc, risk_coverage_curve, auroc])
def test_detection_metrics_reject_bad_input(metric, is_error, error_score, match):
    with pytest.raises(ValueError, match=match):
        metric(is_error, error_score)


# --------------------------------------------------------------- curve

def test_risk_coverage_curve_points_are_block_ends():
    is_error = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    error_score = np.array([2.0, 1.0, 2.0, 3.0, 1.0, 2.0])
    coverage, risk, thresholds = risk_coverage_curve(is_error, error_score)
    np.testing.assert_array_equal(thresholds, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(coverage, [2 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(risk, [0 / 2, 2 / 5, 3 / 6])


def test_risk_coverage_curve_is_consistent_with_the_areas():
    rng = np.random.default_rng(5)
    is_error = rng.random(300) < 0.2
    error_score = rng.normal(size=300) + is_error
    coverage, risk, _ = risk_coverage_curve(is_error, error_score)
    # Without ties, each sample is one point of weight 1/n.
    assert aurc(is_error, error_score) == pytest.approx(np.mean(risk), abs=1e-12)
    assert augrc(is_error, error_score) == pytest.approx(np.mean(risk * coverage), abs=1e-12)
    # With ties, the curve passes through the expected risk at each block end.
    is_error, error_score = random_tied(rng, 6)
    coverage, risk, _ = risk_coverage_curve(is_error, error_score)
    for c, r in zip(coverage, risk):
        n_accepted = round(c * 6)
        accepted = np.argsort(error_score, kind="stable")[:n_accepted]
        assert r == pytest.approx(is_error[accepted].mean(), abs=1e-12)


# --------------------------------------------------------------- bootstrap

def test_bootstrap_interval_reproduces_scipy_resamples():
    rng = np.random.default_rng(6)
    is_error = rng.random(200) < 0.2
    error_score = rng.normal(size=200) + is_error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)
        distribution = bootstrap(
            (np.arange(200),), lambda i: auroc(is_error[i], error_score[i]), n_resamples=100,
            method="percentile", vectorized=False, random_state=3,
        ).bootstrap_distribution
    expected = np.nanpercentile(distribution, [2.5, 97.5])
    low, high = bootstrap_interval(auroc, is_error, error_score, n_resamples=100,
                                   random_state=3)
    np.testing.assert_allclose([low, high], expected, rtol=0, atol=1e-15)
    assert bootstrap_interval(auroc, is_error, error_score, n_resamples=100,
                              random_state=4) != (low, high)


def test_bootstrap_interval_of_a_dict_statistic_matches_each_entry():
    rng = np.random.default_rng(7)
    is_error = rng.random(150) < 0.3
    error_score = rng.integers(0, 5, 150) + is_error
    intervals = bootstrap_interval(detection_metrics, is_error, error_score, n_resamples=50,
                                   random_state=1)
    assert set(intervals) == set(detection_metrics(is_error, error_score))
    for key in ("aurc", "auroc"):
        one_at_a_time = bootstrap_interval(
            lambda e, s, key=key: detection_metrics(e, s)[key], is_error, error_score,
            n_resamples=50, random_state=1)
        # AUROC, an exact sum, to the bit; AURC to the rounding of a sum in another order.
        expected = one_at_a_time if key == "auroc" else pytest.approx(one_at_a_time, rel=1e-12)
        assert intervals[key] == expected


def test_bootstrap_interval_of_one_resample_is_the_statistic_on_it():
    values = np.array([0.0, 1.0, 5.0, 2.0])
    resample = values[np.random.RandomState(2).randint(0, 4, 4)]
    assert bootstrap_interval(np.mean, values, n_resamples=1, random_state=2) == (
        pytest.approx(resample.mean()), pytest.approx(resample.mean()))
    intervals = bootstrap_interval(lambda v: {"max": v.max(), "min": v.min()}, values,
                                   n_resamples=1, random_state=2)
    assert intervals == {"max": (resample.max(), resample.max()),
                         "min": (resample.min(), resample.min())}


@pytest.mark.parametrize("arrays, kwargs, match", [
    ((np.ones(3), np.ones(4)), {}, "same length"),
    ((np.ones(3),), {"n_resamples": 0}, "n_resamples"),
    ((), {}, "at least one array"),
])
def test_bootstrap_interval_rejects_bad_input(arrays, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(np.mean, *arrays, **kwargs)


# --------------------------------------------------------------- RiskCoverageDisplay

@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_risk_coverage_display_from_predictions_draws_the_curve(ax):
    rng = np.random.default_rng(8)
    is_error = rng.random(80) < 0.25
    error_score = rng.integers(0, 10, 80) + is_error
    display = RiskCoverageDisplay.from_predictions(is_error, error_score, name="Res_min",
                                                   ax=ax, color="red", plot_optimal=True)
    coverage, risk, _ = risk_coverage_curve(is_error, error_score)
    np.testing.assert_array_equal(display.line_.get_xdata(), coverage)
    np.testing.assert_array_equal(display.line_.get_ydata(), risk)
    assert display.ax_ is ax and display.figure_ is ax.figure
    assert display.line_.get_color() == "red"
    area = aurc(is_error, error_score)
    assert display.aurc == area
    # In the tables' unit: AURC ×1000, one decimal.
    assert display.line_.get_label() == f"Res_min (AURC ×1000 = {1000 * area:.1f})"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"Res_min (AURC ×1000 = {1000 * area:.1f})", "optimal"]
    # The optimal curve: no error accepted until every correct prediction is.
    x, y = display.optimal_.get_xdata(), display.optimal_.get_ydata()
    rate = is_error.mean()
    np.testing.assert_allclose(y, np.maximum(0, (x - (1 - rate)) / x))


def test_risk_coverage_display_plot_uses_its_arguments(ax):
    display = RiskCoverageDisplay(coverage=np.array([0.5, 1.0]),
                                  selective_risk=np.array([0.0, 0.25]), name="a")
    assert display.plot(ax, name="b").line_.get_label() == "b"
    assert display.optimal_ is None
    display.plot(ax, linestyle=":")
    assert display.line_.get_label() == "a" and display.line_.get_linestyle() == ":"
    with pytest.raises(ValueError, match="one length"):
        RiskCoverageDisplay(coverage=np.array([0.5, 1.0]),
                            selective_risk=np.array([0.1])).plot(ax)


def test_risk_coverage_display_from_estimator_uses_max_softmax(ax, digits):
    X, y, X_test, y_test = digits
    X, X_test = X.reshape(len(X), -1), X_test.reshape(len(X_test), -1)
    clf = LogisticRegression(max_iter=200).fit(X[:300], y[:300])
    display = RiskCoverageDisplay.from_estimator(clf, X_test, y_test, ax=ax)
    coverage, risk, _ = risk_coverage_curve(clf.predict(X_test) != y_test,
                                            1 - clf.predict_proba(X_test).max(axis=1))
    np.testing.assert_array_equal(display.line_.get_xdata(), coverage)
    np.testing.assert_array_equal(display.line_.get_ydata(), risk)
    assert display.line_.get_label().startswith("LogisticRegression (AURC ×1000 = ")


class _Detector:
    """An estimator whose predict differs from its net's own prediction, like a corrector."""

    classes_ = np.array([10, 20])

    def predict_proba(self, X):
        return np.column_stack([X[:, 0], 1 - X[:, 0]])

    def predict_error_proba(self, X):
        return X[:, 1]

    def predict(self, X):
        return np.full(len(X), 20)


def test_risk_coverage_display_from_estimator_judges_the_nets_own_prediction(ax):
    X = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3], [0.3, 0.9]])
    y = np.array([10, 20, 20, 10])
    display = RiskCoverageDisplay.from_estimator(_Detector(), X, y, ax=ax, name="detector")
    # The net predicts 10, 10, 20, 20: wrong on the second and the fourth.
    _, risk, _ = risk_coverage_curve([False, True, False, True], X[:, 1])
    np.testing.assert_array_equal(display.line_.get_ydata(), risk)
    assert display.line_.get_label().startswith("detector")


def test_risk_coverage_display_from_resistance_classifier(ax, trained_cnn, digits):
    _, _, X, y = digits
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn),
                               attack=ResistanceAttack(max_iter=30, batch_size=128),
                               random_state=0).fit(X[:150], y[:150])
    display = RiskCoverageDisplay.from_estimator(clf, X[150:250], y[150:250], ax=ax)
    is_error = clf.classes_[clf.predict_proba(X[150:250]).argmax(axis=1)] != y[150:250]
    _, risk, _ = risk_coverage_curve(is_error, clf.predict_error_proba(X[150:250]))
    np.testing.assert_array_equal(display.line_.get_ydata(), risk)


def test_risk_coverage_display_from_estimator_needs_probabilities(ax):
    with pytest.raises(TypeError, match="predict_proba"):
        RiskCoverageDisplay.from_estimator(object(), np.zeros((2, 2)), [0, 1], ax=ax)


def test_plot_roc_curves_gives_every_curve_its_own_look():
    # Twelve detectors and a ten-colour cycle: the two past ten come again dashed.
    rng = np.random.default_rng(3)
    is_error = rng.random(60) < 0.3
    scores = {f"score {i}": rng.random(60) for i in range(12)}
    fig = plot_roc_curves(is_error, scores)
    curves = [line for line in fig.axes[0].get_lines() if line.get_label() in
              {f"{name} (AUROC {roc_auc_score(is_error, score):.3f})"
               for name, score in scores.items()}]
    looks = {(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle())
             for line in curves}
    assert len(curves) == len(looks) == 12
    ax = fig.axes[0]
    assert "Positive label" not in ax.get_xlabel() + ax.get_ylabel()
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1
    plt.close(fig)


# --------------------------------------------------------------- histograms

def test_plot_histograms_log_panels_use_log_bins_and_leave_out_non_positive_values():
    rng = np.random.default_rng(9)
    heavy = np.r_[10.0 ** rng.uniform(-10, 0, 300), 0.0, 0.0]
    res = rng.normal(size=302)
    is_error = rng.random(302) < 0.2
    fig = plot_histograms([heavy, res], is_error, ["1 - max-softmax", "res"],
                          log_panels={"1 - max-softmax"})
    log_ax, linear_ax = fig.axes
    assert log_ax.get_xscale() == "log" and linear_ax.get_xscale() == "linear"
    assert log_ax.get_xlabel() == "1 - max-softmax (2 values <= 0 not shown)"
    edges = np.unique([p.get_x() for p in log_ax.patches])
    np.testing.assert_allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))
    # Both groups' bars, heights as a density of log10(x), each summing to 1.
    width = np.log10(edges[1] / edges[0])
    heights = np.array([p.get_height() for p in log_ax.patches]).reshape(2, -1)
    np.testing.assert_allclose(heights.sum(axis=1) * width, 1)
    plt.close(fig)


@pytest.mark.parametrize("values, log_panels, match", [
    ([np.ones(4)], {"other"}, "do not exist"),
    ([-np.ones(4)], {"a"}, "no positive value"),
])
def test_plot_histograms_rejects_bad_log_panels(values, log_panels, match):
    with pytest.raises(ValueError, match=match):
        plot_histograms(values, np.zeros(4, bool), ["a"], log_panels=log_panels)
    plt.close("all")
