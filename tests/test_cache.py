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


FIELDS = ["res_n", "res_max", "res_min", "res_mean", "flipped", "adversarial_class", "c0",
          "conf0"]


def test_cache_sees_weights_changed_in_place(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = copy.deepcopy(trained_cnn.module_), AttackCache()
    before = cache.attack(ATTACK, module, X[:10])
    with torch.no_grad():
        next(module.parameters()).mul_(1.5)  # the same module object, other weights
    after = cache.attack(ATTACK, module, X[:10])
    fresh = ATTACK(module, torch.tensor(X[:10]))
    assert len(cache) == 20
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(after, name), getattr(fresh, name), err_msg=name)
    assert not np.array_equal(after.res_n, before.res_n)
    assert after.conf_trace is None and after.norm_trace is None


def test_cache_keys_on_preprocessing_and_image_bytes(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    cache.attack(ATTACK, module, X[:5])
    cache.attack(ATTACK, module, X[:5].astype(np.float64))
    assert len(cache) == 5, "the attack sees float32 images: float64 copies are the same"
    normalised = ResistanceAttack(max_iter=40, batch_size=32,
                                  preprocessing={"mean": 0.1, "std": 0.9})
    result = cache.attack(normalised, module, X[:5])
    assert len(cache) == 10
    fresh = normalised(module, torch.tensor(X[:5]))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(result, name), getattr(fresh, name), err_msg=name)
    shifted = X[:5].copy()
    shifted[0, 0, 0, 0] += 1e-3
    cache.attack(ATTACK, module, shifted)
    assert len(cache) == 11, "only the changed image is new"


def test_cache_save_and_load_keep_every_field(tmp_path, trained_cnn, digits):
    _, _, X, _ = digits
    cache = AttackCache()
    before = cache.attack(ATTACK, trained_cnn.module_, X[:6])
    cache.save(tmp_path / "cache.npz")
    loaded = AttackCache.load(tmp_path / "cache.npz")
    after = loaded.attack(ATTACK, trained_cnn.module_, X[:6])
    assert len(loaded) == 6
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
        assert getattr(after, name).dtype == getattr(before, name).dtype, name


def _pickled(path):
    import pickle

    path.write_bytes(pickle.dumps({"keys": [1, 2]}))


def _other_npz(path):
    with open(path, "wb") as file:
        np.savez(file, format=np.array("something else/1"), keys=np.array(["a"]))


def _misaligned(path):
    cache = AttackCache()
    cache._table.add(["a"], {name: np.ones(1) for name in FIELDS})
    cache.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["res_n"] = np.zeros(3)
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize("write, match", [
    (_pickled, "is not an attack cache written by AttackCache.save"),
    (lambda path: path.write_bytes(b"PK\x03\x04 broken"), "is not an attack cache"),
    (_other_npz, "it does not say it is in the format 'resistclf.AttackCache/2'"),
    (_misaligned, "its arrays do not line up"),
], ids=["pickle", "corrupt", "other-format", "misaligned"])
def test_cache_load_rejects_other_files(tmp_path, write, match):
    path = tmp_path / "cache.npz"
    write(path)
    with pytest.raises(ValueError, match=match) as info:
        AttackCache.load(path)
    assert str(path) in str(info.value)


def test_cache_save_replaces_the_file_only_once_complete(tmp_path, monkeypatch, trained_cnn,
                                                         digits):
    from resistclf import _cache

    _, _, X, _ = digits
    path = tmp_path / "sub" / "cache.npz"
    cache = AttackCache()
    cache.attack(ATTACK, trained_cnn.module_, X[:3])
    cache.save(path)
    good = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    cache.attack(ATTACK, trained_cnn.module_, X[3:5])
    monkeypatch.setattr(_cache.np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache.npz"], "no temporary left"


def test_cache_ranks_are_kept_apart_and_right(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    cache.attack(ATTACK, module, X[:6])
    runner_up = cache.attack(ATTACK, module, X[:6], rank=1)
    fresh = ATTACK(module, torch.tensor(X[:6]), rank=1)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(runner_up, name), getattr(fresh, name),
                                      err_msg=name)


def test_cache_keys_on_the_architecture_not_only_the_weights():
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tanh = torch.nn.Sequential(relu[0], torch.nn.Tanh(), relu[2])  # the same weights
    X, cache = np.random.RandomState(0).rand(5, 4).astype(np.float32), AttackCache()
    cache.attack(ATTACK, relu, X)
    result = cache.attack(ATTACK, tanh, X)
    assert len(cache) == 10
    np.testing.assert_array_equal(result.res_n, ATTACK(tanh, torch.tensor(X)).res_n)


def test_cache_ignores_settings_that_do_not_change_results(trained_cnn, digits):
    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    cache.attack(ATTACK, module, X[:4])
    for params in ({"n_jobs": 2}, {"verbose": True}):
        cache.attack(ResistanceAttack(max_iter=40, batch_size=32, **params), module, X[:4])
    assert len(cache) == 4


def test_cache_key_format_is_stable(trained_cnn, digits):
    # Caches written by long experiments must keep matching: the key is blake2b (16 bytes)
    # of repr((fingerprint, settings, rank)) followed by the float32 image bytes, where the
    # fingerprint is joblib's hash of the module's repr, its parameters and buffers (dtype,
    # shape and bytes) and the public attributes of each submodule but `training`, and the
    # settings are the attack's parameters but verbose and n_jobs, sorted, with their
    # values' repr.
    import hashlib

    import joblib

    _, _, X, _ = digits
    module, cache = trained_cnn.module_, AttackCache()
    attack = ResistanceAttack(max_iter=40, batch_size=32, n_jobs=None)
    cache.attack(attack, module, X[:2], rank=1)

    def content(t):
        return str(t.dtype), tuple(t.shape), t.detach().contiguous().reshape(-1).view(
            torch.uint8).numpy()

    tensors = {name: content(t) for name, t in [*module.named_parameters(),
                                                *module.named_buffers()]}
    attributes = {name: {k: joblib.hash(v) for k, v in vars(sub).items()
                         if not k.startswith("_") and k != "training"}
                  for name, sub in module.named_modules()}
    fingerprint = joblib.hash((repr(module), tensors, attributes))
    settings = tuple(sorted((k, repr(v)) for k, v in attack.get_params().items()
                            if k not in ("verbose", "n_jobs")))
    prefix = repr((fingerprint, settings, 1)).encode()
    keys = [hashlib.blake2b(prefix + row.astype(np.float32).tobytes(),
                            digest_size=16).hexdigest() for row in X[:2]]
    assert sorted(cache._table.index) == sorted(keys)


def test_cache_sees_buffers_and_attributes_changed_in_place():
    # A temperature in a non-persistent buffer, or in a plain attribute, changes the logits
    # as a weight does: results cached before the change must not be returned after it.
    class Tempered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            self.register_buffer("temperature", torch.tensor(1.0), persistent=False)
            self.scale = 1.0

        def forward(self, x):
            return self.linear(x) * self.scale / self.temperature

    torch.manual_seed(0)
    module, cache = Tempered(), AttackCache()
    X = np.random.RandomState(0).rand(5, 4).astype(np.float32)
    before = cache.attack(ATTACK, module, X)
    for change in (lambda: module.temperature.fill_(0.05), lambda: setattr(module, "scale",
                                                                          3.0)):
        change()
        after = cache.attack(ATTACK, module, X)
        fresh = ATTACK(module, torch.from_numpy(X))
        np.testing.assert_array_equal(after.res_n, fresh.res_n)
        assert not np.array_equal(after.res_n, before.res_n)
        before = after
    assert len(cache) == 15


def test_cache_with_a_path_saves_after_every_batch_and_resumes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    X = np.random.RandomState(3).rand(10, 4).astype(np.float32)
    attack = ResistanceAttack(max_iter=20, batch_size=4)
    path = tmp_path / "cache.npz"
    calls, interrupt_at = [], [2]
    original = ResistanceAttack.__call__

    def interrupted(self, module, X, **kwargs):
        calls.append(len(X))
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return original(self, module, X, **kwargs)

    monkeypatch.setattr(ResistanceAttack, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AttackCache(path).attack(attack, module, X)
    assert calls == [4, 4] and len(AttackCache.load(path)) == 4, "the first batch was kept"
    calls.clear()
    interrupt_at[0] = None
    resumed = AttackCache(path).attack(attack, module, X)
    assert calls == [4, 2], "only the images not kept yet are attacked"
    monkeypatch.setattr(ResistanceAttack, "__call__", original)
    fresh = attack(module, torch.from_numpy(X))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name),
                                      err_msg=name)


def test_cache_empty_save_and_load(tmp_path):
    AttackCache().save(tmp_path / "empty.npz")
    assert len(AttackCache.load(tmp_path / "empty.npz")) == 0


def test_cache_accepts_tensors_and_lists_as_arrays():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    X = np.random.RandomState(1).rand(6, 4).astype(np.float32)
    cache = AttackCache()
    expected = ATTACK(module, torch.from_numpy(X))
    for given in (torch.from_numpy(X), X.tolist()):
        result = cache.attack(ATTACK, module, given)
        np.testing.assert_array_equal(result.res_n, expected.res_n)
        np.testing.assert_array_equal(result.c0, expected.c0)
    assert len(cache) == 6, "a tensor, a list and an array of the same images share keys"


def test_cache_attacks_the_float32_images_it_keys_on():
    # Keys hold the float32 bytes of an image, so the cached result must be the one for
    # those bytes, also for a float64 module given float64 images: otherwise two images
    # that round to one key would get whichever result was computed first.
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3)).double()
    X = np.random.RandomState(2).rand(6, 4)
    result = AttackCache().attack(ATTACK, module, X)
    rounded = ATTACK(module, torch.from_numpy(X.astype(np.float32).astype(np.float64)))
    np.testing.assert_array_equal(result.res_n, rounded.res_n)
    np.testing.assert_array_equal(result.conf0, rounded.conf0)
