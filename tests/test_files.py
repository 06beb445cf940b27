"""Files the project reads back are never unpickled: a planted pickle gives a clear error
(the library) or a warning and a recomputation (the study commands), and its code never
runs. Files are written whole or not at all.

Every file the project reads, and the test that plants a pickle there:

- an attack cache, ``AttackCache.load`` and ``AttackCache(path)``:
  test_attack_cache_load_refuses_planted_files
- every file of a ``ResultStore`` (``--cache`` of the study commands): per-row tables
  (attacks, logits, competitors), arrays (adversarial examples, corrupted images), JSON
  (training records, histories) and weights: test_result_store_planted_files_are_recomputed,
  test_reproduce_recomputes_over_planted_files
- the reference net's weights and record in a store (``reference_net``: every command, the
  bench and the step-size sweep): test_reference_net_planted_weights_are_retrained,
  test_reference_net_planted_info_is_recomputed
"""

import json
import os
import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from resistclf import AttackCache, ResistanceAttack, ResultStore
from resistclf._cache import atomic_write
from resistclf.models import SimpleCNN
from resistclf.reports._reference import load_dataset, reference_net

from .conftest import copy_net


class Planted:
    """Unpickling this creates the file ``marker``: a stand-in for any code at all."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path, marker, kind):
    """Write to ``path`` a file whose loading with pickle would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pickle":
        path.write_bytes(pickle.dumps(Planted(marker)))
    elif kind == "joblib":
        joblib.dump(Planted(marker), path)
    elif kind == "torch":  # a zip archive holding the pickle, as torch.save writes
        torch.save({"weight": Planted(marker)}, path)
    elif kind == "npz":  # an object array, pickled inside an .npz archive
        with open(path, "wb") as file:
            np.savez(file, format=np.array([Planted(marker)], dtype=object),
                     keys=np.array([Planted(marker)], dtype=object))
    return path


KINDS = ["pickle", "joblib", "torch", "npz"]
FIELDS = ["res_n", "res_max", "res_min", "res_mean", "adversarial_class", "c0", "conf0",
          "flipped"]
# The unsafe readers the project must never use, here only to prove that each plant, which
# this file writes itself into tmp_path, would run its code if one of them read it.
UNSAFE_LOADERS = {
    "pickle": lambda path: pickle.loads(path.read_bytes()),
    "joblib": joblib.load,
    "torch": lambda path: torch.load(path, weights_only=False),
    "npz": lambda path: np.load(path, allow_pickle=True)["keys"],
}


@pytest.fixture
def marker(tmp_path):
    marker = tmp_path / "planted-code-ran"
    yield marker
    assert not marker.exists(), "the planted pickle was loaded"


@pytest.mark.parametrize("kind", KINDS)
def test_planted_files_run_code_when_unpickled(tmp_path, kind):
    """The plants are live: loading them with pickle would run their code."""
    marker = tmp_path / "ran"
    UNSAFE_LOADERS[kind](plant(tmp_path / "planted", marker, kind))
    assert marker.exists()


# ------------------------------------------------------------------------- library

@pytest.mark.parametrize("kind", KINDS)
def test_attack_cache_load_refuses_planted_files(tmp_path, marker, kind):
    path = plant(tmp_path / "attack-cache.npz", marker, kind)
    with pytest.raises(ValueError, match=f"{path} is not an attack cache"):
        AttackCache.load(path)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda file: file.write(b"not an archive"), "pickled"),
        (lambda file: np.save(file, np.arange(3)), "single array"),
        (lambda file: np.savez(file, results=np.arange(3)), "format"),
        (lambda file: np.savez(file, format=np.array("resistclf.AttackCache/1"),
                               keys=np.array(["a"]), **{name: np.arange(1) for name in FIELDS}),
         "format 'resistclf.AttackCache/2'"),
        (lambda file: np.savez(file, format=np.array("resistclf.AttackCache/2"),
                               keys=np.array(["a", "b"])), "do not line up"),
        (lambda file: np.savez(file, format=np.array("resistclf.AttackCache/2"),
                               keys=np.arange(2), **{name: np.arange(2) for name in FIELDS}),
         "do not line up"),
    ],
)
def test_attack_cache_load_names_a_foreign_file(tmp_path, write, match):
    path = tmp_path / "cache.npz"
    with open(path, "wb") as file:
        write(file)
    with pytest.raises(ValueError, match=f"{path} is not an attack cache.*{match}"):
        AttackCache.load(path)


def test_attack_cache_load_names_a_truncated_file(tmp_path, trained_cnn, digits):
    cache = AttackCache()
    cache.attack(ResistanceAttack(max_iter=3, batch_size=8), trained_cnn.module_, digits[2][:4])
    cache.save(tmp_path / "cache.npz")
    data = (tmp_path / "cache.npz").read_bytes()
    (tmp_path / "cache.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{tmp_path / 'cache.npz'} is not an attack cache"):
        AttackCache.load(tmp_path / "cache.npz")


def test_attack_cache_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        AttackCache.load(tmp_path / "nothing.npz")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_write(path) as file:
        file.write(b"half of the new")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"], "the temporary file was left behind"


def test_attack_cache_save_is_atomic(tmp_path, monkeypatch, trained_cnn, digits):
    cache = AttackCache()
    cache.attack(ResistanceAttack(max_iter=3, batch_size=8), trained_cnn.module_, digits[2][:4])
    cache.save(tmp_path / "cache.npz")
    before = (tmp_path / "cache.npz").read_bytes()

    def savez_then_crash(file, **arrays):
        file.write(b"PK partial archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(OSError, match="disk full"):
        cache.save(tmp_path / "cache.npz")
    assert (tmp_path / "cache.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["cache.npz"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_permissions_the_umask_leaves(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        with atomic_write(tmp_path / "shared.npz") as file:
            file.write(b"data")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.npz").stat().st_mode & 0o777 == mode


# ------------------------------------------------------------------ the result store

def _store_files(store):
    return sorted(path for path in store.folder.iterdir() if not path.name.startswith("."))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["rows", "arrays", "json", "tensors"])
def test_result_store_planted_files_are_recomputed(tmp_path, marker, kind, method):
    store = ResultStore(tmp_path / "store")
    X = np.ones((3, 2), dtype=np.float32)
    compute = {"rows": lambda: store.rows("table", "s", X, lambda rows: {"v": rows[:].sum(1)}),
               "arrays": lambda: store.arrays("value", "s", lambda: {"v": np.arange(3)}),
               "json": lambda: store.json("value", "s", lambda: {"v": [0, 1, 2]}),
               "tensors": lambda: store.tensors("value", "s", lambda: {"v": torch.arange(3)})}
    first = compute[method]()
    (path,) = _store_files(store)
    plant(path, marker, kind)
    store = ResultStore(tmp_path / "store")  # a fresh store reads the file
    with pytest.warns(UserWarning, match=f"Ignoring {path}"):
        again = compute[method]()
    assert str(again["v"]) == str(first["v"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file was replaced by a sound one
        ResultStore(tmp_path / "store") and compute[method]()


def test_result_store_file_cut_short_is_recomputed(tmp_path):
    store = ResultStore(tmp_path)
    X = np.ones((3, 2), dtype=np.float32)
    store.rows("table", "s", X, lambda rows: {"v": rows[:].sum(1)})
    path = tmp_path / "table.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(UserWarning, match=f"Ignoring {path}: .* is not a table of results"):
        values = ResultStore(tmp_path).rows("table", "s", X, lambda rows: {"v": rows[:].sum(1)})
    np.testing.assert_array_equal(values["v"], [2, 2, 2])


# ------------------------------------------------------------------ study commands

@pytest.fixture(scope="module")
def small_mnist(fake_mnist_root):
    X_train, y_train, X_test, y_test = load_dataset("mnist", fake_mnist_root)
    return X_train[:200], y_train[:200], X_test[:20], y_test[:20]


def _small_net(small_mnist, folder, epochs=1):
    X, y, _, _ = small_mnist
    return reference_net(X, y, store=ResultStore(folder), epochs=epochs, verbose=False,
                         module_params={"channels": (4, 8), "hidden": 16})


def _net_file(folder):
    (path,) = Path(folder).glob("net-*.pt")
    return path


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_reference_net_planted_weights_are_retrained(tmp_path, small_mnist, marker, kind):
    net, _ = _small_net(small_mnist, tmp_path)
    trained = {name: value.clone() for name, value in net.module_.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound file is reused silently
        again, _ = _small_net(small_mnist, tmp_path)
    assert all(torch.equal(again.module_.state_dict()[k], v) for k, v in trained.items())

    path = plant(_net_file(tmp_path), marker, kind)
    with pytest.warns(UserWarning, match=f"Ignoring {path}"):
        retrained, _ = _small_net(small_mnist, tmp_path)
    # Trained again, from the same seed; and saved as plain weights.
    assert all(torch.equal(retrained.module_.state_dict()[k], v) for k, v in trained.items())
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in trained.items())


def test_reference_net_weights_of_another_net_are_retrained(tmp_path, small_mnist):
    _small_net(small_mnist, tmp_path)
    path = _net_file(tmp_path)
    torch.save(SimpleCNN(channels=(2, 2), hidden=4).state_dict(), path)
    with pytest.warns(UserWarning, match="they are not the weights of SimpleCNN"):
        net, _ = _small_net(small_mnist, tmp_path)
    assert net.module_.state_dict().keys() == torch.load(path, weights_only=True).keys()


def test_reference_net_cut_short_is_not_kept(tmp_path, small_mnist, monkeypatch):
    # skorch ends fit quietly on Ctrl-C; a net trained for fewer epochs must stop the
    # command, and must never be kept as the trained net.
    from skorch import NeuralNet

    fit_loop = NeuralNet.fit_loop

    def interrupted(self, X, y=None, epochs=None, **kwargs):
        return fit_loop(self, X, y, epochs=1, **kwargs)

    monkeypatch.setattr(NeuralNet, "fit_loop", interrupted)
    with pytest.raises(KeyboardInterrupt, match="stopped after 1 of 2 epochs"):
        _small_net(small_mnist, tmp_path, epochs=2)
    assert not list(tmp_path.glob("net-*")), "nothing kept"


def test_reference_net_records_its_thread_count_and_reuses_the_net_under_another(
        tmp_path, small_mnist):
    # Training rounds differently with another number of threads: the count is recorded,
    # and a kept net is reused whatever the count now, so that reports keep their net.
    threads = torch.get_num_threads()
    _, info = _small_net(small_mnist, tmp_path)
    assert info["torch_threads"] == threads
    try:
        torch.set_num_threads(threads + 1)
        _, reused = _small_net(small_mnist, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert reused == info


def test_reference_net_loaded_from_its_weights_knows_its_classes(tmp_path, small_mnist):
    # Loading skips fit, where skorch learns the classes: the bench's verdicts need them.
    trained, _ = _small_net(small_mnist, tmp_path)
    loaded, _ = _small_net(small_mnist, tmp_path)
    np.testing.assert_array_equal(loaded.classes_, trained.classes_)
    np.testing.assert_array_equal(loaded.classes_, np.arange(10))


def test_reference_net_planted_info_is_recomputed(tmp_path, small_mnist, marker):
    _small_net(small_mnist, tmp_path)
    (path,) = tmp_path.glob("net-*.json")
    plant(path, marker, "pickle")
    with pytest.warns(UserWarning, match=f"Ignoring {path}"):
        _, info = _small_net(small_mnist, tmp_path)
    assert info["epochs"] == 1


def test_reproduce_recomputes_over_planted_files(fake_mnist_root, fake_mnist_net, tmp_path,
                                                 marker):
    from resistclf.reports.reproduce import run_reproduce

    out, cache = tmp_path / "report", tmp_path / "cache"
    copy_net(fake_mnist_net, cache)
    for name in ("resistance-rank0", "logits", "competitor-DeepFool"):
        plant(cache / f"{name}.npz", marker, "npz")
    with pytest.warns(UserWarning) as caught:
        results = run_reproduce("mnist", fake_mnist_root, out=out, cache=cache, limit=150,
                                max_iter=10, n_resamples=10, verbose=False)
    ignored = {str(w.message).split(":")[0] for w in caught if "Ignoring" in str(w.message)}
    assert ignored == {f"Ignoring {cache / name}.npz" for name in (
        "resistance-rank0", "logits", "competitor-DeepFool")}
    assert results["n_test"] == 150
    assert json.loads((out / "results.json").read_text())["n_test"] == 150
