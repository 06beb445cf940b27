import time

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from resistclf import ResistanceAttack, ResistanceMonitor
from resistclf._nets import ProbaToLogits
from resistclf.models import SimpleCNN

from .conftest import tiny_cnn_net

FAST = ResistanceAttack(max_iter=30, batch_size=100)


def _train(digits, callbacks, epochs=5):
    X, y, _, _ = digits
    net = tiny_cnn_net(max_epochs=epochs).set_params(callbacks=callbacks)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return net.fit(X, y)


@pytest.fixture(scope="module")
def monitored(digits):
    _, _, X_val, y_val = digits
    monitor = ResistanceMonitor(X_val[:100], y_val[:100], attack=FAST)
    return _train(digits, [("resistance", monitor)]), monitor


def test_monitor_records_every_key_every_epoch(monitored):
    net, monitor = monitored
    assert monitor.keys_ == [f"resistance_{key}" for key in [
        "accuracy", "n_errors", "res_n_mean_correct", "res_n_mean_incorrect",
        "res_n_q10_correct", "res_n_q50_correct", "res_n_q90_correct",
        "res_n_q10_incorrect", "res_n_q50_incorrect", "res_n_q90_incorrect",
        "auroc_res_n", "auroc_max_softmax", "correction_rate", "flip_rate", "seconds"]]
    for key in monitor.keys_:
        assert len(net.history[:, key]) == 5, key


def test_monitor_values_match_a_direct_attack_and_change_across_epochs(monitored, digits):
    net, _ = monitored
    _, _, X_val, y_val = digits
    X_val, y_val = X_val[:100], y_val[:100]
    # The last epoch's entries are those of the trained net.
    result = FAST(net.module_, torch.from_numpy(X_val))
    is_error = result.c0 != y_val
    assert net.history[-1, "resistance_n_errors"] == is_error.sum()
    assert net.history[-1, "resistance_accuracy"] == pytest.approx(1 - is_error.mean())
    assert net.history[-1, "resistance_res_n_mean_correct"] == pytest.approx(
        result.res_n[~is_error].mean())
    assert net.history[-1, "resistance_res_n_q50_correct"] == pytest.approx(
        np.median(result.res_n[~is_error]))
    assert net.history[-1, "resistance_flip_rate"] == pytest.approx(result.flipped.mean())
    # Training moves the net, so what the monitor sees moves too.
    accuracy = net.history[:, "resistance_accuracy"]
    assert accuracy[-1] > accuracy[0]
    assert len(set(net.history[:, "resistance_res_n_mean_correct"])) > 1
    assert len(set(net.history[:, "resistance_auroc_res_n"])) > 1


def test_monitor_leaves_training_unchanged(monitored, digits):
    net, _ = monitored
    plain = _train(digits, [])
    np.testing.assert_allclose(plain.history[:, "train_loss"], net.history[:, "train_loss"],
                               rtol=1e-6)


def test_monitor_undefined_values_are_nan(monitored, digits):
    # On images the net gets all right there is no error to detect or correct.
    net, _ = monitored
    _, _, X_val, y_val = digits
    right = net.predict(X_val) == y_val
    monitor = ResistanceMonitor(X_val[right][:20], y_val[right][:20], name="all_right",
                                attack=ResistanceAttack(max_iter=5, batch_size=20)).initialize()
    monitor.on_epoch_end(net)
    assert net.history[-1, "all_right_n_errors"] == 0
    assert net.history[-1, "all_right_accuracy"] == 1
    for key in ["res_n_mean_incorrect", "res_n_q50_incorrect", "auroc_res_n",
                "auroc_max_softmax", "correction_rate"]:
        assert np.isnan(net.history[-1, f"all_right_{key}"]), key
    assert not np.isnan(net.history[-1, "all_right_res_n_mean_correct"])


def test_monitor_does_not_modify_its_inputs(digits):
    _, _, X_val, y_val = digits
    X, y = X_val[:20].copy(), y_val[:20].copy()
    _train(digits, [ResistanceMonitor(X, y, attack=ResistanceAttack(max_iter=5,
                                                                    batch_size=20))], epochs=1)
    np.testing.assert_array_equal(X, X_val[:20])
    np.testing.assert_array_equal(y, y_val[:20])


@pytest.mark.parametrize("params, error, match", [
    ({"X_val": np.zeros((0, 1, 8, 8))}, ValueError, "X_val must hold at least one sample"),
    ({"X_val": np.zeros(5)}, ValueError, "X_val must hold at least one sample"),
    ({"y_val": np.zeros(3)}, ValueError, r"y_val must have shape \(n_samples,\) = \(10,\)"),
    ({"attack": "fast"}, TypeError, "attack must be a ResistanceAttack or None"),
    ({"quantiles": (0.1, 1.5)}, ValueError, "quantiles must be a non-empty tuple"),
    ({"quantiles": ()}, ValueError, "quantiles must be a non-empty tuple"),
    ({"name": ""}, ValueError, "name must be a non-empty string"),
])
def test_monitor_rejects_bad_parameters(params, error, match):
    kwargs = {"X_val": np.zeros((10, 1, 8, 8), np.float32), "y_val": np.zeros(10), **params}
    X_val, y_val = kwargs.pop("X_val"), kwargs.pop("y_val")
    with pytest.raises(error, match=match):
        ResistanceMonitor(X_val, y_val, **kwargs).initialize()


def test_monitor_records_detection_and_correction_values(monitored, digits):
    net, _ = monitored
    _, _, X_val, y_val = digits
    X_val, y_val = X_val[:100], y_val[:100]
    result = FAST(net.module_, torch.from_numpy(X_val))
    is_error = result.c0 != y_val
    assert 0 < is_error.sum() < 100
    # Recorded here rather than read from the fixture's training: mutation testing runs, for
    # a mutant of on_epoch_end, only the tests that call it themselves.
    ResistanceMonitor(X_val, y_val, attack=FAST, name="check").initialize().on_epoch_end(net)
    last = net.history[-1]
    assert last["check_auroc_res_n"] == pytest.approx(roc_auc_score(is_error, -result.res_n))
    assert last["check_auroc_max_softmax"] == pytest.approx(
        roc_auc_score(is_error, -result.conf0))
    assert last["check_correction_rate"] == pytest.approx(
        np.mean(result.adversarial_class[is_error] == y_val[is_error]))
    assert last["check_flip_rate"] == pytest.approx(np.mean(result.flipped))
    assert last["check_res_n_mean_incorrect"] == pytest.approx(result.res_n[is_error].mean())
    for q in (10, 50, 90):
        for group, mask in (("correct", ~is_error), ("incorrect", is_error)):
            assert last[f"check_res_n_q{q}_{group}"] == pytest.approx(
                np.quantile(result.res_n[mask], q / 100)), (q, group)
    assert last["check_seconds"] >= 0


def test_monitor_quantiles_and_name_set_the_keys(monitored, digits):
    net, _ = monitored
    _, _, X_val, y_val = digits
    monitor = ResistanceMonitor(X_val[:30], y_val[:30], quantiles=(0.25, 0.975), name="m",
                                attack=ResistanceAttack(max_iter=10, batch_size=30))
    start = time.perf_counter()
    monitor.initialize().on_epoch_end(net)
    took = time.perf_counter() - start
    assert 0 <= net.history[-1, "m_seconds"] <= took + 0.01
    assert monitor.keys_[4:8] == ["m_res_n_q25_correct", "m_res_n_q97.5_correct",
                                  "m_res_n_q25_incorrect", "m_res_n_q97.5_incorrect"]
    result = ResistanceAttack(max_iter=10, batch_size=30)(net.module_,
                                                           torch.from_numpy(X_val[:30]))
    correct = result.c0 == y_val[:30]
    assert net.history[-1, "m_res_n_q97.5_correct"] == pytest.approx(
        np.quantile(result.res_n[correct], 0.975))
    assert net.history[-1, "m_accuracy"] == pytest.approx(correct.mean())


def _monitored_net(digits, monitor, **params):
    X, y, _, _ = digits
    net = tiny_cnn_net(max_epochs=1).set_params(callbacks=[monitor], **params)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return net.fit(X[:300], y[:300])


@pytest.mark.parametrize("classes", [[], list("abcdefghij")], ids=["no-classes", "letters"])
def test_monitor_compares_in_the_nets_labels(digits, classes):
    # skorch's classes_ name the module's outputs; without them, outputs are the labels.
    _, _, X_val, y_val = digits
    labels = np.array(classes) if classes else np.arange(10)
    monitor = ResistanceMonitor(X_val[:40], labels[y_val[:40]],
                                attack=ResistanceAttack(max_iter=10, batch_size=40))
    net = _monitored_net(digits, monitor, classes=classes)
    result = ResistanceAttack(max_iter=10, batch_size=40)(net.module_,
                                                          torch.from_numpy(X_val[:40]))
    is_error = result.c0 != y_val[:40]
    assert net.history[-1, "resistance_accuracy"] == pytest.approx(1 - is_error.mean())
    assert net.history[-1, "resistance_correction_rate"] == pytest.approx(
        np.mean(result.adversarial_class[is_error] == y_val[:40][is_error]))


class _ProbaCNN(SimpleCNN):
    def forward(self, x):
        return super().forward(x).softmax(dim=1)


def test_monitor_attacks_the_log_probabilities_of_a_probability_net(digits):
    _, _, X_val, y_val = digits
    monitor = ResistanceMonitor(X_val[:40], y_val[:40], attack=FAST)
    # 8 epochs: after 1 the net is less than thresholds[0] sure of every image, and the
    # attack leaves them all alone, whatever it takes the module's outputs for.
    net = _monitored_net(digits, monitor, module=_ProbaCNN, criterion=nn.NLLLoss, max_epochs=8)
    result = FAST(ProbaToLogits(net.module_), torch.from_numpy(X_val[:40]))
    correct = result.c0 == y_val[:40]
    assert result.flipped.any()
    assert net.history[-1, "resistance_flip_rate"] == pytest.approx(result.flipped.mean())
    assert net.history[-1, "resistance_res_n_mean_correct"] == pytest.approx(
        result.res_n[correct].mean())


def test_monitor_default_attack_is_the_default_resistance_attack(monitored, digits):
    net, _ = monitored
    _, _, X_val, y_val = digits
    monitor = ResistanceMonitor(X_val[:4], y_val[:4], name="default").initialize()
    monitor.on_epoch_end(net)
    result = ResistanceAttack()(net.module_, torch.from_numpy(X_val[:4]))
    assert net.history[-1, "default_flip_rate"] == pytest.approx(result.flipped.mean())
    assert net.history[-1, "default_res_n_mean_correct"] == pytest.approx(
        result.res_n[result.c0 == y_val[:4]].mean())


@pytest.mark.parametrize("quantiles", [(0.0, 1.0), [0.5]], ids=str)
def test_monitor_accepts_quantiles_at_the_edges(quantiles):
    monitor = ResistanceMonitor(np.zeros((3, 1, 8, 8)), np.zeros(3), quantiles=quantiles)
    assert len(monitor.initialize().keys_) == 9 + 2 * len(quantiles)


@pytest.mark.parametrize("params, error, match", [
    ({"quantiles": ("a",)}, ValueError, "quantiles must be a non-empty tuple"),
    ({"quantiles": 0.5}, ValueError, "quantiles must be a non-empty tuple"),
    ({"quantiles": (-0.1,)}, ValueError, "quantiles must be a non-empty tuple"),
    ({"name": 3}, ValueError, "name must be a non-empty string"),
])
def test_monitor_rejects_more_bad_parameters(params, error, match):
    with pytest.raises(error, match=match):
        ResistanceMonitor(np.zeros((3, 1, 8, 8)), np.zeros(3), **params).initialize()


def test_monitor_accepts_flat_samples():
    monitor = ResistanceMonitor(np.zeros((3, 64)), np.zeros(3)).initialize()
    assert len(monitor.keys_) == 15


def test_monitor_seconds_is_the_time_it_took(monitored, digits, monkeypatch):
    net, _ = monitored
    _, _, X_val, y_val = digits
    monitor = ResistanceMonitor(X_val[:4], y_val[:4], name="clocked",
                                attack=ResistanceAttack(max_iter=2, batch_size=4)).initialize()
    readings = iter([10.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(readings, 12.3456))
    monitor.on_epoch_end(net)
    assert net.history[-1, "clocked_seconds"] == pytest.approx(2.3456, abs=0.005)
