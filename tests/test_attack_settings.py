"""ResistanceAttack's settings: documented defaults, the edges of what it accepts, preprocessing,
the progress bar's count, and the types of its results."""

import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from resistclf import AttackResult, ResistanceAttack


def test_attack_defaults_are_the_documented_ones():
    assert ResistanceAttack().get_params() == {
        "max_iter": 500, "step_size": 0.15, "norm": "l2", "thresholds": (0.2, 0.9),
        "clip": None, "preprocessing": None, "optimizer": "sgd", "batch_size": 256,
        "precision": "float32", "early_exit": None, "channels_last": False, "device": None,
        "n_jobs": None, "verbose": False,
    }


@pytest.mark.parametrize("params", [
    {"max_iter": 1}, {"step_size": 1e-9}, {"batch_size": 1}, {"early_exit": 1},
    {"n_jobs": 1}, {"thresholds": (0.0, 1.0)}, {"thresholds": [0.5, 0.5]},
    {"clip": [-1.0, 1.0]}, {"device": "cpu"}, {"device": torch.device("cpu")},
    {"norm": "l1"}, {"norm": "linf"}, {"optimizer": "adam"}, {"precision": "bfloat16"},
    {"precision": "float16"}, {"preprocessing": {}}, {"channels_last": True},
], ids=str)
def test_attack_accepts_settings_at_the_edges(params):
    result = ResistanceAttack(**{"max_iter": 3, **params})(nn.Linear(4, 3), torch.rand(2, 4))
    assert len(result) == 2


@pytest.mark.parametrize("params, match", [
    ({"step_size": 0.0}, "step_size"),
    ({"thresholds": (-0.1, 0.5)}, "thresholds must be two numbers"),
    ({"thresholds": (0.2, 1.1)}, "thresholds must be two numbers"),
    ({"thresholds": ("a", 0.5)}, "thresholds must be two numbers"),
    ({"thresholds": (0.1, 0.2, 0.3)}, "thresholds must be two numbers"),
    ({"clip": (0.0, 0.0)}, "clip must be None or a pair"),
    ({"clip": (0.0, 1.0, 2.0)}, "clip must be None or a pair"),
    ({"device": 3}, "device"),
    ({"preprocessing": "imagenet"}, "preprocessing"),
])
def test_attack_rejects_settings_past_the_edges(params, match):
    with pytest.raises(ValueError, match=match):
        ResistanceAttack(**params)(nn.Linear(4, 3), torch.rand(2, 4))


@pytest.mark.parametrize("preprocessing, match", [
    ({"mean": 0.5, "scale": 2.0}, r"takes the keys mean, std and axis; got \['scale'\]"),
    ({"mean": "grey"}, "mean and std must be numbers or sequences of numbers"),
    ({"std": 0.0}, "std must be positive and finite, and mean finite"),
    ({"std": (1.0, -1.0), "axis": -3}, "std must be positive and finite, and mean finite"),
    ({"mean": float("nan")}, "std must be positive and finite, and mean finite"),
    ({"mean": (0.5, 0.5), "axis": 0}, "axis must be a negative integer"),
    ({"mean": (0.5, 0.5), "axis": -1.0}, "axis must be a negative integer"),
    ({"mean": [[0.5, 0.5]], "axis": -3}, "axis must be a negative integer"),
    ({"std": [[1.0, 1.0]], "axis": -3}, "axis must be a negative integer"),
    ({"mean": (0.1, 0.2, 0.3)}, r"mean of shape \(3,\) does not broadcast to a sample of shape "
                                r"\(2, 4, 2\); give axis=-3"),
    ({"std": (1.0, 2.0, 3.0), "axis": -3}, r"std of shape \(3, 1, 1\) does not broadcast"),
    ({"mean": np.zeros((1, 2, 4, 2))}, r"mean of shape \(1, 2, 4, 2\) does not broadcast"),
], ids=lambda value: re.sub(r"\W+", "-", str(value)).strip("-")[:40])
def test_attack_rejects_bad_preprocessing(preprocessing, match):
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=match):
        ResistanceAttack(max_iter=2, preprocessing=preprocessing)(module, torch.rand(2, 2, 4, 2))


class _Records(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.seen = nn.Linear(16, 3), []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("preprocessing, mean, std", [
    ({"std": 2.0}, 0.0, 2.0),
    ({"mean": 0.5}, 0.5, 1.0),
    ({"mean": [0.5, -1.0], "std": [2.0, 4.0], "axis": -3}, [[[0.5]], [[-1.0]]],
     [[[2.0]], [[4.0]]]),
    ({"mean": [0.1, 0.2], "axis": -1}, [0.1, 0.2], 1.0),
    ({"mean": np.full((2, 4, 2), 0.25)}, 0.25, 1.0),
])
def test_attack_preprocessing_is_what_the_module_sees(preprocessing, mean, std):
    module, X = _Records(), torch.rand(3, 2, 4, 2)
    attack = ResistanceAttack(max_iter=1, preprocessing=preprocessing)
    attack(module, X)
    expected = (X - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(module.seen[0][:3], expected.float())
    wrapped = attack.preprocessed(module, (2, 4, 2))
    torch.testing.assert_close(wrapped(X)[0], module.linear(expected.float().flatten(1))[0])
    assert ResistanceAttack().preprocessed(module, (2, 4, 2)) is module


def test_attack_preprocessing_follows_the_module_dtype():
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    wrapped = ResistanceAttack(preprocessing={"mean": 0.5, "std": 2.0}).preprocessed(
        module, (2, 4, 2))
    assert wrapped.mean.dtype == wrapped.std.dtype == torch.float64
    attack = ResistanceAttack(max_iter=3, preprocessing={"mean": 0.5})
    result = attack(module, torch.rand(2, 2, 4, 2).double())
    assert len(result) == 2


def test_attack_preprocessing_takes_any_real_numbers():
    X = torch.rand(3, 2, 4, 2)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    attack = ResistanceAttack(max_iter=5, batch_size=4)
    as_floats = clone(attack).set_params(preprocessing={"mean": 0.5, "std": 0.25})(module, X)
    as_fractions = clone(attack).set_params(
        preprocessing={"mean": Fraction(1, 2), "std": [Fraction(1, 4)]})(module, X)
    np.testing.assert_array_equal(as_fractions.res_n, as_floats.res_n)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_attack_precision_runs_the_module_in_that_dtype(precision):
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = set()
    module[0].register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 must not ask for an autocast it then refuses
        result = ResistanceAttack(max_iter=3, batch_size=4, precision=precision)(
            module, torch.rand(3, 4))
    assert seen == {getattr(torch, precision)}
    assert result.res_n.dtype == np.float64  # the bookkeeping stays in float32 or wider


@pytest.mark.parametrize("early_exit", [None, 3])
def test_attack_progress_bar_counts_every_image_once(capsys, early_exit):
    module = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        module[0].weight.mul_(20.0)
    attack = ResistanceAttack(max_iter=30, batch_size=4, early_exit=early_exit, verbose=True)
    attack(module, torch.rand(10, 4, generator=torch.Generator().manual_seed(0)))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "resistance attack" in bar and "10.0/10 img" in bar, bar


def test_attack_progress_bar_is_off_unless_verbose(capsys):
    ResistanceAttack(max_iter=3, batch_size=4)(nn.Linear(4, 3), torch.rand(5, 4))
    assert capsys.readouterr().err == ""


def test_attack_result_types_length_and_slices():
    result = ResistanceAttack(max_iter=5, batch_size=4)(nn.Linear(4, 3), torch.rand(6, 4))
    assert len(result) == 6
    for name in ("res_n", "res_max", "res_mean", "conf0"):
        assert getattr(result, name).dtype == np.float64, name
    for name in ("res_min", "adversarial_class", "c0"):
        assert getattr(result, name).dtype == np.int64, name
    assert result.flipped.dtype == bool
    assert result.conf_trace is None and result.norm_trace is None
    part = result[np.array([4, 1])]
    assert len(part) == 2 and part.conf_trace is None
    np.testing.assert_array_equal(part.res_n, result.res_n[[4, 1]])
    traced = ResistanceAttack(max_iter=5, batch_size=4)(nn.Linear(4, 3), torch.rand(6, 4),
                                                         return_trace=True)
    np.testing.assert_array_equal(traced[1:3].norm_trace, traced.norm_trace[1:3])
    joined = AttackResult.concatenate([traced[:2], traced[2:]])
    np.testing.assert_array_equal(joined.conf_trace, traced.conf_trace)
    assert AttackResult.concatenate([result[:2], result[2:]]).conf_trace is None
    alone = AttackResult.concatenate([traced])  # one part: a parallel attack of one task
    np.testing.assert_array_equal(alone.norm_trace, traced.norm_trace)
    np.testing.assert_array_equal(alone.res_n, traced.res_n)


@pytest.mark.parametrize("names", [("res_mean",), ("res_min", "res_n"), ["res_max"]])
def test_attack_result_feature_matrix_columns(names):
    result = ResistanceAttack(max_iter=5, batch_size=4)(nn.Linear(4, 3), torch.rand(6, 4))
    matrix = result.feature_matrix(names)
    assert matrix.dtype == np.float64 and matrix.shape == (6, len(names))
    for column, name in enumerate(names):
        np.testing.assert_array_equal(matrix[:, column], getattr(result, name))
    np.testing.assert_array_equal(result.features, result.feature_matrix(
        ("res_n", "res_max", "res_min")))


@pytest.mark.parametrize("names", ["res_n", (), ("res_n", "margin")], ids=str)
def test_attack_result_feature_matrix_rejects_unknown_names(names):
    result = ResistanceAttack(max_iter=2, batch_size=4)(nn.Linear(4, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="features must be a non-empty sequence of names"):
        result.feature_matrix(names)
