"""Confidence scores other than resistance: from logits, and attack-based distances."""

from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch
import torchattacks
from scipy.special import logsumexp, softmax
from torch import nn

from resistclf.scores import (
    SOFTMAX_SCORES,
    deepfool,
    doctor_alpha,
    doctor_beta,
    energy,
    entropy,
    input_margin,
    negative_logit_margin,
    negative_max_logit,
    one_minus_max_softmax,
    one_minus_softmax_margin,
    softmax_scores,
)


def direct_formulas(z):
    """Each logit score straight from its textbook definition."""
    p = softmax(z, axis=1)
    top2 = np.sort(p, axis=1)[:, ::-1]
    logit_top2 = np.sort(z, axis=1)[:, ::-1]
    g = (p**2).sum(axis=1)
    return {
        "max-softmax": 1 - p.max(axis=1),
        "max-logit": -z.max(axis=1),
        "softmax margin": 1 - (top2[:, 0] - top2[:, 1]),
        "logit margin": -(logit_top2[:, 0] - logit_top2[:, 1]),
        "entropy": -(p * np.log(p)).sum(axis=1),
        "energy": -logsumexp(z, axis=1),
        "DOCTOR D_alpha": (1 - g) / g,
        "DOCTOR D_beta": (1 - p.max(axis=1)) / p.max(axis=1),
    }


def precise_formulas(row):
    """The same definitions in 60-digit decimal arithmetic, for logits far apart."""
    with localcontext() as context:
        context.prec = 60
        z = [Decimal(float(v)) for v in row]
        total = sum(v.exp() for v in z)
        p = sorted((v.exp() / total for v in z), reverse=True)
        g = sum(q * q for q in p)
        return {
            "max-softmax": 1 - p[0],
            "softmax margin": 1 - (p[0] - p[1]),
            "entropy": -sum(q * q.ln() for q in p),
            "energy": -total.ln(),
            "DOCTOR D_alpha": (1 - g) / g,
            "DOCTOR D_beta": (1 - p[0]) / p[0],
        }


# --------------------------------------------------------------- scores from logits

def test_softmax_scores_match_their_definitions():
    z = np.random.default_rng(0).normal(scale=3, size=(50, 7))
    expected = direct_formulas(z)
    computed = softmax_scores(z)
    assert list(computed) == list(SOFTMAX_SCORES) == list(expected)
    for name, function in SOFTMAX_SCORES.items():
        np.testing.assert_allclose(computed[name], expected[name], rtol=1e-12, atol=1e-14,
                                   err_msg=name)
        np.testing.assert_array_equal(function(z), computed[name])
        assert computed[name].dtype == np.float64 and computed[name].shape == (50,)


def test_softmax_scores_stay_exact_for_confident_predictions():
    # Gaps of 40 to 700 nats: float64 softmax rounds every p_max to exactly 1.
    z = np.array([[0.0, -40, -50], [0.0, -41, -50], [5.0, -60, -61], [0.0, -300, -301],
                  [0.0, -700, -700]])
    assert (softmax(z, axis=1).max(axis=1) == 1).all()
    computed = softmax_scores(z)
    for i, row in enumerate(z):
        for name, value in precise_formulas(row).items():
            assert computed[name][i] == pytest.approx(float(value), rel=1e-10), name
    for name in ("max-softmax", "softmax margin", "entropy", "DOCTOR D_alpha", "DOCTOR D_beta"):
        assert len(np.unique(computed[name])) == len(z), name
        assert (computed[name] > 0).all(), name


def test_softmax_scores_rank_a_doubtful_prediction_above_a_confident_one():
    z = np.array([[8.0, 0.0, -1.0], [1.0, 0.9, 0.8]])
    for name, score in softmax_scores(z).items():
        assert score[1] > score[0], name


def test_softmax_scores_accept_tensors_and_lists_without_changing_them():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.1, 3.0]], requires_grad=True)
    before = z.detach().clone()
    from_tensor = softmax_scores(z)
    from_list = softmax_scores(before.tolist())
    for name in SOFTMAX_SCORES:
        np.testing.assert_allclose(from_tensor[name], from_list[name], rtol=1e-12)
    assert torch.equal(z.detach(), before) and z.requires_grad


@pytest.mark.parametrize("logits, match", [
    (np.zeros(3), "shape"),
    (np.zeros((2, 1)), "n_classes >= 2"),
    (np.zeros((0, 3)), "n_samples >= 1"),
    (np.array([[0.0, np.nan]]), "finite"),
    (np.array([["a", "b"]]), "real numbers"),
])
@pytest.mark.parametrize("score", [one_minus_max_softmax, negative_max_logit,
                                   one_minus_softmax_margin, negative_logit_margin,
                                   entropy, energy, doctor_alpha, doctor_beta, softmax_scores])
def test_softmax_scores_reject_bad_logits(score, logits, match):
    with pytest.raises(ValueError, match=match):
        score(logits)


# --------------------------------------------------------------- attack-based distances

def linear_model(n_features=6, n_classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_features, n_classes).double()


def nearest_boundary(model, X, dual_norm):
    """Distance from each row of X to the nearest decision boundary of a linear model."""
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    z = X @ W.T + b
    distances = []
    for row, c in zip(z, z.argmax(axis=1)):
        distances.append(min((row[c] - row[j]) / dual_norm(W[c] - W[j])
                             for j in range(len(row)) if j != c))
    return np.array(distances)


@pytest.mark.parametrize("norm, dual_norm", [("l2", np.linalg.norm),
                                             ("linf", lambda w: np.abs(w).sum())])
def test_input_margin_is_exact_for_a_linear_model(norm, dual_norm):
    model = linear_model()
    X = np.random.default_rng(1).normal(size=(30, 6))
    margin = input_margin(model, X, norm=norm, batch_size=7)
    assert margin.dtype == np.float64
    np.testing.assert_allclose(margin, nearest_boundary(model, X, dual_norm), rtol=1e-12)


def test_deepfool_on_a_linear_model_is_the_margin_plus_overshoot():
    model = linear_model()
    X = torch.from_numpy(np.random.default_rng(2).normal(size=(25, 6)))
    result = deepfool(model, X, overshoot=0.05, batch_size=4)
    np.testing.assert_allclose(result.distance, 1.05 * input_margin(model, X), rtol=1e-12)
    assert result.success.all() and (result.n_iter == 1).all()
    assert (result.forward_passes == 2).all() and (result.backward_passes == 3).all()
    # The class reached is the one across the nearest boundary.
    z = model(X).detach().numpy()
    W = model.weight.detach().numpy()
    nearest = [min((j for j in range(4) if j != c),
                   key=lambda j: (row[c] - row[j]) / np.linalg.norm(W[c] - W[j]))
               for row, c in zip(z, z.argmax(axis=1))]
    np.testing.assert_array_equal(result.adversarial_class, nearest)


@pytest.fixture(scope="module")
def trained_mlp():
    """A small MLP on digits whose pixels are mapped into [0.25, 0.75], and 40 test images.

    DeepFool's steps stay inside [0, 1] there, so torchattacks' clipping does not bind.
    """
    from resistclf.datasets import load_digits_images
    from resistclf.models import MLP

    X, y = load_digits_images()
    X, y = 0.25 + 0.5 * torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(0)
    model = MLP(64, hidden=(64, 64))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(5):
        for i in range(0, 1500, 100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X[i : i + 100]), y[i : i + 100]).backward()
            optimizer.step()
    return model.eval(), X[1500:1540]


def test_deepfool_matches_torchattacks(trained_mlp):
    model, X = trained_mlp
    predicted = model(X).argmax(1)
    result = deepfool(model, X, clip=(0, 1), batch_size=16)
    adversarial = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(X, predicted)
    with torch.no_grad():
        reached = model(adversarial).argmax(1).numpy()
    assert (result.n_iter > 1).sum() >= 3  # some images need more than one step
    np.testing.assert_array_equal(result.success, reached != predicted.numpy())
    np.testing.assert_array_equal(result.adversarial_class, reached)
    np.testing.assert_allclose(result.distance, (adversarial - X).flatten(1).norm(dim=1),
                               rtol=1e-4)


def test_deepfool_does_not_depend_on_the_batch_size(trained_mlp):
    model, X = trained_mlp
    whole, split = deepfool(model, X), deepfool(model, X, batch_size=7)
    np.testing.assert_allclose(whole.distance, split.distance, rtol=1e-5)
    np.testing.assert_array_equal(whole.n_iter, split.n_iter)
    np.testing.assert_array_equal(whole.adversarial_class, split.adversarial_class)


class Stateful(nn.Module):
    """A module with dropout, batch norm and a frozen layer, to check what is restored."""

    def __init__(self, fail=False):
        super().__init__()
        self.fail = fail
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8),
                                    nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
        self.layers[1].weight.requires_grad_(False)

    def forward(self, x):
        if self.fail and not self.training:
            raise RuntimeError("boom")
        return self.layers(x)


def state(module):
    return ([m.training for m in module.modules()],
            [p.requires_grad for p in module.parameters()],
            [p.clone() for p in module.parameters()],
            [b.clone() for b in module.buffers()])


@pytest.mark.parametrize("attack", [input_margin, deepfool])
@pytest.mark.parametrize("fail", [False, True])
def test_attack_scores_restore_the_module_and_leave_inputs_alone(attack, fail):
    module = Stateful(fail=fail).train()
    before = state(module)
    X = np.random.default_rng(3).normal(size=(10, 2, 2)).astype(np.float32)
    X.flags.writeable = False
    X_copy = X.copy()
    X_tensor = torch.from_numpy(X_copy.copy()).requires_grad_(True)
    if fail:
        with pytest.raises(ValueError, match="boom"):
            attack(module, X)
    else:
        attack(module, X)
        attack(module, X_tensor)
        assert X_tensor.grad is None
        np.testing.assert_array_equal(X_tensor.detach().numpy(), X_copy)
    after = state(module)
    assert after[:2] == before[:2]
    for old, new in zip(before[2] + before[3], after[2] + after[3]):
        assert torch.equal(old, new)
    np.testing.assert_array_equal(X, X_copy)


def test_attack_scores_run_under_no_grad():
    model = linear_model()
    X = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        margin = input_margin(model, X)
        result = deepfool(model, X)
    assert np.isfinite(margin).all() and result.success.all()


@pytest.mark.parametrize("module, X, kwargs, error, match", [
    ("not a module", np.zeros((2, 6)), {}, TypeError, "torch.nn.Module"),
    (None, np.zeros(6), {}, ValueError, "at least one sample"),
    (None, np.zeros((0, 6)), {}, ValueError, "at least one sample"),
    (None, np.full((2, 6), np.nan), {}, ValueError, "finite"),
    (None, np.zeros((2, 6), dtype=bool), {}, ValueError, "real numbers"),
    (None, np.zeros((2, 5)), {}, ValueError, "cannot take input"),
    (None, np.zeros((2, 6)), {"batch_size": 0}, ValueError, "batch_size"),
    (None, np.zeros((2, 6)), {"batch_size": 2.0}, ValueError, "batch_size"),
])
@pytest.mark.parametrize("attack", [input_margin, deepfool])
def test_attack_scores_reject_bad_input(attack, module, X, kwargs, error, match):
    module = linear_model() if module is None else module
    with pytest.raises(error, match=match):
        attack(module, X, **kwargs)


@pytest.mark.parametrize("attack, kwargs, match", [
    (input_margin, {"norm": "l1"}, "^norm must be"),
    (input_margin, {"batch_size": 0}, "^batch_size must be a positive integer"),
    (deepfool, {"batch_size": -1}, "^batch_size must be a positive integer"),
    (deepfool, {"max_iter": 0}, "^max_iter must be a positive integer"),
    (deepfool, {"overshoot": -0.1}, "^overshoot must be"),
    (deepfool, {"overshoot": np.inf}, "^overshoot must be"),
    (deepfool, {"overshoot": True}, "^overshoot must be"),
    (deepfool, {"overshoot": "0.1"}, "^overshoot must be"),
    (deepfool, {"clip": (1, 0)}, "^clip must be"),
    (deepfool, {"clip": (0.5, 0.5)}, "^clip must be"),
])
def test_attack_scores_reject_bad_settings(attack, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attack(linear_model(), np.zeros((2, 6)), **kwargs)



# ------------------------------------------------------- dtypes, edge cases and settings

@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int8])
def test_softmax_scores_accept_float32_and_integer_logits(dtype):
    z = np.array([[3, -1, 0], [0, 2, 2], [-5, 4, 1]])
    expected = direct_formulas(z.astype(np.float64))
    for name, score in softmax_scores(z.astype(dtype)).items():
        assert score.dtype == np.float64, name
        np.testing.assert_allclose(score, expected[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_softmax_scores_accept_low_precision_tensors(dtype):
    # bfloat16 has no numpy dtype: the tensor must be converted to float64 in torch.
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.125, 3.0]], dtype=dtype)
    expected = direct_formulas(z.double().numpy())
    for name, score in softmax_scores(z).items():
        np.testing.assert_allclose(score, expected[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_softmax_scores_reject_complex_logits():
    with pytest.raises(ValueError, match="real numbers"):
        softmax_scores(np.array([[1.0, 2.0j]]))


def constant_logits(bias, n_features=6):
    """A linear model whose logits are ``bias`` everywhere: every input gradient is 0."""
    model = nn.Linear(n_features, len(bias)).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return model


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_input_margin_zero_gradient_is_infinite_unless_tied(norm):
    X = np.random.default_rng(4).normal(size=(3, 6))
    # Gaps 0.5 and 1.5 that no input change can close: infinitely far.
    np.testing.assert_array_equal(input_margin(constant_logits([0.5, 0.0, -1.0]), X, norm=norm),
                                  np.inf)
    # Classes 0 and 1 tied: the input is on the boundary already.
    np.testing.assert_array_equal(input_margin(constant_logits([0.0, 0.0, -1.0]), X, norm=norm),
                                  0.0)


def test_deepfool_zero_gradient_stops_after_one_step():
    X = np.random.default_rng(5).normal(size=(3, 6))
    result = deepfool(constant_logits([0.5, 0.0, -1.0]), X)
    np.testing.assert_array_equal(result.n_iter, 1)
    np.testing.assert_array_equal(result.distance, 0.0)
    assert not result.success.any()
    np.testing.assert_array_equal(result.adversarial_class, 0)


def test_deepfool_tied_zero_gradient_stays_in_place_until_max_iter():
    X = np.random.default_rng(6).normal(size=(3, 6))
    result = deepfool(constant_logits([0.0, 0.0, -1.0]), X, max_iter=3)
    np.testing.assert_array_equal(result.n_iter, 3)
    np.testing.assert_array_equal(result.distance, 0.0)
    assert not result.success.any()


def test_deepfool_result_dtypes_are_documented_ones():
    result = deepfool(linear_model(), np.random.default_rng(7).normal(size=(4, 6)))
    assert result.distance.dtype == np.float64 and result.success.dtype == bool
    assert result.adversarial_class.dtype == np.int64 and result.n_iter.dtype == np.int64


def test_deepfool_with_a_box_the_boundary_cannot_be_reached_uses_max_iter():
    # z = (x + 2, 0) on [0, 1]: the boundary x = -2 lies outside the box, each step is
    # clipped back to x = 0, and the attack stops after max_iter (default 50) steps.
    model = nn.Linear(1, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [0.0]]))
        model.bias.copy_(torch.tensor([2.0, 0.0]))
    X = np.array([[0.25], [0.5], [1.0]])
    result = deepfool(model, X, clip=(0, 1))
    np.testing.assert_array_equal(result.n_iter, 50)
    assert not result.success.any()
    np.testing.assert_allclose(result.distance, X[:, 0], rtol=1e-12)  # clipped to x = 0
    unclipped = deepfool(model, X)
    assert unclipped.success.all()
    np.testing.assert_allclose(unclipped.distance, 1.02 * (X[:, 0] + 2), rtol=1e-12)


def test_deepfool_breaks_a_tie_towards_the_lowest_class():
    # z = (1, x_1, x_2) at x = 0: classes 1 and 2 are both at distance 1; like torchattacks'
    # and the authors' argmin, the step goes towards the first of them, class 1.
    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        model.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    result = deepfool(model, np.zeros((1, 2)))
    np.testing.assert_array_equal(result.adversarial_class, [1])
    np.testing.assert_allclose(result.distance, [1.02], rtol=1e-12)


def test_deepfool_overshoot_zero_first_step_is_the_input_margin():
    model = linear_model()
    X = np.random.default_rng(8).normal(size=(10, 6))
    result = deepfool(model, X, max_iter=1, overshoot=0)
    np.testing.assert_array_equal(result.n_iter, 1)
    np.testing.assert_allclose(result.distance, input_margin(model, X), rtol=1e-12)


@pytest.mark.parametrize("attack", [input_margin, deepfool])
def test_attack_scores_accept_integer_big_endian_and_batch_of_one_inputs(attack):
    model = linear_model()
    X = np.random.default_rng(9).integers(-3, 4, size=(5, 6))

    def distances(X, **kwargs):
        result = attack(model, X, **kwargs)
        return result if attack is input_margin else result.distance

    expected = distances(X.astype(np.float64))
    np.testing.assert_allclose(distances(X), expected, rtol=1e-12)
    np.testing.assert_allclose(distances(X.astype(">f8")), expected, rtol=1e-12)
    np.testing.assert_allclose(distances(X.astype(np.float64), batch_size=1), expected,
                               rtol=1e-12)
    np.testing.assert_allclose(distances(X.astype(np.float64), device="cpu"), expected,
                               rtol=1e-12)


@pytest.mark.parametrize("X", [torch.zeros((2, 6), dtype=torch.bool),
                               torch.zeros((2, 6), dtype=torch.complex64)])
@pytest.mark.parametrize("attack", [input_margin, deepfool])
def test_attack_scores_reject_bool_and_complex_tensors(attack, X):
    with pytest.raises(ValueError, match="real numbers"):
        attack(linear_model(), X)



@pytest.mark.parametrize("name", ["max_softmax", "max_logit", "softmax_margin", "logit_margin"])
def test_scores_have_no_name_that_reads_as_the_confidence(name):
    # Each returns an error score (higher: more likely wrong); these names said the opposite.
    from resistclf import scores

    assert not hasattr(scores, name) and name not in scores.__all__


def test_resistance_error_scores_are_the_negated_features():
    from resistclf import AttackResult
    from resistclf.scores import resistance_error_scores

    result = AttackResult(res_n=np.array([0.5, 2.0]), res_max=np.array([1.0, 3.0]),
                          res_min=np.array([3, 501]), res_mean=np.array([0.4, 1.0]),
                          flipped=np.array([True, False]), adversarial_class=np.array([1, 0]),
                          c0=np.array([0, 0]), conf0=np.array([0.9, 1.0]))
    scores = resistance_error_scores(result)
    assert list(scores) == ["res_n", "res_max", "res_min", "res_mean"]
    np.testing.assert_array_equal(scores["res_min"], [-3.0, -501.0])
    assert scores["res_min"].dtype == np.float64
    with pytest.raises(ValueError, match="features must be a non-empty sequence"):
        resistance_error_scores(result, ["confidence"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_minus_confidence_is_higher_for_less_confident_predictions(dtype):
    from resistclf.scores import one_minus_confidence

    confidence = np.array([0.99, 0.6, 1.0], dtype=dtype)
    kept = confidence.copy()
    score = one_minus_confidence(confidence)
    assert score.dtype == dtype  # rounded as the input was, no more
    assert score[1] > score[0] > score[2] == 0
    np.testing.assert_array_equal(confidence, kept)
    np.testing.assert_array_equal(one_minus_confidence([1, 0]), [0.0, 1.0])


@pytest.mark.parametrize("confidence, match", [
    (np.array([[0.5, 0.5]]), "confidence must be a 1-D array of probabilities"),
    (np.array([0.5, 1.5]), r"confidence must hold probabilities in \[0, 1\]; sample 1 is 1.5"),
    (np.array([np.nan]), "sample 0 is nan"),
])
def test_one_minus_confidence_rejects_what_is_not_a_probability(confidence, match):
    from resistclf.scores import one_minus_confidence

    with pytest.raises(ValueError, match=match):
        one_minus_confidence(confidence)
