"""Minimum-norm attacks through Foolbox (FMN in L2 and L-infinity, DDN) as distances."""

import dataclasses

import foolbox
import numpy as np
import pytest
import torch
from torch import nn

from resistclf.scores import MinimumNormResult, minimum_norm

ATTACKS = ["fmn-l2", "fmn-linf", "ddn"]
#: The dual norm of each attack's norm, in which a linear boundary's distance is measured.
DUAL = {"fmn-l2": 2, "fmn-linf": 1, "ddn": 2}
#: Relative tolerance on a linear net's exact distance. FMN's ball ends up moving by factors
#: of 1 +- 0.001; DDN's by 1 +- 0.05, along the cross-entropy's gradient, which also weighs
#: the third class (observed: 2e-6, 4e-4 and 2.4e-3 at most).
TOLERANCE = {"fmn-l2": 1e-4, "fmn-linf": 1e-3, "ddn": 1e-2}


@pytest.fixture(autouse=True)
def one_thread():
    # The nets here are tiny: on a busy machine a second thread makes each of the
    # attacks' thousands of small operations wait for it (ten times slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(weight, bias):
    module = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(weight))
        module.bias.copy_(torch.as_tensor(bias))
    return module


def linear_case(seed=0, n=40, scale=8.0):
    """A random linear net on 5 inputs with 3 classes, and the inputs whose nearest boundary
    the attacks can find, with each input's exact distances to every other class's boundary.

    FMN follows the runner-up class's logit and DDN the cross-entropy, so an input is kept
    where the runner-up's boundary is the nearest in both norms and, at the L2-nearest point
    of that boundary, the third class's logit lies at least 4 below.
    """
    rng = np.random.default_rng(seed)
    weight, bias = scale * rng.uniform(-0.45, 0.45, (3, 5)), scale * rng.uniform(-0.45, 0.45, 3)
    X = rng.uniform(-1, 1, (n, 5)).astype(np.float32)
    z = X.astype(np.float64) @ weight.T + bias
    rows, c = np.arange(n), z.argmax(1)
    gaps = z[rows, c][:, None] - z
    difference = weight[c][:, None, :] - weight[None]  # w_c - w_j, shape (n, 3, 5)
    exact = {}
    for dual in (1, 2):
        with np.errstate(divide="ignore", invalid="ignore"):
            exact[dual] = gaps / np.linalg.norm(difference, ord=dual, axis=2)
        exact[dual][rows, c] = np.inf
    runner_up = np.where(np.arange(3) == c[:, None], -np.inf, z).argmax(1)
    third = 3 - c - runner_up
    d = exact[2][rows, runner_up]
    unit = -difference[rows, runner_up] / np.linalg.norm(difference[rows, runner_up], axis=1,
                                                         keepdims=True)
    third_gap = gaps[rows, third] + d * ((weight[c] - weight[third]) * unit).sum(1)
    keep = (exact[2].argmin(1) == runner_up) & (exact[1].argmin(1) == runner_up) \
        & (third_gap > 4)
    return (_linear(weight, bias), X[keep], {dual: e[keep].min(1) for dual, e in exact.items()},
            runner_up[keep])


@pytest.mark.parametrize("steps", [None, 500])
@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_finds_a_linear_nets_exact_distance_and_class(attack, steps):
    module, X, exact, nearest = linear_case()
    assert len(X) >= 10
    exact = exact[DUAL[attack]]
    result = minimum_norm(module, X, attack=attack, steps=steps, bounds=(-10, 10))
    assert result.success.all()
    # No adversarial lies closer than the boundary; the box (-10, 10) never binds here.
    assert (result.distance >= exact * (1 - 1e-5)).all()
    np.testing.assert_allclose(result.distance, exact, rtol=TOLERANCE[attack])
    np.testing.assert_array_equal(result.adversarial_class, nearest)
    assert result.steps == (100 if steps is None else steps) and result.attack == attack


def test_minimum_norm_corrects_foolboxs_l2_fmn_projection():
    # Foolbox 3.3.4's L2FMNAttack never projects onto its ball (min(1, norms / norms) = 1):
    # each input's first adversarial iterate, one step of length 1 away, is its answer.
    torch.manual_seed(0)
    module, X = nn.Linear(4, 3), torch.rand(5, 4) * 2 - 1
    prediction = module(X).argmax(1)
    model = foolbox.PyTorchModel(module.eval(), bounds=(-10, 10), device="cpu")
    plain = foolbox.attacks.L2FMNAttack().run(model, X,
                                              foolbox.criteria.Misclassification(prediction))
    np.testing.assert_allclose((plain - X).norm(dim=1).detach(), 1.0, rtol=1e-6)
    weight, z = module.weight.detach().double(), module(X).detach().double()
    exact = [min((z[i, c] - z[i, j]) / (weight[c] - weight[j]).norm() for j in range(3) if j != c)
             for i, c in enumerate(prediction.tolist())]
    assert max(exact) < 0.5
    result = minimum_norm(module, X, bounds=(-10, 10))
    np.testing.assert_allclose(result.distance, exact, rtol=1e-4)


def _nearest_in_box(a, margin, x, low, high, dual):
    """The smallest norm of d with ``a . d = margin`` and x + d in the box, by bisection.

    The minimiser moves each coordinate by ``t * a_i`` (L2) or ``t * sign(a_i)`` (L-infinity)
    clipped to the box, for the smallest ``t`` that reaches the margin.
    """
    direction = a if dual == 2 else np.sign(a)

    def step(t):
        return np.clip(t * direction, low - x, high - x)

    lo, hi = 0.0, 1e3
    for _ in range(200):
        t = (lo + hi) / 2
        lo, hi = (t, hi) if a @ step(t) < margin else (lo, t)
    return np.linalg.norm(step(hi), ord=2 if dual == 2 else np.inf)


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_finds_the_exact_distance_when_the_box_binds(attack):
    # Half the pixels sit at 0 and the boundary lies towards negative values there: the
    # box (0, 1) holds them. Projected before the box clip, L2 FMN's ball stops growing
    # short of the boundary and no adversarial is found.
    a = np.array([-1.0, -0.8, -0.6, 0.5, 0.7, 0.9])  # w_1 - w_0
    module = _linear(np.stack([np.zeros(6), a]), [0.0, 0.0])
    X = np.array([[0, 0, 0, 0.2, 0.3, 0.1], [0, 0, 0, 0.1, 0.1, 0.1]], dtype=np.float32)
    with torch.no_grad():
        module.bias[0] = 1.0  # class 0 by a margin of 1 - a . x
    margins = 1.0 - X.astype(np.float64) @ a
    result = minimum_norm(module, X, attack=attack, bounds=(0, 1))
    exact = [_nearest_in_box(a, m, x, 0.0, 1.0, DUAL[attack]) for m, x in zip(margins, X)]
    assert result.success.all()
    np.testing.assert_allclose(result.distance, exact, rtol=TOLERANCE[attack])


@pytest.mark.parametrize("attack", ["fmn-l2", "fmn-linf"])
def test_minimum_norm_fmn_never_stalls_on_a_linear_boundary(attack):
    # FMN's ball reaches the linearised boundary exactly; without the tie-break, rounding
    # keeps the prediction there for a few percent of inputs and they are never attacked.
    rng = np.random.default_rng(1)
    for _ in range(4):
        module = _linear(rng.uniform(-2, 2, (4, 6)), rng.uniform(-2, 2, 4))
        result = minimum_norm(module, rng.uniform(-1, 1, (64, 6)), attack=attack,
                              bounds=(-10, 10))
        assert result.success.all()


class _Counts(nn.Module):
    """``module``, counting the rows it computes and the rows of gradient through its input."""

    def __init__(self, module):
        super().__init__()
        self.module, self.rows, self.gradient_rows = module, 0, 0

    def forward(self, x):
        self.rows += len(x)
        if x.requires_grad:
            x.register_hook(self._count)
        return self.module(x)

    def _count(self, grad):
        self.gradient_rows += len(grad)


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_counts_the_passes_it_runs(attack):
    module, X, _, _ = linear_case()
    counted = _Counts(module)
    result = minimum_norm(counted, X[:5], attack=attack, steps=7, bounds=(-10, 10),
                          batch_size=2)
    # Per input: the prediction, one forward and backward pass a step, and the check.
    np.testing.assert_array_equal(result.forward_passes, 7 + 2)
    np.testing.assert_array_equal(result.backward_passes, 7)
    assert counted.rows == 5 * 9 and counted.gradient_rows == 5 * 7
    assert result.seconds > 0
    whole = minimum_norm(module, X[:5], attack=attack, steps=7, bounds=(-10, 10))
    np.testing.assert_allclose(result.distance, whole.distance, rtol=1e-5)


def test_minimum_norm_attacks_the_prediction_not_a_label():
    module, X, _, _ = linear_case()
    result = minimum_norm(module, X, bounds=(-10, 10))
    with torch.no_grad():
        prediction = module(torch.from_numpy(X)).argmax(1).numpy()
    adversarial = (result.adversarial_class != prediction)
    np.testing.assert_array_equal(adversarial, result.success)
    assert adversarial.all()


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_measures_in_pixels_with_preprocessing(attack):
    # The module sees u = (x - mean) / std: a step d in u is a step std * d in pixels.
    module, X, _, _ = linear_case()
    mean, std = 0.25, 2.0
    X = X / 4 + mean  # in (0, 0.5)
    result = minimum_norm(module, X, attack=attack, preprocessing=dict(mean=mean, std=std),
                          bounds=(-10, 10))
    direct = minimum_norm(module, (X - mean) / std, attack=attack, bounds=(-10, 10))
    np.testing.assert_allclose(result.distance, std * direct.distance, rtol=TOLERANCE[attack])
    np.testing.assert_array_equal(result.adversarial_class, direct.adversarial_class)


@pytest.mark.parametrize("bounds, far", [((0, 1), np.sqrt(0.75**2 + 0.5**2 + 0.9**2)),
                                         (None, np.inf)])
@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_failure_reports_the_farthest_point_of_the_box(attack, bounds, far):
    # A constant net never changes its prediction.
    module = _linear(np.zeros((3, 3)), [0.0, 1.0, 0.0])
    X = np.array([[0.25, 0.5, 0.1]])
    result = minimum_norm(module, X, attack=attack, steps=5, bounds=bounds)
    assert not result.success[0] and result.adversarial_class[0] == 1
    expected = 0.9 if attack == "fmn-linf" and bounds else far
    np.testing.assert_allclose(result.distance, expected)


def test_minimum_norm_ddn_seed_sets_its_random_directions():
    # Logit margins above about 104 make the float32 softmax one-hot: the cross-entropy's
    # gradient is exactly 0, and DDN steps along a random direction instead.
    rng = np.random.default_rng(0)
    module = _linear(600 * rng.uniform(-1, 1, (3, 4)), np.zeros(3))
    X = rng.uniform(-1, 1, (6, 4))
    state = torch.get_rng_state()
    first, again, other = (minimum_norm(module, X, attack="ddn", steps=20, bounds=(-10, 10),
                                        seed=seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(first.distance, again.distance)
    assert not np.array_equal(first.distance, other.distance)
    fmn = [minimum_norm(module, X, attack="fmn-l2", bounds=(-10, 10), seed=seed).distance
           for seed in (0, 1)]
    np.testing.assert_array_equal(*fmn)


def test_minimum_norm_result_is_frozen():
    result = minimum_norm(nn.Linear(2, 2), np.full((1, 2), 0.5), steps=1)
    assert isinstance(result, MinimumNormResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.distance = None


@pytest.mark.parametrize("as_tensor", [False, True])
def test_minimum_norm_leaves_inputs_and_module_as_they_were(as_tensor):
    module = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    module[2].weight.requires_grad_(False)
    X = np.random.default_rng(0).uniform(0, 1, (5, 4)).astype(np.float32)
    X = torch.from_numpy(X) if as_tensor else X
    copy = X.clone() if as_tensor else X.copy()
    minimum_norm(module, X, attack="ddn", steps=3)
    assert (X == copy).all()
    assert all(m.training for m in module.modules())
    assert [p.requires_grad for p in module.parameters()] == [True, True, False, True]


class _FailsOnCall(nn.Module):
    def __init__(self, module, call):
        super().__init__()
        self.module, self.call, self.calls = module, call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.call:
            raise RuntimeError("planted failure")
        return self.module(x)


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_restores_the_module_after_an_error(attack):
    module = _FailsOnCall(nn.Linear(4, 3), call=4).train()
    with pytest.raises(RuntimeError, match="planted failure"):
        minimum_norm(module, np.full((2, 4), 0.5), attack=attack, steps=10)
    assert module.training and module.module.training
    assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(attack="fmn-l1"), ValueError, "attack must be one of"),
    (dict(attack=None), ValueError, "attack must be one of"),
    (dict(steps=0), ValueError, "steps must be a positive integer"),
    (dict(steps=2.5), ValueError, "steps must be a positive integer"),
    (dict(steps=True), ValueError, "steps must be a positive integer"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(batch_size=True), ValueError, "batch_size must be a positive integer"),
    (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
    (dict(seed=1.5), ValueError, "seed must be a non-negative integer"),
    (dict(bounds=(1, 0)), ValueError, "bounds must be None or a pair"),
    (dict(bounds=(0,)), ValueError, "bounds must be None or a pair"),
    (dict(bounds=(0, np.inf)), ValueError, "bounds must be None or a pair"),
    (dict(bounds=("a", "b")), ValueError, "bounds must be None or a pair"),
    (dict(bounds=(0.6, 1)), ValueError, r"X must lie within bounds=\(0.6, 1.0\).*from 0.5 to 0.5"),
    (dict(X=np.full((2, 4), np.nan)), ValueError, "X must be finite"),
    (dict(X=np.full((2, 4), 2.0)), ValueError, r"X must lie within bounds=\(0.0, 1.0\)"),
    (dict(X=np.zeros((0, 4))), ValueError, "at least one sample"),
    (dict(X=np.full((2, 5), 0.5)), ValueError, "The net cannot take input of shape"),
    (dict(module="net"), TypeError, "module must be a torch.nn.Module"),
    (dict(preprocessing=dict(scale=2)), ValueError, "preprocessing takes the keys"),
    (dict(preprocessing=dict(std=[1, 2, 3])), ValueError, "does not broadcast"),
    (dict(device="meta"), ValueError, "holds no data"),
])
def test_minimum_norm_bad_arguments_raise(kwargs, error, match):
    arguments = {"module": nn.Linear(4, 3), "X": np.full((2, 4), 0.5), **kwargs}
    with pytest.raises(error, match=match):
        minimum_norm(arguments.pop("module"), arguments.pop("X"), **arguments)


@pytest.mark.parametrize("attack", ATTACKS)
def test_minimum_norm_takes_inputs_on_a_bound_that_float32_rounds_up(attack):
    # float32(0.1) > 0.1: the float64 inputs lie within bounds, their float32 copies do not,
    # and Foolbox's DDN asserts that they do.
    module = _linear(np.array([[1.0, 0.0], [0.0, 1.0]]), [0.0, 0.0])
    X = np.array([[0.1, 0.05], [0.02, 0.1]])
    result = minimum_norm(module, X, attack=attack, bounds=(0, 0.1))
    assert result.success.all()
    np.testing.assert_array_equal(result.adversarial_class, [1, 0])
