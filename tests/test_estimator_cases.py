"""ResistanceClassifier on cases whose answers are known by hand.

The net is three classes on a line (``_Line``): class 0 left of the first cut, 2 right of the
second, 1 between. Which samples it gets wrong, and the class the attack moves each one to (the
neighbouring class on the side of the nearer cut), follow from the sample's position alone.
``_LineNet`` "trains" by putting the cuts halfway between the class means of its training
samples, so the nets cross-fitting trains are known too.
"""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, PredefinedSplit, ShuffleSplit
from sklearn.pipeline import Pipeline
from skorch import NeuralNetClassifier
from torch import nn

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier, make_detector
from resistclf._estimator import _best_threshold

from .conftest import tiny_cnn_net

LABELS = np.array(["left", "middle", "right"])
ATTACK = ResistanceAttack(max_iter=40, step_size=0.25, batch_size=64)
#: Training sets seen by _LineNet.fit and calls seen by _Logged, in order; cleared per test.
TRAINED, LOG = [], []


class _Line(nn.Module):
    """Logits (-k (s - a), 0, k (s - b)) of the first input feature s, cuts a < b."""

    def __init__(self, cuts=(-1.0, 1.0), sharpness=10.0):
        super().__init__()
        self.cuts = nn.Parameter(torch.tensor(cuts, dtype=torch.float32))
        self.sharpness = sharpness

    def forward(self, x):
        s, (a, b), k = x[:, 0], self.cuts, self.sharpness
        return torch.stack([-k * (s - a), torch.zeros_like(s), k * (s - b)], dim=1)


def cuts_for(s, y):
    """The cuts _LineNet learns: halfway between the means of neighbouring classes.

    An outer class without samples is put 2 beyond the middle class's mean.
    """
    means = [s[y == k].mean() if np.any(y == k) else np.nan for k in range(3)]
    means[0] = means[1] - 2 if np.isnan(means[0]) else means[0]
    means[2] = means[1] + 2 if np.isnan(means[2]) else means[2]
    return (means[0] + means[1]) / 2, (means[1] + means[2]) / 2


class _LineNet(NeuralNetClassifier):
    """A skorch net whose fit sets the cuts from the data (see ``cuts_for``), at once."""

    def fit(self, X, y, **fit_params):
        if not self.initialized_:
            self.initialize()
        s, y = np.asarray(X)[:, 0].astype(float), np.asarray(y)
        with torch.no_grad():
            self.module_.cuts.copy_(torch.tensor(cuts_for(s, y)))
        TRAINED.append(s)
        return self


def line_net(cuts=None, **params):
    net = _LineNet(_Line, **{"criterion": nn.CrossEntropyLoss, "classes": list(LABELS),
                             **params})
    if cuts is not None:
        net.initialize()
        with torch.no_grad():
            net.module_.cuts.copy_(torch.tensor(cuts))
    return net


def on_line(s):
    return np.column_stack([s, np.zeros_like(s)]).astype(np.float32)


def predicted(s, cuts=(-1.0, 1.0)):
    """The class of each position."""
    return np.where(s < cuts[0], 0, np.where(s > cuts[1], 2, 1))


def moved_to(s, cuts=(-1.0, 1.0)):
    """The class the attack moves each position to: the neighbour across the nearer cut."""
    a, b = cuts
    return np.where(s < a, 1, np.where(s > b, 1, np.where(s - a < b - s, 0, 2)))


class _Rule(ClassifierMixin, BaseEstimator):
    """P(error) = 1 / the first feature (Res_min), whatever it was fit on."""

    def fit(self, X, y):
        self.classes_ = np.array([False, True])
        return self

    def predict_proba(self, X):
        p = 1.0 / np.asarray(X)[:, 0]
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.predict_proba(X)[:, 1] >= 0.5


class _Logged(ClassifierMixin, BaseEstimator):
    """A logistic regression that writes what it is fit on and what it predicts to LOG."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        LOG.append(("fit", self, np.array(X), np.array(y)))
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def predict_proba(self, X):
        proba = self.model_.predict_proba(X)
        LOG.append(("predict_proba", self, np.array(X), proba))
        return proba


@pytest.fixture(autouse=True)
def clear_logs():
    TRAINED.clear()
    LOG.clear()


def test_line_net_errors_and_attack_are_as_worked_out():
    s = np.array([-3.0, -1.6, -1.1, -0.5, 0.2, 0.9, 1.3, 2.5])
    results = ATTACK(line_net(cuts=(-1.0, 1.0)).module_, torch.tensor(on_line(s)))
    np.testing.assert_array_equal(results.c0, predicted(s))
    assert results.flipped.all()
    np.testing.assert_array_equal(results.adversarial_class, moved_to(s))
    # The farther from a cut, the later the flip.
    distance = np.minimum(np.abs(s + 1), np.abs(s - 1))
    assert np.all(np.diff(results.res_min[np.argsort(distance)]) >= 0)


def test_classifier_attack_results_attack_away_from_the_rank_asked_for():
    # The runner-up of a position is the neighbour across the nearer cut: rank=1 starts there.
    s = np.array([-3.0, -1.6, -0.5, 0.2, 1.3, 2.5])
    y = predicted(s)
    y[0] = 1  # an error, so that the detector is fit
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               cv="prefit").fit(on_line(s), LABELS[y])
    np.testing.assert_array_equal(clf.attack_results(on_line(s)).c0, predicted(s))
    np.testing.assert_array_equal(clf.attack_results(on_line(s), rank=1).c0, moved_to(s))


def test_classifier_corrects_exactly_the_samples_at_or_above_the_threshold():
    s = np.linspace(-3, 3, 41)
    s = s[(np.abs(np.abs(s) - 1) > 0.05) & (np.abs(s) > 0.05)]  # not on a cut, nor halfway
    X = on_line(s)
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               detector=_Rule(), features=("res_min",), threshold=1 / 3)
    y = predicted(s)
    y[np.abs(s) > 2.5] = 2 - y[np.abs(s) > 2.5]  # a few errors, so that the detector is fit
    clf.fit(X, LABELS[y])
    assert isinstance(clf.detector_, _Rule)
    res_min = clf.attack_results(X).res_min
    # P(error) = 1 / Res_min >= 1/3: exactly the samples that flip within three steps,
    # including those at three, where P equals the threshold.
    corrected = res_min <= 3
    assert corrected.any() and (~corrected).any() and np.any(res_min == 3)
    np.testing.assert_array_equal(clf.predict_error_proba(X) >= 1 / 3, corrected)
    expected = np.where(corrected, moved_to(s), predicted(s))
    np.testing.assert_array_equal(clf.predict(X), LABELS[expected])


def test_classifier_automatic_threshold_is_best_on_out_of_fold_probabilities():
    rng = np.random.RandomState(0)
    s = rng.uniform(-3, 3, 90)
    X, own = on_line(s), predicted(s)
    # Labels: the net's class, except near a cut, where half are the class across the cut
    # (an error the attack corrects), and a few far ones (errors it cannot correct).
    y = own.copy()
    near = (np.minimum(np.abs(s + 1), np.abs(s - 1)) < 0.5) & (rng.rand(90) < 0.5)
    y[near] = moved_to(s[near])
    far = (np.abs(s) > 2.5) & (rng.rand(90) < 0.3)
    y[far] = 2 - own[far]
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               detector=_Logged(), random_state=0).fit(X, LABELS[y])

    # Put together each sample's out-of-fold P(error) from what the detector's clones saw.
    results = clf.attack_results(X)
    rows = {row.tobytes(): i for i, row in enumerate(results.features)}
    assert len(rows) == len(X)
    proba = np.full(len(X), np.nan)
    fitted_on = {}
    for kind, model, features, values in LOG[1:]:  # LOG[0]: detector_ on everything
        index = [rows[row.tobytes()] for row in features]
        if kind == "fit":
            fitted_on[id(model)] = set(index)
        else:
            assert not fitted_on[id(model)] & set(index), "probabilities must be out of fold"
            assert np.isnan(proba[index]).all(), "one probability per sample"
            proba[index] = values[:, 1]
    assert not np.isnan(proba).any()

    def accuracy(threshold):
        corrected = proba >= threshold
        return np.mean(np.where(corrected, results.adversarial_class, results.c0) == y)

    candidates = np.r_[np.inf, np.unique(proba)]
    best = max(accuracy(t) for t in candidates)
    assert best > accuracy(np.inf), "some correction must help in this case"
    assert accuracy(clf.threshold_) == best
    assert np.isfinite(clf.threshold_)


def test_classifier_corrects_nothing_when_no_threshold_helps():
    # Every error is two classes away from the prediction: the attack moves it next door.
    s = np.linspace(-3, 3, 60)  # none on a cut or halfway between
    y = predicted(s)
    wrong = np.abs(s) > 2
    y[wrong] = 2 - y[wrong]
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               random_state=0).fit(on_line(s), LABELS[y])
    assert clf.threshold_ == np.inf
    np.testing.assert_array_equal(clf.predict(on_line(s)), LABELS[predicted(s)])


@pytest.mark.parametrize("cv", [3, 0.3], ids=["cross-fitting", "hold-out"])
def test_classifier_fits_detector_on_samples_the_net_did_not_train_on(cv):
    rng = np.random.RandomState(1)
    X = on_line(np.concatenate([rng.normal(centre, 0.8, 20) for centre in (-2, 0, 2)]))
    s, y = X[:, 0].astype(float), np.repeat([0, 1, 2], 20)
    clf = ResistanceClassifier(line_net(), attack=ATTACK, detector=_Logged(), cv=cv,
                               random_state=0).fit(X, LABELS[y])
    _, _, features, is_error = LOG[0]  # what detector_ was fit on
    # Cross-fitting trains one net per fold, then the final one on everything; the
    # hold-out trains one, on what it did not hold out.
    trainings = [np.isin(s, trained) for trained in TRAINED]
    if cv == 3:
        *trainings, final = trainings
        assert len(trainings) == 3 and final.all()
        assert np.array_equal(sum(~t for t in trainings), np.ones(len(s))), "folds partition X"
    else:
        (final,) = trainings
        assert (~final).sum() == 18
    np.testing.assert_allclose(clf.net_.module_.cuts.detach().numpy(),
                               cuts_for(s[final], y[final]), rtol=1e-6)

    # Each sample the detector saw, worked out by hand from the net that did not train on it.
    expected_features = np.full((len(s), 3), np.nan)
    expected_error = np.zeros(len(s), dtype=bool)
    for trained in trainings:
        cuts = cuts_for(s[trained], y[trained])
        held = ~trained
        expected_features[held] = ATTACK(_Line(cuts), torch.tensor(X[held])).features
        expected_error[held] = predicted(s[held], cuts) != y[held]
    if cv == 3:  # every sample once, in the order of X
        np.testing.assert_allclose(features, expected_features, rtol=1e-6)
        np.testing.assert_array_equal(is_error, expected_error)
    else:
        held = np.flatnonzero(~final)
        match = [held[np.all(np.isclose(expected_features[held], row, rtol=1e-6), axis=1)]
                 for row in features]
        assert all(len(m) == 1 for m in match) and len(match) == len(held)
        np.testing.assert_array_equal(is_error, expected_error[[m[0] for m in match]])
    assert is_error.any() and (~is_error).any()


def line_data(n=60, seed=2):
    """Positions off the cuts, labelled by the net except for a few far ones."""
    rng = np.random.RandomState(seed)
    s = rng.uniform(-3, 3, n)
    s = s[(np.abs(np.abs(s) - 1) > 0.05) & (np.abs(s) > 0.05)]
    y = predicted(s)
    y[np.abs(s) > 2.4] = 2 - y[np.abs(s) > 2.4]
    return on_line(s), y


def test_classifier_clones_the_detector_and_leaves_it_untouched():
    X, y = line_data()
    detector = LogisticRegression(C=0.37)
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               detector=detector).fit(X, LABELS[y])
    assert not hasattr(detector, "coef_")
    assert clf.detector_ is not detector and clf.detector_.C == 0.37
    assert clf.detector_.coef_.shape == (1, 3)
    default = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK)
    default.fit(X, LABELS[y])
    assert isinstance(default.detector_, Pipeline)
    assert [type(step).__name__ for step in default.detector_[:-1]] == ["QuantileTransformer"]
    assert isinstance(default.detector_[-1], LogisticRegression)
    assert default.detector_[0].output_distribution == "normal"


def test_classifier_features_select_the_columns_and_the_detector_inputs():
    X, y = line_data()
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               features=("res_mean", "res_n"), detector=_Logged())
    clf.fit(X, LABELS[y])
    results = clf.attack_results(X)
    expected = np.column_stack([results.res_mean, results.res_n])
    np.testing.assert_array_equal(clf.transform(X), expected)
    np.testing.assert_array_equal(LOG[0][2], expected)
    names = clf.get_feature_names_out()
    assert list(names) == ["res_mean", "res_n"] and names.dtype == object  # as scikit-learn's


@pytest.mark.parametrize("features, match", [
    ((), "features must be a non-empty sequence of names"),
    (("res_n", "res_sum"), "features must be a non-empty sequence of names"),
    ("res_n", "'features' parameter of ResistanceClassifier must be an instance of 'tuple'"),
], ids=["empty", "unknown", "string"])
def test_classifier_bad_features_raise(features, match):
    X, y = line_data()
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               features=features)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, LABELS[y])


class _Softmaxed(nn.Module):
    """The probabilities of a module that returns logits."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x).softmax(dim=1)


def attack_outcome(clf, X):
    results = clf.attack_results(X)
    return results.c0, results.res_min, results.adversarial_class


def test_classifier_net_output_proba_attacks_log_probabilities():
    X, y = line_data()
    logits = ResistanceClassifier(_Line(), attack=ATTACK).fit(X, y)
    proba = ResistanceClassifier(_Softmaxed(_Line()), attack=ATTACK, net_output="proba")
    proba.fit(X, y)
    for a, b in zip(attack_outcome(proba, X), attack_outcome(logits, X)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(proba.transform(X), logits.transform(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(proba.predict_proba(X), logits.predict_proba(X), rtol=1e-5,
                               atol=1e-7)
    # Taken as logits, the probabilities are a different, much flatter net, which the attack
    # rarely moves: fit says so, and names net_output.
    with pytest.warns(UserWarning, match=r"changed the class of only \d+%.* set "
                                         r"net_output='proba'"):
        as_logits = ResistanceClassifier(_Softmaxed(_Line()), attack=ATTACK).fit(X, y)
    assert not np.array_equal(attack_outcome(as_logits, X)[1], attack_outcome(logits, X)[1])


@pytest.mark.filterwarnings("ignore:The attack changed the class of only")
@pytest.mark.parametrize("criterion", [nn.NLLLoss, nn.MSELoss])
def test_classifier_net_output_logits_overrides_the_criterion(criterion):
    # The module returns logits whatever the criterion says.
    X, y = line_data()
    net = line_net(cuts=(-1.0, 1.0), criterion=criterion)
    explicit = ResistanceClassifier(FrozenEstimator(net), attack=ATTACK, net_output="logits")
    explicit.fit(X, LABELS[y])
    reference = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK)
    reference.fit(X, LABELS[y])
    np.testing.assert_array_equal(explicit.transform(X), reference.transform(X))
    np.testing.assert_array_equal(explicit.predict_proba(X), reference.predict_proba(X))
    automatic = ResistanceClassifier(FrozenEstimator(net), attack=ATTACK)
    if criterion is nn.MSELoss:
        with pytest.raises(ValueError, match="Cannot tell whether the net's module returns"):
            automatic.fit(X, LABELS[y])
    else:  # NLLLoss: skorch's convention is probabilities, which these are not
        automatic.fit(X, LABELS[y])
        assert not np.allclose(automatic.predict_proba(X), reference.predict_proba(X))


@pytest.mark.filterwarnings("ignore:The attack changed the class of only")
def test_classifier_fit_leaves_global_random_states_alone(digits):
    X, y, _, _ = digits
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    clf = ResistanceClassifier(tiny_cnn_net(max_epochs=2),
                               attack=ResistanceAttack(max_iter=5, batch_size=64), cv=2,
                               random_state=0)
    clf.fit(X[:150], y[:150])
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


def test_classifier_defaults_are_the_documented_ones():
    net = line_net()
    assert ResistanceClassifier(net).get_params(deep=False) == {
        "net": net, "attack": None, "detector": None,
        "features": ("res_n", "res_max", "res_min"), "cv": "auto", "threshold": "auto",
        "net_output": "auto", "cache": None, "random_state": None,
    }


def positions(counts, seed=0):
    """Positions drawn around the three classes' centres, ``counts`` of each, and labels."""
    rng = np.random.RandomState(seed)
    s = np.concatenate([rng.uniform(low, high, n) for (low, high), n in
                        zip([(-3, -1.2), (-0.8, 0.8), (1.2, 3)], counts)])
    return on_line(s), np.repeat([0, 1, 2], counts)


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
def test_classifier_folds_are_stratified_and_follow_the_seed():
    # Two samples of class 0: stratified folds hold one each. (Unstratified folds, with
    # this seed, would hold both in one.)
    X, y = positions((2, 20, 20))
    s = X[:, 0].astype(float)
    ResistanceClassifier(line_net(), attack=ATTACK, cv=2, random_state=0).fit(X, LABELS[y])
    first = [np.isin(s, trained) for trained in TRAINED[:2]]
    for trained in first:
        np.testing.assert_array_equal(np.bincount(y[~trained]), [1, 10, 10])
    TRAINED.clear()
    ResistanceClassifier(line_net(), attack=ATTACK, cv=2, random_state=1).fit(X, LABELS[y])
    second = [np.isin(s, trained) for trained in TRAINED[:2]]
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
@pytest.mark.parametrize("cv", [3, 0.3], ids=["cross-fitting", "hold-out"])
def test_classifier_trains_with_a_class_of_one_sample(cv):
    # Too few to stratify by; a net that trains without that sample still has its class.
    X, y = positions((1, 20, 20))
    clf = ResistanceClassifier(line_net(), attack=ATTACK, cv=cv, random_state=0)
    clf.fit(X, LABELS[y])
    np.testing.assert_array_equal(clf.classes_, LABELS)
    if cv == 3:  # one fold's net trains without it
        assert sum(not np.isin(X[0, 0], trained) for trained in TRAINED) == 1
        # The folds are KFold's, unstratified, drawn from the seed.
        folds = KFold(3, shuffle=True, random_state=np.random.RandomState(0)).split(X)
        for (train, _), trained in zip(folds, TRAINED, strict=False):
            np.testing.assert_array_equal(X[train, 0].astype(float), trained)
    assert clf.predict(X).shape == (len(X),)


def test_classifier_all_wrong_warns_and_flags_every_sample():
    X, y = positions((10, 10, 10))
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK)
    with pytest.warns(UserWarning, match="are all wrong"):
        clf.fit(X, LABELS[(y + 1) % 3])
    np.testing.assert_array_equal(clf.predict_error_proba(X), 1.0)
    assert clf.threshold_ == np.inf


def test_classifier_tunes_the_threshold_on_two_errors():
    # Two errors, both next to a cut and labelled with the class across it: correcting
    # them is what helps, and the threshold is tuned with two folds.
    X, y = positions((15, 15, 15), seed=3)
    X = np.concatenate([X, on_line(np.array([-0.95, 1.05]))])
    y = np.r_[y, 0, 1]  # the net says 1 and 2
    s = X[:, 0].astype(float)
    assert (predicted(s) != y).sum() == 2
    assert np.all(moved_to(s[-2:]) == y[-2:])
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               detector=_Rule(), features=("res_min",), random_state=0)
    clf.fit(X, LABELS[y])
    assert np.isfinite(clf.threshold_)
    np.testing.assert_array_equal(clf.predict(X), LABELS[y])


def test_classifier_predict_topk_three_classes_by_hand():
    s = np.array([-2.5, -1.5, -0.5, 0.4, 1.5, 2.5])
    clf = ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))), attack=ATTACK,
                               threshold=0.5)
    X, y = line_data()
    clf.fit(X, LABELS[y])
    ranked = clf.predict_topk(on_line(s), k=3)
    own, next_door = predicted(s), moved_to(s)
    np.testing.assert_array_equal(ranked, LABELS[np.column_stack(
        [own, next_door, 3 - own - next_door])])


class _Linear(nn.Module):
    def __init__(self, n_in, n_classes, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, n_in, generator=g) * 2)

    def forward(self, x):
        return x @ self.weight.T


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
def test_classifier_predict_topk_lists_attacks_then_the_nets_ranking():
    # Twenty classes: the list is c1, a1, c2, a2, c3, a3 without repeats, then the rest in the
    # net's order, whatever the number of columns.
    rng = np.random.RandomState(0)
    X, module = rng.randn(8, 6).astype(np.float32), _Linear(6, 20, seed=0)
    clf = ResistanceClassifier(module, attack=ATTACK, threshold=0.5).fit(X, rng.randint(20, size=8))
    ranked = clf.predict_topk(X, k=20)
    with torch.no_grad():
        order = module(torch.tensor(X)).argsort(dim=1, descending=True).numpy()
    runs = [ATTACK(module, torch.tensor(X), rank=rank) for rank in range(3)]
    for i in range(len(X)):
        listed = []
        for label in [v for r in runs for v in (r.c0[i], r.adversarial_class[i])] + list(order[i]):
            if label not in listed:
                listed.append(label)
        np.testing.assert_array_equal(ranked[i], listed)


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
def test_classifier_predict_topk_attacks_once_per_rank_it_lists():
    # k=1 is the net's prediction: no attack; k=2 (the default) attacks rank 0; k>=3 attacks
    # ranks 0, 1 and 2. The cache holds one entry per image and rank attacked.
    rng = np.random.RandomState(2)
    X, module = rng.randn(5, 6).astype(np.float32), _Linear(6, 20, seed=2)
    clf = ResistanceClassifier(module, attack=ATTACK, threshold=0.5).fit(X, rng.randint(20, size=5))
    for k, attacks, kwargs in [(1, 0, {"k": 1}), (2, 1, {}), (2, 1, {"k": 2}), (3, 3, {"k": 3}),
                               (7, 3, {"k": 7})]:
        cache = AttackCache()
        assert clf.set_params(cache=cache).predict_topk(X, **kwargs).shape == (5, k)
        assert len(cache) == 5 * attacks, kwargs
    # Three classes: c3 has no class left to go to, so ranks 0 and 1 only; four: all three.
    for n_classes, attacks in [(3, 2), (4, 3)]:
        clf = ResistanceClassifier(_Linear(6, n_classes, seed=2), attack=ATTACK, threshold=0.5)
        cache = AttackCache()
        clf.fit(X, np.arange(5) % n_classes).set_params(cache=cache).predict_topk(X, k=3)
        assert len(cache) == 5 * attacks, n_classes


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
@pytest.mark.parametrize("setting", [{"batch_size": "auto"}, {"device": "cpu"}], ids=str)
def test_classifier_predict_proba_follows_the_attacks_batch_size_and_device(setting):
    # predict_proba runs plain forward passes where the attack runs, in batches of 256 when
    # the attack's batch size is "auto" (which only the attack times).
    rng = np.random.RandomState(3)
    X, module = rng.randn(7, 6).astype(np.float32), _Linear(6, 4, seed=3)
    clf = ResistanceClassifier(module, attack=ATTACK, threshold=0.5).fit(X, np.arange(7) % 4)
    clf.set_params(attack=ResistanceAttack(max_iter=40, step_size=0.25, **setting))
    with torch.no_grad():
        expected = module(torch.tensor(X)).softmax(dim=1).numpy()
    np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
def test_classifier_default_attack_is_the_default_resistance_attack():
    rng = np.random.RandomState(4)
    X, module = rng.randn(5, 6).astype(np.float32), _Linear(6, 4, seed=4)
    clf = ResistanceClassifier(module, threshold=0.5).fit(X, np.arange(5) % 4)
    np.testing.assert_array_equal(clf.transform(X),
                                  ResistanceAttack()(module, torch.tensor(X)).features)


@pytest.mark.filterwarnings("ignore:The net's predictions on the")
def test_classifier_float64_module():
    rng = np.random.RandomState(1)
    X, module = rng.randn(12, 6), _Linear(6, 4, seed=1).double()
    clf = ResistanceClassifier(module, attack=ATTACK, threshold=0.5).fit(X, rng.randint(4, size=12))
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float64
    with torch.no_grad():
        expected = module(torch.tensor(X)).softmax(dim=1).numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-5)
    assert clf.transform(X).shape == (12, 3)


@pytest.mark.parametrize("gain, corrected", [
    ([1, 1, 1], [True, True, True]),  # every correction helps: all are made
    ([-1, 1, 0], [False, False, False]),  # the best balance is 0: none is made
    ([1, 0, -1], [True, False, False]),  # equal totals: the fewest corrections
])
def test_best_threshold_picks_the_fewest_best_corrections(gain, corrected):
    proba = np.array([0.9, 0.6, 0.3])
    threshold = _best_threshold(proba, np.array(gain))
    np.testing.assert_array_equal(proba >= threshold, corrected)


def test_best_threshold_corrects_tied_probabilities_together():
    # The two samples at 0.5 are corrected together or not at all: together they gain 0,
    # so nothing is corrected (cutting between them would claim a gain of 1).
    proba = np.array([0.9, 0.5, 0.5, 0.2])
    assert _best_threshold(proba, np.array([0, 1, -1, 0])) == np.inf
    threshold = _best_threshold(proba, np.array([0, 1, 1, -1]))
    np.testing.assert_array_equal(proba >= threshold, [True, True, True, False])


@pytest.mark.parametrize("n_samples, warns", [(99, True), (100, False)])
def test_make_detector_uses_100_quantiles(n_samples, warns):
    # As its docstring says: fit on fewer than 100 samples, the transformer warns.
    X = np.random.RandomState(0).rand(n_samples, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_detector().fit(X, np.arange(n_samples) % 2)
    assert any("n_quantiles" in str(w.message) for w in caught) == warns


def test_make_detector_quantiles_are_those_of_every_sample():
    # No subsampling (scikit-learn's default keeps 10,000 samples at random).
    X = np.random.RandomState(0).rand(12_000, 2)
    transformer = make_detector().fit(X, np.arange(len(X)) % 2)[0]
    np.testing.assert_allclose(transformer.quantiles_,
                               np.percentile(X, np.linspace(0, 100, 100), axis=0), rtol=1e-12)


def test_classifier_fit_on_few_samples_hides_the_quantile_warning():
    X, y = line_data()
    assert len(X) < 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ResistanceClassifier(FrozenEstimator(line_net(cuts=(-1.0, 1.0))),
                             attack=ATTACK).fit(X, LABELS[y])
    assert not [w for w in caught if "n_quantiles" in str(w.message)]


# ------------------------------------------------------------------ fit_transform and cv


def clustered(seed=1):
    """Twenty samples around each class's centre, on the line: X, positions and labels."""
    rng = np.random.RandomState(seed)
    X = on_line(np.concatenate([rng.normal(centre, 0.8, 20) for centre in (-2, 0, 2)]))
    return X, X[:, 0].astype(float), np.repeat([0, 1, 2], 20)


def out_of_fold_by_hand(X, s, y, trainings):
    """Each sample's features from the net of the training set that left it out, or NaN."""
    expected = np.full((len(s), 3), np.nan)
    for trained in trainings:
        held = ~trained
        expected[held] = ATTACK(_Line(cuts_for(s[trained], y[trained])),
                                torch.tensor(X[held])).features
    return expected


GROUPS = np.arange(60) % 6  # six groups, each spread over the three classes
TEST_FOLD = np.arange(60) % 4  # four predefined folds


@pytest.mark.parametrize("cv, groups, n_folds", [
    (5, None, 5),
    (GroupKFold(3), GROUPS, 3),
    (PredefinedSplit(TEST_FOLD), None, 4),
    ([(np.flatnonzero(TEST_FOLD != k), np.flatnonzero(TEST_FOLD == k)) for k in range(4)], None,
     4),
], ids=["int", "GroupKFold", "PredefinedSplit", "list-of-splits"])
def test_classifier_fit_transform_returns_the_out_of_fold_features(cv, groups, n_folds):
    X, s, y = clustered()
    clf = ResistanceClassifier(line_net(), attack=ATTACK, detector=_Logged(), cv=cv,
                               random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every sample is held out once: nothing to warn about
        features = clf.fit_transform(X, LABELS[y], groups=groups)
    *trainings, final = [np.isin(s, trained) for trained in TRAINED]
    assert final.all() and len(trainings) == n_folds
    np.testing.assert_array_equal(sum(~t for t in trainings), np.ones(len(s)))
    if groups is not None:  # no group on both sides of a split
        for trained in trainings:
            assert not set(groups[trained]) & set(groups[~trained])
    if n_folds == 4:
        for k, trained in enumerate(trainings):
            np.testing.assert_array_equal(trained, TEST_FOLD != k)
    # The out-of-fold features, worked out by hand, which the detector learnt from, in the
    # order of X.
    np.testing.assert_allclose(features, out_of_fold_by_hand(X, s, y, trainings), rtol=1e-6)
    np.testing.assert_array_equal(features, LOG[0][2])
    # fit then transform gives the final net's features on samples it trained on: others.
    in_sample = clone(clf).fit(X, LABELS[y], groups=groups).transform(X)
    np.testing.assert_allclose(
        in_sample, ATTACK(_Line(cuts_for(s, y)), torch.tensor(X)).features, rtol=1e-6)
    assert not np.allclose(features, in_sample)


def test_classifier_fit_transform_with_a_hold_out_fraction_warns_for_the_in_sample_rows():
    X, s, y = clustered()
    clf = ResistanceClassifier(line_net(), attack=ATTACK, cv=0.3, random_state=0)
    with pytest.warns(UserWarning, match=r"out-of-sample features for the 18 samples of X that "
                      r"cv=0.3 held out, but not for the other 42: the final net trained on "
                      r"them.*Use an int cv") as caught:
        features = clf.fit_transform(X, LABELS[y])
    assert caught[0].filename == __file__  # the caller's line, past scikit-learn's wrappers
    (final,) = [np.isin(s, trained) for trained in TRAINED]
    assert final.sum() == 42
    # Every row's features are the final net's, which did not train on the 18 held out.
    expected = ATTACK(_Line(cuts_for(s[final], y[final])), torch.tensor(X)).features
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    np.testing.assert_allclose(features, clf.transform(X), rtol=1e-6)


def test_classifier_fit_transform_warns_for_samples_no_test_set_holds():
    # PredefinedSplit's -1: never held out, so only the final net has features for them.
    X, s, y = clustered()
    test_fold = np.where(np.arange(60) < 6, -1, np.arange(60) % 3)
    clf = ResistanceClassifier(line_net(), attack=ATTACK, cv=PredefinedSplit(test_fold),
                               random_state=0)
    with pytest.warns(UserWarning, match="for the 54 samples of X that the cv splitter held "
                                         "out, but not for the other 6"):
        features = clf.fit_transform(X, LABELS[y])
    *folds, final = [np.isin(s, trained) for trained in TRAINED]
    assert len(folds) == 3 and final.all()
    np.testing.assert_allclose(features[6:], out_of_fold_by_hand(X, s, y, folds)[6:],
                               rtol=1e-6)
    np.testing.assert_allclose(features[:6], clf.transform(X[:6]), rtol=1e-6)


@pytest.fixture
def attacked(monkeypatch):
    """The number of samples of each call of a ResistanceAttack, in order."""
    sizes, attack = [], ResistanceAttack.__call__

    def counted(self, module, X, **kwargs):
        sizes.append(len(X))
        return attack(self, module, X, **kwargs)

    monkeypatch.setattr(ResistanceAttack, "__call__", counted)
    return sizes


def test_classifier_fit_transform_prefit_attacks_once(attacked):
    X, y = line_data()
    clf = ResistanceClassifier(_Line(), attack=ATTACK)
    features = clf.fit_transform(X, y)
    assert attacked == [len(X)]
    np.testing.assert_array_equal(features, ATTACK(_Line(), torch.tensor(X)).features)
    np.testing.assert_array_equal(clf.transform(X), features)  # remembered
    assert attacked == [len(X)] * 2  # the by-hand attack only


def test_classifier_fit_transform_cross_fitting_attacks_each_sample_once(attacked):
    X, _, y = clustered()
    ResistanceClassifier(line_net(), attack=ATTACK, cv=4, random_state=0).fit_transform(
        X, LABELS[y])
    assert len(attacked) == 4 and sum(attacked) == len(X)


def test_classifier_fit_accepts_overlapping_test_sets_but_fit_transform_does_not():
    X, _, y = clustered()
    cv = ShuffleSplit(n_splits=3, test_size=0.5, random_state=0)
    clf = ResistanceClassifier(line_net(), attack=ATTACK, detector=_Logged(), cv=cv,
                               random_state=0)
    clf.fit(X, LABELS[y])
    assert len(TRAINED) == 4
    assert len(LOG[0][2]) == 90  # the detector learns from every (sample, test set) pair
    TRAINED.clear()
    with pytest.raises(ValueError, match=r"cv holds sample \d+ out [23] times, so "
                                         "fit_transform has no single out-of-sample value"):
        clf.fit_transform(X, LABELS[y])
    assert not TRAINED, "raised before any training"


@pytest.mark.parametrize("cv, groups, match", [
    (3, GROUPS, "The groups parameter is ignored by StratifiedKFold"),
    (0.3, GROUPS, (r"The groups parameter is ignored by cv=0.3, a hold-out fraction .* "
                   "GroupKFold")),
], ids=["int", "float"])
def test_classifier_warns_that_groups_are_ignored(cv, groups, match):
    X, _, y = clustered()
    with pytest.warns(UserWarning, match=match):
        ResistanceClassifier(line_net(), attack=ATTACK, cv=cv, random_state=0).fit(
            X, LABELS[y], groups=groups)


@pytest.mark.parametrize("cv, groups, match", [
    ([0.2], None, (r"cv must give \(train, test\) pairs of non-empty arrays of indices into "
                   r"X's 60 samples; split 0 is not one")),
    ([(np.arange(30), np.arange(30, 61))], None, "split 0 is not one"),
    ([(np.arange(30), np.array([], dtype=int))], None, "split 0 is not one"),
    ([(np.arange(30), np.arange(30, 60)), (np.arange(40), np.arange(30, 60))], None,
     "cv's split 1 trains on samples that it holds out"),
    ([], None, r"cv gave no \(train, test\) splits"),
    (GroupKFold(3), None, "The 'groups' parameter should not be None"),
    (GroupKFold(3), GROUPS[:-1], "inconsistent numbers of samples"),
], ids=["not-pairs", "out-of-range", "empty-test", "overlap", "no-splits", "no-groups",
        "groups-length"])
def test_classifier_bad_splits_raise(cv, groups, match):
    X, _, y = clustered()
    with pytest.raises(ValueError, match=match):
        ResistanceClassifier(line_net(), attack=ATTACK, cv=cv).fit(X, LABELS[y], groups=groups)


@pytest.mark.parametrize("cv", ["always", 1, True, 1.0, 0.0, lambda: 3],
                         ids=["string", "one", "bool", "float-one", "float-zero", "callable"])
def test_classifier_bad_cv_values_raise(cv):
    X, _, y = clustered()
    with pytest.raises(ValueError, match=r"The 'cv' parameter of ResistanceClassifier must be "
                                         r"a str among .*, a float in the range \(0.0, 1.0\) or an "
                                         r"int in the range \[2, inf\), an object implementing "
                                         r"'split' and 'get_n_splits', an iterable or None"):
        ResistanceClassifier(line_net(), attack=ATTACK, cv=cv).fit(X, LABELS[y])


def test_classifier_cv_none_is_five_folds():
    X, _, y = clustered()
    ResistanceClassifier(line_net(), attack=ATTACK, cv=None, random_state=0).fit(X, LABELS[y])
    assert len(TRAINED) == 6


# ------------------------------------------------------------ one attack per input


class _Tempered(nn.Module):
    """_Line's logits divided by a temperature kept in a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.line = _Line()
        self.register_buffer("temperature", torch.tensor(1.0), persistent=False)

    def forward(self, x):
        return self.line(x) / self.temperature


def test_classifier_transform_and_predictions_share_one_attack(attacked):
    # The README's Quick start: four calls on the same X, one attack.
    X, y = line_data()
    X_test = on_line(np.linspace(-2.9, 2.9, 30))
    clf = ResistanceClassifier(_Line(), attack=ATTACK, threshold=0.5).fit(X, y)
    attacked.clear()
    features = clf.transform(X_test)
    clf.predict_error_proba(X_test)
    clf.predict(X_test)
    clf.predict_topk(X_test, k=2)
    clf.score(X_test, predicted(X_test[:, 0]))
    clf.attack_results(X_test.copy())  # the same content in another array
    assert attacked == [len(X_test)]
    np.testing.assert_array_equal(features, ATTACK(_Line(), torch.tensor(X_test)).features)


@pytest.mark.parametrize("change", [
    lambda clf: clf.net_.line.cuts.data.add_(0.3),
    lambda clf: clf.net_.temperature.fill_(3.0),
    lambda clf: clf.set_params(attack=ResistanceAttack(max_iter=30, step_size=0.25,
                                                       batch_size=64)),
    lambda clf: clf.set_params(net_output="proba"),
], ids=["weights", "non-persistent-buffer", "attack", "net-output"])
def test_classifier_attacks_again_once_the_net_or_the_attack_changes(attacked, change):
    X, y = line_data()
    clf = ResistanceClassifier(_Tempered(), attack=ATTACK, threshold=0.5).fit(X, y)
    before = clf.transform(X)
    change(clf)
    after = clf.attack_results(X)
    assert attacked == [len(X)] * 2
    fresh = clf._attack_settings()(clf._module(), torch.tensor(X))
    np.testing.assert_array_equal(after.features, fresh.features)
    assert not np.array_equal(after.features, before)


def test_classifier_remembers_the_last_four_inputs_and_ranks(attacked):
    X, y = line_data()
    clf = ResistanceClassifier(_Line(), attack=ATTACK, threshold=0.5).fit(X, y)
    inputs = [X[i : i + 5] for i in range(0, 30, 5)]
    attacked.clear()
    for X_part in inputs[:4]:
        clf.transform(X_part)
    clf.transform(inputs[0])  # remembered, and now the most recently used
    assert len(attacked) == 4
    clf.transform(inputs[4])  # a fifth input: the least recently used, inputs[1], goes
    for X_part in [inputs[0], *inputs[2:5]]:
        clf.transform(X_part)
    assert len(attacked) == 5
    clf.transform(inputs[1])
    assert len(attacked) == 6
    clf.predict_topk(inputs[5], k=3)  # ranks 0 and 1 (of three classes): two entries
    assert len(attacked) == 8
    clf.predict_topk(inputs[5], k=3)
    assert len(attacked) == 8


def test_classifier_fit_starts_afresh_and_clones_copies_and_pickles_remember_nothing(
        attacked):
    X, y = line_data()
    clf = ResistanceClassifier(_Line(), attack=ATTACK, threshold=0.5).fit(X, y)
    clf.transform(X)  # remembered from fit (cv="prefit")
    assert len(attacked) == 1
    for other in [clone(clf).fit(X[:10], y[:10]), copy.deepcopy(clf),
                  pickle.loads(pickle.dumps(clf))]:
        other.transform(X)
    assert len(attacked) == 5  # one fit on X[:10], then X once by each
    clf.transform(X)
    assert len(attacked) == 5  # clf still remembers X
    clf.fit(X[:10], y[:10])
    clf.transform(X)
    assert len(attacked) == 7


def test_classifier_results_handed_out_are_copies(attacked):
    X, y = line_data()
    clf = ResistanceClassifier(_Line(), attack=ATTACK, threshold=0.5).fit(X[:20], y[:20])
    expected = ATTACK(_Line(), torch.tensor(X)).features
    attacked.clear()
    clf.attack_results(X).res_n[:] = -1  # the result just computed, then remembered
    clf.attack_results(X).res_max[:] = -1  # the remembered one
    np.testing.assert_array_equal(clf.transform(X), expected)
    assert attacked == [len(X)]


def test_classifier_explicit_cache_takes_precedence(attacked):
    X, y = line_data()
    cache = AttackCache()
    clf = ResistanceClassifier(_Line(), attack=ATTACK, cache=cache, threshold=0.5).fit(X, y)
    assert len(cache) == len(X)
    attacked.clear()
    clf.transform(X)
    ResistanceClassifier(_Line(), attack=ATTACK, cache=cache, threshold=0.5).fit(X, y)
    assert attacked == []  # the cache answered, and a new classifier shares it


# ------------------------------------------------------------------- messages


def test_classifier_predict_proba_on_the_meta_device_raises_and_keeps_the_weights():
    X, y = line_data()
    module = _Line()
    clf = ResistanceClassifier(module, attack=ATTACK).fit(X, y)
    clf.set_params(attack=ResistanceAttack(device="meta"))
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        clf.predict_proba(X)
    np.testing.assert_array_equal(module.cuts.detach().numpy(), [-1.0, 1.0])


def test_classifier_fit_rejects_integer_images_but_converts_integer_features():
    X, y = line_data()
    with pytest.raises(ValueError, match="X holds int64 values, but the attack needs "
                                         "floating-point pixels"):
        ResistanceClassifier(_Line(), attack=ATTACK).fit(np.round(X)[:, :, None, None]
                                                        .astype(np.int64), y)
    # As scikit-learn converts them: its estimator checks fit on integer features.
    clf = ResistanceClassifier(_Line(), attack=ATTACK).fit(np.round(X * 4).astype(np.int64), y)
    assert clf.transform(np.round(X * 4).astype(np.int32)).shape == (len(X), 3)


def test_classifier_warns_when_few_correct_predictions_flip():
    X, y = line_data()
    weak = ResistanceAttack(max_iter=3, step_size=0.01, batch_size=64, clip=(-5.0, 5.0))
    with pytest.warns(UserWarning, match=(
            r"The attack changed the class of only \d+% of the net's \d+ correct predictions "
            r"on the samples the detector learns from, within max_iter=3 steps of "
            r"step_size=0.01.*attack=ResistanceAttack\(step_size=\.\.\., max_iter=\.\.\.\)\. "
            r"clip=\(-5.0, 5.0\) keeps x \+ r in a box.* net_output='proba'")) as caught:
        ResistanceClassifier(_Line(), attack=weak).fit(X, y)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResistanceClassifier(_Line(), attack=ATTACK).fit(X, y)  # every one flips


@pytest.mark.parametrize("flipped, warns", [
    ([True, False], False),  # a half: enough
    ([True, False, False], True),
    ([], False),  # no correct prediction: nothing to say
], ids=["half", "third", "none"])
def test_classifier_flip_rate_threshold_is_a_half(flipped, warns):
    clf = ResistanceClassifier(_Line(), attack=ATTACK)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf._check_flip_rate(np.array(flipped, dtype=bool))
    assert bool(caught) == warns
