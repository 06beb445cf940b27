"""Invariants checked with Hypothesis: sample order, batch composition, inputs, label types.

The metrics' invariants are in test_metrics.py. Examples here run the attack, so there are few
of them and no deadline.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.frozen import FrozenEstimator

from resistclf import ResistanceAttack, ResistanceClassifier

from .test_attack_reference import small_mlp_and_images
from .test_estimator_cases import _Rule, line_net, moved_to, on_line, predicted

FIELDS = ["res_n", "res_max", "res_min", "res_mean", "flipped", "adversarial_class", "c0",
          "conf0"]
FEW = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
ATTACK = ResistanceAttack(max_iter=60, step_size=0.3, batch_size=8)


@pytest.fixture(scope="module")
def mlp():
    return small_mlp_and_images()


@FEW
@given(st.permutations(range(12)), st.integers(1, 12))
def test_attack_per_image_results_do_not_depend_on_order_or_company(mlp, order, count):
    # Bit for bit: the attack runs fixed-shape batches (see ResistanceAttack's Notes).
    module, X = mlp
    order = np.array(order)
    full = ATTACK(module, X)
    some = ATTACK(module, X[order[:count]])
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(some, name), getattr(full, name)[order[:count]],
                                      err_msg=name)


@pytest.fixture(scope="module")
def fitted(mlp):
    """A classifier on the MLP, with its features and predictions for all twelve images."""
    module, X = mlp
    clf = ResistanceClassifier(module, attack=ATTACK, threshold=0.5).fit(X.numpy(),
                                                                          np.arange(12) % 6)
    return clf, clf.transform(X.numpy()), clf.predict(X.numpy())


@FEW
@given(st.permutations(range(12)), st.integers(1, 12))
def test_classifier_features_do_not_depend_on_batch_composition(mlp, fitted, order, count):
    (clf, features, prediction), X = fitted, mlp[1].numpy()
    order = np.array(order)[:count]
    np.testing.assert_array_equal(clf.transform(X[order]), features[order])
    np.testing.assert_array_equal(clf.predict(X[order]), prediction[order])


@FEW
@given(st.sampled_from([np.float32, np.float64]), st.booleans(), st.booleans())
def test_inputs_are_never_modified(mlp, dtype, readonly, reversed_):
    module, X = mlp
    X = X.numpy().astype(dtype)
    y = np.arange(12) % 6
    X, y = (X[::-1], y[::-1]) if reversed_ else (X.copy(), y.copy())
    X.flags.writeable = y.flags.writeable = not readonly
    X_before, y_before = X.copy(), y.copy()
    tensor = torch.tensor(np.ascontiguousarray(X))
    tensor_before = tensor.clone()
    attack = ResistanceAttack(max_iter=10, batch_size=12)
    attack(module.to(tensor.dtype), tensor)
    module.float()
    assert torch.equal(tensor, tensor_before)
    clf = ResistanceClassifier(module, attack=attack).fit(X, y)
    clf.predict(X)
    clf.transform(X)
    clf.predict_topk(X, k=3)
    clf.predict_proba(X)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def _distinct(values, dtype):
    return np.array(values, dtype=dtype)


integer_labels = st.sampled_from(["int8", "uint8", "int16", "int32", "int64", "uint64"]).flatmap(
    lambda dtype: st.lists(st.integers(int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)),
                           min_size=3, max_size=3, unique=True).map(
        lambda values: _distinct(values, dtype)))
float_labels = st.sampled_from(["float32", "float64"]).flatmap(
    lambda dtype: st.lists(st.integers(-2**20, 2**20), min_size=3, max_size=3,
                           unique=True).map(lambda values: _distinct(values, dtype)))
text_labels = st.lists(st.text(max_size=4), min_size=3, max_size=3, unique=True).flatmap(
    lambda values: st.sampled_from([_distinct(values, str), _distinct(values, object)]))


@FEW
@given(st.one_of(integer_labels, float_labels, text_labels), st.booleans())
def test_classifier_labels_of_any_dtype_round_trip(labels, prefit):
    labels = np.sort(labels)  # class k of the line net is the k-th smallest label
    s = np.linspace(-3, 3, 50)
    X = on_line(s)
    y = predicted(s)
    y[np.abs(s) > 2.6] = 2 - y[np.abs(s) > 2.6]  # a few errors, so that the detector is fit
    y = labels[y]
    attack = ResistanceAttack(max_iter=40, step_size=0.25, batch_size=64)
    # Threshold 0 with P(error) = 1 / Res_min > 0: every sample is corrected.
    if prefit:
        net = FrozenEstimator(line_net(cuts=(-1.0, 1.0), classes=list(labels)))
    else:
        net = line_net()
    clf = ResistanceClassifier(net, attack=attack, detector=_Rule(), features=("res_min",),
                               threshold=0.0, cv="prefit" if prefit else 0.3, random_state=0)
    clf.fit(X, y)
    assert list(clf.classes_) == list(labels)
    cuts = tuple(clf.net_.module_.cuts.detach().numpy().astype(float)) if not prefit \
        else (-1.0, 1.0)
    X_test = on_line(np.array([-2.5, -1.5, -0.6, 0.5, 1.4, 2.2]))
    s_test = X_test[:, 0].astype(float)
    prediction = clf.predict(X_test)
    assert list(prediction) == list(labels[moved_to(s_test, cuts)])
    topk = clf.predict_topk(X_test, k=2)
    assert list(topk[:, 0]) == list(labels[predicted(s_test, cuts)])
    if not prefit:
        assert prediction.dtype == y.dtype and topk.dtype == y.dtype
