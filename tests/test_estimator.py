import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from skorch import NeuralNetRegressor
from torch import nn

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf._estimator import _best_threshold
from resistclf.models import SimpleCNN, make_net

from .conftest import tiny_cnn_net

FAST = ResistanceAttack(max_iter=60, batch_size=128)


@pytest.fixture(scope="module")
def fitted(trained_cnn, digits):
    """A ResistanceClassifier on the trained CNN, its detector fit on test half A."""
    _, _, X, y = digits
    return ResistanceClassifier(FrozenEstimator(trained_cnn), attack=FAST, random_state=0).fit(
        X[:450], y[:450]
    )


def test_classifier_prefit_outputs(fitted, trained_cnn, digits):
    _, _, X, y = digits
    X, y = X[450:], y[450:]
    features = fitted.transform(X)
    assert features.shape == (len(X), 3) and features.dtype == np.float64
    assert list(fitted.get_feature_names_out()) == ["res_n", "res_max", "res_min"]
    assert fitted.net_.estimator is trained_cnn
    np.testing.assert_array_equal(fitted.classes_, np.arange(10))
    proba = fitted.predict_proba(X)
    np.testing.assert_allclose(proba, trained_cnn.predict_proba(X), rtol=1e-4, atol=1e-6)
    error_proba = fitted.predict_error_proba(X)
    assert error_proba.shape == (len(X),) and np.all((error_proba >= 0) & (error_proba <= 1))
    # The detector ranks the net's errors above its correct predictions.
    net_wrong = proba.argmax(axis=1) != y
    assert error_proba[net_wrong].mean() > error_proba[~net_wrong].mean()
    assert 0 <= fitted.score(X, y) <= 1


def test_classifier_predict_corrects_only_flagged_samples(fitted, digits):
    _, _, X, _ = digits
    X = X[450:]
    net_pred = fitted.predict_proba(X).argmax(axis=1)
    results = fitted.attack_results(X)
    flagged = fitted.predict_error_proba(X) >= fitted.threshold_
    expected = np.where(flagged, results.adversarial_class, net_pred)
    np.testing.assert_array_equal(fitted.predict(X), expected)


def test_classifier_fixed_threshold_zero_corrects_every_flipped_sample(trained_cnn, digits):
    _, _, X, y = digits
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=FAST, threshold=0.0)
    clf.fit(X[:200], y[:200])
    results = clf.attack_results(X[200:300])
    np.testing.assert_array_equal(clf.predict(X[200:300]), results.adversarial_class)


def test_classifier_predict_topk_structure(fitted, digits):
    _, _, X, _ = digits
    X = X[450:500]
    ranking = np.argsort(-fitted.predict_proba(X), axis=1)
    top1 = fitted.predict_topk(X, k=1)
    np.testing.assert_array_equal(top1[:, 0], ranking[:, 0])
    top2 = fitted.predict_topk(X, k=2)
    results = fitted.attack_results(X)
    np.testing.assert_array_equal(top2[:, 0], ranking[:, 0])
    flipped = results.flipped
    np.testing.assert_array_equal(top2[flipped, 1], results.adversarial_class[flipped])
    # Unflipped samples fall back on the net's runner-up.
    np.testing.assert_array_equal(top2[~flipped, 1], ranking[~flipped, 1])
    top5 = fitted.predict_topk(X, k=5)
    assert top5.shape == (len(X), 5)
    assert all(len(set(row)) == 5 for row in top5)
    np.testing.assert_array_equal(top5[:, :2], top2)
    top10 = fitted.predict_topk(X, k=10)
    assert all(sorted(row) == list(range(10)) for row in top10)


def test_classifier_trains_unfitted_net_with_holdout(digits):
    X, y, X_test, y_test = digits
    net = tiny_cnn_net()
    clf = ResistanceClassifier(net, attack=FAST, random_state=0).fit(X, y)
    assert not hasattr(net, "module_"), "the given net must stay untouched"
    assert clf.net_ is not net and clf.net_.initialized_
    # The net trained on the 80% that was not held out for the detector.
    assert len(clf.net_.history) == clf.net_.max_epochs
    assert clf.score(X_test, y_test) > 0.8


def test_classifier_cross_fitting(digits):
    X, y, X_test, y_test = digits
    clf = ResistanceClassifier(tiny_cnn_net(), attack=FAST, cv=3, random_state=0)
    clf.fit(X[:450], y[:450])
    assert clf.score(X_test, y_test) > 0.8
    assert clf.predict_topk(X_test[:5], k=3).shape == (5, 3)


def test_classifier_same_seed_same_numbers(digits):
    X, y, X_test, _ = digits
    fits = [
        ResistanceClassifier(tiny_cnn_net(), attack=FAST, random_state=3).fit(X, y)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(fits[0].transform(X_test[:40]), fits[1].transform(X_test[:40]))
    np.testing.assert_array_equal(
        fits[0].predict_error_proba(X_test[:40]), fits[1].predict_error_proba(X_test[:40])
    )
    assert fits[0].threshold_ == fits[1].threshold_


def test_classifier_accepts_torch_module_and_string_labels(trained_cnn, digits):
    _, _, X, y = digits
    clf = ResistanceClassifier(trained_cnn.module_, attack=FAST).fit(X[:200], y[:200])
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.predict(X[:5]).shape == (5,)

    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    named = ResistanceClassifier(tiny_cnn_net(), attack=FAST, random_state=0)
    named.fit(X[:400], names[y[:400]])
    np.testing.assert_array_equal(named.net_.classes_, np.unique(names))  # the net knows them
    assert set(named.predict(X[400:420])) <= set(names)
    assert set(named.predict_topk(X[400:420], k=3).ravel()) <= set(names)


class _ProbaCNN(SimpleCNN):
    def forward(self, x):
        return super().forward(x).softmax(dim=1)


def test_classifier_net_with_probability_outputs(digits):
    X, y, X_test, y_test = digits
    # skorch's default criterion, NLLLoss, expects the module to return probabilities.
    net = make_net(_ProbaCNN, max_epochs=30, lr=1e-2, image_size=8, channels=(8, 16), hidden=64)
    net.set_params(criterion=nn.NLLLoss)
    torch.manual_seed(0)
    net.fit(X, y)
    clf = ResistanceClassifier(FrozenEstimator(net), attack=FAST).fit(X_test[:200], y_test[:200])
    np.testing.assert_allclose(clf.predict_proba(X_test[:10]), net.predict_proba(X_test[:10]),
                               rtol=1e-4, atol=1e-6)
    assert clf.attack_results(X_test[:50]).flipped.any()


def test_classifier_does_not_modify_inputs_and_accepts_readonly(fitted, digits):
    _, _, X, y = digits
    X, y = X[:100].copy(), y[:100].copy()
    X.flags.writeable = False
    y.flags.writeable = False
    X_before, y_before = X.copy(), y.copy()
    clf = clone(fitted).fit(X, y)
    clf.predict(X)
    clf.transform(X)
    clf.predict_topk(X, k=3)
    clf.predict(X[::-1])  # negative strides
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def test_classifier_pickle_round_trip(fitted, digits):
    _, _, X, _ = digits
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X[:30]), fitted.predict(X[:30]))
    np.testing.assert_array_equal(restored.transform(X[:30]), fitted.transform(X[:30]))


def test_classifier_cross_val_score_and_grid_search(trained_cnn, digits):
    _, _, X, y = digits
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=FAST, random_state=0)
    scores = cross_val_score(clf, X[:300], y[:300], cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.8)
    search = GridSearchCV(clf, {"attack__step_size": [0.1, 0.2]}, cv=2).fit(X[:300], y[:300])
    assert search.best_params_["attack__step_size"] in (0.1, 0.2)
    assert search.best_estimator_.net_.estimator is trained_cnn


def test_classifier_in_pipeline(trained_cnn, digits):
    _, _, X, y = digits
    frozen = FrozenEstimator(trained_cnn)
    as_final_step = make_pipeline(FunctionTransformer(), ResistanceClassifier(frozen, attack=FAST))
    assert as_final_step.fit(X[:200], y[:200]).score(X[200:300], y[200:300]) > 0.8
    # As a transformer: resistance features feed another model.
    as_features = make_pipeline(ResistanceClassifier(frozen, attack=FAST), LogisticRegression())
    assert as_features.fit(X[:200], y[:200]).predict(X[200:210]).shape == (10,)


def test_classifier_clone_of_trained_skorch_net_warns(trained_cnn):
    with pytest.warns(UserWarning, match="FrozenEstimator"):
        clone(ResistanceClassifier(trained_cnn))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone(ResistanceClassifier(FrozenEstimator(trained_cnn)))
        clone(ResistanceClassifier(tiny_cnn_net()))


def test_best_threshold_maximises_accuracy():
    proba = np.array([0.9, 0.8, 0.8, 0.4, 0.1])
    # Correcting the top sample gains one, the tied pair nets -1, the next +1.
    assert _best_threshold(proba, np.array([1, -1, 0, 1, 0])) == pytest.approx((0.9 + 0.8) / 2)
    assert _best_threshold(proba, np.array([1, 1, 0, 1, -1])) == pytest.approx((0.4 + 0.1) / 2)
    assert _best_threshold(proba, np.array([-1, 0, 0, 0, 0])) == np.inf


def test_classifier_warns_when_fresh_samples_have_no_errors(trained_cnn, digits):
    _, _, X, y = digits
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=FAST)
    correct = trained_cnn.predict(X) == y
    with pytest.warns(UserWarning, match="all correct"):
        clf.fit(X[correct][:50], y[correct][:50])
    np.testing.assert_array_equal(clf.predict_error_proba(X[:5]), 0.0)
    assert clf.threshold_ == np.inf


class _Scalar(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(dim=1)


@pytest.mark.parametrize(
    "make_X, match",
    [
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), "NaN"),
        (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), "infinity"),
        (lambda X: X[:, 0, 0, 0], "2D array"),
        (lambda X: X[:0], "0 sample"),
        (lambda X: X[:, :, :4, :4], "cannot take input of shape"),
        (lambda X: np.concatenate([X, X], axis=1),
         (r"X has images with 2 channels \(samples of shape \(2, 8, 8\)\), but "
          r"ResistanceClassifier was fitted on images with 1 channel \(samples of shape "
          r"\(1, 8, 8\)\)")),
        (lambda X: X.reshape(len(X), -1),
         (r"X has samples of shape \(64,\), but ResistanceClassifier was fitted on samples "
          r"of shape \(1, 8, 8\): give X the same number of dimensions")),
        (lambda X: (X * 255).astype(np.uint8),
         "X holds uint8 values, but the attack needs floating-point pixels"),
    ],
    ids=["nan", "inf", "1d", "empty", "wrong-image-size", "wrong-channels", "flattened",
         "uint8-images"],
)
def test_classifier_bad_X_raises(fitted, digits, make_X, match):
    _, _, X, _ = digits
    with pytest.raises(ValueError, match=match):
        fitted.predict(make_X(X[:10]))


@pytest.mark.parametrize(
    "net, y_change, match, error",
    [
        ("cnn", lambda y: y[:-1], "inconsistent numbers of samples", ValueError),
        ("cnn", lambda y: np.where(np.arange(len(y)) == 0, 42, y), "labels the net does not know",
         ValueError),
        ("cnn", lambda y: y + 0.5, "Unknown label type", ValueError),
        (nn.Linear(64, 1), lambda y: y, "n_classes >= 2", ValueError),
        (nn.Sequential(nn.Flatten(), _Scalar()), lambda y: y, "one score per class", ValueError),
        (LogisticRegression(), lambda y: y, "net must be", TypeError),
        (NeuralNetRegressor(nn.Linear(64, 1)), lambda y: y, "must be a classifier", TypeError),
        ("string", lambda y: y, "net must be", TypeError),
    ],
    ids=["y-length", "unknown-label", "continuous-y", "one-output", "1d-output", "sklearn-model",
         "regressor", "string"],
)
def test_classifier_bad_fit_input_raises(trained_cnn, digits, net, y_change, match, error):
    _, _, X, y = digits
    net = FrozenEstimator(trained_cnn) if isinstance(net, str) and net == "cnn" else net
    if isinstance(net, nn.Module):
        X = X.reshape(len(X), -1)
    with pytest.raises(error, match=match):
        ResistanceClassifier(net, attack=FAST).fit(X[:40], y_change(y[:40]))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"cv": 1}, "cv"),
        ({"cv": 1.5}, "cv"),
        ({"cv": "always"}, "cv"),
        ({"threshold": 2.0}, "threshold"),
        ({"net_output": "scores"}, "net_output"),
        ({"attack": "pgd"}, "attack"),
        ({"detector": "lr"}, "detector"),
        ({"attack": ResistanceAttack(step_size=0)}, "step_size"),
    ],
)
def test_classifier_invalid_params_raise(trained_cnn, digits, params, match):
    _, _, X, y = digits
    with pytest.raises(ValueError, match=match):
        ResistanceClassifier(FrozenEstimator(trained_cnn), **params).fit(X[:20], y[:20])


def test_classifier_training_needs_trainable_net(trained_cnn, digits):
    _, _, X, y = digits
    with pytest.raises(ValueError, match="cannot be trained here"):
        ResistanceClassifier(trained_cnn.module_, cv=0.2).fit(X[:40], y[:40])
    with pytest.raises(NotFittedError, match="not initialized"):
        ResistanceClassifier(tiny_cnn_net(), cv="prefit").fit(X[:40], y[:40])
    with pytest.raises(ValueError, match="only one class"):
        ResistanceClassifier(tiny_cnn_net()).fit(X[:40], np.zeros(40, dtype=int))


def test_classifier_module_output_must_match_classes(digits):
    X, y, _, _ = digits
    three_classes = y[:200] % 3
    with pytest.raises(ValueError, match="returns 10 scores per sample, but the net has 3"):
        ResistanceClassifier(tiny_cnn_net(max_epochs=1), attack=FAST).fit(X[:200], three_classes)


def test_classifier_predict_before_fit_raises(trained_cnn, digits):
    _, _, X, _ = digits
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn))
    for method in ["predict", "transform", "predict_proba", "predict_error_proba",
                   "predict_topk"]:
        with pytest.raises(NotFittedError):
            getattr(clf, method)(X[:3])


@pytest.mark.parametrize("k", [0, 11, 2.5, -1])
def test_classifier_predict_topk_k_out_of_range_raises(fitted, digits, k):
    _, _, X, _ = digits
    with pytest.raises(ValueError, match="k must be an integer from 1 to n_classes=10"):
        fitted.predict_topk(X[:3], k=k)
