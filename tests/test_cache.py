import copy

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import cross_val_score

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier

ATTACK = ResistanceAttack(max_iter=40, batch_size=32)




def test_cache_returns_what_a_fresh_attack_returns(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    first = cache.attack(ATTACK, module, X[:40])
    # Mixed: half cached, half new, in another order.
    mixed = cache.attack(ATTACK, module, X[60:20:-1])
    fresh = ATTACK(module, torch.tensor(X[60:20:-1].copy()))
    for name in ["res_n", "res_max", "res_min", "flipped", "adversarial_class", "c0", "conf0"]:
        np.testing.assert_array_equal(getattr(mixed, name), getattr(fresh, name))
    # Position k of the mixed call holds image 60 - k; images 21-39 were cached by the first.
    np.testing.assert_array_equal(mixed.res_n[21:], first.res_n[39:20:-1])
    assert len(cache) == 61


def test_cache_keys_on_net_settings_and_rank(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    cache.attack(ATTACK, module, X[:10])
    cache.attack(ATTACK, module, X[:10], rank=1)
    cache.attack(ResistanceAttack(max_iter=41, batch_size=32), module, X[:10])
    other = copy.deepcopy(module)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    cache.attack(ATTACK, other, X[:10])
    assert len(cache) == 40
    cache.attack(ResistanceAttack(max_iter=40, batch_size=32, verbose=True), module, X[:10])
    assert len(cache) == 40, "verbose does not change results"


def test_cache_shared_by_clones_in_cross_validation(trained_cnn, digits):
    _, _, X, y = digits
    cache = AttackCache()
    clf = ResistanceClassifier(FrozenEstimator(trained_cnn), attack=ATTACK, cache=cache,
                               random_state=0)
    scores = cross_val_score(clf, X[:150], y[:150], cv=3)
    assert len(cache) == 150, "each image attacked once across folds"
    uncached = cross_val_score(clf.set_params(cache=None), X[:150], y[:150], cv=3)
    np.testing.assert_array_equal(scores, uncached)


def test_cache_save_and_load(tmp_path, trained_cnn, digits):
    _, _, X, _ = digits
    cache = AttackCache()
    before = cache.attack(ATTACK, trained_cnn.module_, X[:10])
    cache.save(tmp_path / "cache.joblib")
    loaded = AttackCache.load(tmp_path / "cache.joblib")
    assert len(loaded) == 10
    np.testing.assert_array_equal(loaded.attack(ATTACK, trained_cnn.module_, X[:10]).res_n,
                                  before.res_n)
    assert len(loaded) == 10


def test_cache_rejects_other_objects(trained_cnn, digits):
    _, _, X, y = digits
    with pytest.raises(ValueError, match="cache"):
        ResistanceClassifier(FrozenEstimator(trained_cnn), cache={}).fit(X[:20], y[:20])
