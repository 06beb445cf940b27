"""Inference that fits how the data was drawn: the cluster bootstrap, paired tests, TOST, Holm."""

import numpy as np
import pytest
import scipy.stats

from resistclf.metrics import (
    DetectionMetric,
    Mean,
    MeanDifference,
    MetricDifference,
    auroc,
    bootstrap_distribution,
    bootstrap_interval,
    detection_metrics,
    equivalence_test,
    holm,
    holm_family,
    mcnemar_test,
    paired_difference,
    verdict,
)


def test_bootstrap_interval_groups_of_identical_copies_as_wide_as_the_rows_alone():
    sample = np.random.RandomState(0).normal(size=60)
    copies = np.repeat(sample, 16)
    source = np.repeat(np.arange(60), 16)
    alone = bootstrap_interval(np.mean, sample, n_resamples=400)
    grouped = bootstrap_interval(np.mean, copies, groups=source, n_resamples=400)
    as_rows = bootstrap_interval(np.mean, copies, n_resamples=400)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    # Drawing whole sources draws the same means as drawing the rows alone.
    assert grouped == pytest.approx(alone, rel=1e-12)
    # Counting each source 16 times makes the interval about four times too narrow.
    assert width(as_rows) < width(alone) / 3


def test_bootstrap_interval_groups_need_not_be_sorted_or_numbers():
    rng = np.random.RandomState(1)
    sample = rng.normal(size=30)
    labels = np.array([f"image-{i}" for i in range(30)])
    order = rng.permutation(60)
    rows, source = np.tile(sample, 2)[order], np.tile(labels, 2)[order]
    values = bootstrap_distribution(np.mean, rows, groups=source, n_resamples=50)
    # Every resample holds both copies of each drawn source: its mean is a mean of sources.
    reference = bootstrap_distribution(np.mean, sample, groups=labels, n_resamples=50)
    assert values == pytest.approx(reference, rel=1e-12)


def test_bootstrap_distribution_draws_every_row_of_a_drawn_group():
    source = np.array([0, 0, 0, 1, 2, 2])
    sizes = bootstrap_distribution(len, source, groups=source, n_resamples=200)
    counts = bootstrap_distribution(lambda g: np.bincount(g, minlength=3)[0] % 3, source,
                                    groups=source, n_resamples=200)
    assert set(np.unique(sizes)) <= {3, 4, 5, 6, 7, 8, 9}
    assert (counts == 0).all()


def test_paired_difference_is_narrower_than_the_marginal_intervals():
    rng = np.random.RandomState(2)
    is_error = rng.rand(400) < 0.2
    shared = rng.normal(size=400) + 1.5 * is_error
    a, b = shared + 0.3 * rng.normal(size=400), shared + 0.3 * rng.normal(size=400) + 0.4 * is_error
    paired = paired_difference(lambda e, x, y: auroc(e, y) - auroc(e, x), is_error, a, b,
                               n_resamples=300)
    ci_a = bootstrap_interval(auroc, is_error, a, n_resamples=300)
    ci_b = bootstrap_interval(auroc, is_error, b, n_resamples=300)
    assert paired["difference"] == pytest.approx(auroc(is_error, b) - auroc(is_error, a))
    assert paired["ci"][0] > 0 and paired["p_value"] < 0.05
    # The marginal intervals overlap, although the paired one excludes 0.
    assert ci_a[1] > ci_b[0]


@pytest.mark.parametrize("shift, excluded", [(0.0, False), (0.5, True)])
def test_paired_difference_p_value_agrees_with_its_interval(shift, excluded):
    rng = np.random.RandomState(3)
    x = rng.normal(size=200)
    result = paired_difference(lambda a, b: np.mean(b - a), x, x + shift + 0.3 * rng.normal(
        size=200), n_resamples=500)
    low, high = result["ci"]
    assert (low > 0 or high < 0) == excluded
    assert (result["p_value"] < 0.05) == excluded


def test_equivalence_test_fails_a_noisy_method_whose_difference_contains_zero():
    rng = np.random.RandomState(4)
    exact = rng.normal(size=300)
    precise, noisy = exact + 0.01 * rng.normal(size=300), exact + 2.0 * rng.normal(size=300)
    difference = lambda a, b: np.mean(b) - np.mean(a)  # noqa: E731
    for_noisy = paired_difference(difference, exact, noisy, n_resamples=400)
    assert for_noisy["ci"][0] < 0 < for_noisy["ci"][1]  # "no difference found"
    assert not equivalence_test(difference, exact, noisy, margin=0.05,
                                n_resamples=400)["equivalent"]
    tost = equivalence_test(difference, exact, precise, margin=0.05, n_resamples=400)
    assert tost["equivalent"] and tost["margin"] == 0.05
    assert -0.05 < tost["ci"][0] <= tost["ci"][1] < 0.05


def test_equivalence_test_uses_the_90_percent_interval_and_a_margin_per_key():
    rng = np.random.RandomState(5)
    a = rng.normal(size=100)
    b = a + 0.02 + 0.05 * rng.normal(size=100)
    both = lambda x, y: {"mean": np.mean(y - x), "scaled": 10 * np.mean(y - x)}  # noqa: E731
    result = equivalence_test(both, a, b, margin={"mean": 0.1, "scaled": 0.1},
                              n_resamples=300)
    ninety = paired_difference(both, a, b, confidence=0.9, n_resamples=300)
    assert result["mean"]["ci"] == ninety["mean"]["ci"]
    assert result["mean"]["equivalent"] and not result["scaled"]["equivalent"]


def test_mcnemar_test_is_the_exact_binomial_test_on_discordant_pairs():
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 5)
    result = mcnemar_test(a, b)
    assert (result["a_only"], result["b_only"], result["difference"]) == (10, 2, 8)
    assert result["p_value"] == pytest.approx(scipy.stats.binomtest(10, 12).pvalue)
    assert result["p_value"] == pytest.approx(2 * sum(scipy.stats.binom.pmf(k, 12, 0.5)
                                                      for k in range(3)))
    assert mcnemar_test(a, a)["p_value"] == 1.0


def test_holm_adjusts_step_down_and_leaves_nan_out():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm({"a": 0.2, "b": np.nan, "c": 0.01})
    assert adjusted["a"] == pytest.approx(0.2) and adjusted["c"] == pytest.approx(0.02)
    assert np.isnan(adjusted["b"])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]  # capped at 1


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_detection_metrics_on_resamples_equal_the_metrics_of_each_resample(seed, grouped):
    # Tied scores, a resample or two without errors, and (grouped) rows sharing a source.
    rng = np.random.RandomState(seed)
    n = rng.randint(8, 300)
    is_error = rng.rand(n) < rng.uniform(0.03, 0.5)
    score = np.round(rng.rand(n) + is_error * rng.rand(), rng.randint(1, 3))
    boot = {"groups": rng.randint(0, n // 3 + 1, n) if grouped else None, "n_resamples": 60,
            "random_state": seed}
    one_at_a_time = bootstrap_distribution(lambda e, s: detection_metrics(e, s), is_error,
                                           score, **boot)
    together = bootstrap_distribution(detection_metrics, is_error, score, **boot)
    assert set(together) == set(one_at_a_time)
    for key, expected in one_at_a_time.items():
        # Exact sums of integers and chosen points agree to the bit; the other metrics
        # to the rounding of a sum taken in another order (E-AURC, a difference of two
        # near-equal areas, to that rounding of the areas).
        if key in ("auroc", "augrc", "fpr_at_95_tpr", "tpr_at_5_fpr"):
            np.testing.assert_array_equal(together[key], expected, err_msg=key)
        else:
            np.testing.assert_allclose(together[key], expected, rtol=1e-12, atol=1e-15,
                                       err_msg=key)


def test_metric_difference_is_the_paired_difference_of_the_metrics():
    rng = np.random.RandomState(7)
    is_error = rng.rand(150) < 0.2
    a, b = is_error + rng.rand(150), np.round(rng.rand(150), 1)
    by_hand = paired_difference(
        lambda e, x, y: {key: detection_metrics(e, x)[key] - detection_metrics(e, y)[key]
                         for key in ("auroc", "aurc")}, is_error, a, b, n_resamples=80)
    fast = paired_difference(MetricDifference(("auroc", "aurc")), is_error, a, b,
                             n_resamples=80)
    assert fast["auroc"] == by_hand["auroc"]
    assert fast["aurc"]["ci"] == pytest.approx(by_hand["aurc"]["ci"], rel=1e-12)
    assert MetricDifference("auroc")(is_error, a, b) == auroc(is_error, a) - auroc(is_error, b)


@pytest.mark.parametrize("difference, p_value, word", [
    (+0.1, 0.01, "adds"), (-0.1, 0.01, "loses"), (+0.1, 0.05, "no difference found"),
    (-0.1, 0.2, "no difference found"), (+0.1, np.nan, "n/a"),
])
def test_verdict_needs_a_significant_test_for_a_word(difference, p_value, word):
    assert verdict(difference, p_value, words=("adds", "loses")) == word


def test_holm_family_adjusts_then_judges_each_test_in_its_own_direction():
    tests = {"auroc": {"difference": 0.02, "p_value": 0.02, "metric": "auroc"},
             "aurc": {"difference": 0.001, "p_value": 0.01, "metric": "aurc"},
             "top-2": {"difference": 0.01, "p_value": 0.04, "metric": "rate"}}
    holm_family(tests, favours_a=lambda test: test["metric"] != "aurc")
    assert [tests[k]["p_holm"] for k in tests] == pytest.approx([0.04, 0.03, 0.04])
    # A higher AURC is worse: its positive difference makes resistance the worse method.
    assert [tests[k]["verdict"] for k in tests] == ["better", "worse", "better"]
    holm_family(tests := {"a": {"difference": 1.0, "p_value": 0.03},
                          "b": {"difference": 1.0, "p_value": 0.04}})
    assert tests["a"]["verdict"] == "no difference found"  # 0.06 after Holm


def test_detection_metric_gives_the_metrics_asked_for_on_every_resample():
    rng = np.random.RandomState(3)
    is_error = rng.rand(120) < 0.25
    score = np.round(is_error * 0.4 + rng.rand(120), 1)
    keys = ("aurc", "tpr_at_5_fpr")
    assert DetectionMetric("auroc")(is_error, score) == auroc(is_error, score)
    assert DetectionMetric(keys)(is_error, score) == {
        key: detection_metrics(is_error, score)[key] for key in keys}
    chosen = bootstrap_distribution(DetectionMetric(keys), is_error, score, n_resamples=40)
    every = bootstrap_distribution(detection_metrics, is_error, score, n_resamples=40)
    assert set(chosen) == set(keys)
    np.testing.assert_array_equal(chosen["tpr_at_5_fpr"], every["tpr_at_5_fpr"])
    np.testing.assert_allclose(chosen["aurc"], every["aurc"], rtol=1e-12)



@pytest.mark.parametrize("grouped", [False, True])
def test_mean_statistics_equal_np_mean_on_every_resample(grouped):
    rng = np.random.RandomState(4)
    a, b = rng.rand(90) < 0.6, rng.rand(90) < 0.4
    boot = {"groups": rng.randint(0, 30, 90) if grouped else None, "n_resamples": 50}
    by_hand = bootstrap_distribution(lambda x: np.mean(x), a, **boot)
    np.testing.assert_array_equal(bootstrap_distribution(Mean(), a, **boot), by_hand)
    paired = bootstrap_distribution(lambda x, y: np.mean(x) - np.mean(y), a, b, **boot)
    np.testing.assert_array_equal(bootstrap_distribution(MeanDifference(), a, b, **boot),
                                  paired)
    scores = rng.rand(90)
    np.testing.assert_allclose(bootstrap_distribution(Mean(), scores, **boot),
                               bootstrap_distribution(lambda x: np.mean(x), scores, **boot),
                               rtol=1e-13)
    assert Mean()(a) == np.mean(a) and MeanDifference()(a, b) == np.mean(a) - np.mean(b)
