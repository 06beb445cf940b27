"""ResistanceAttack compared, output by output, with the plain float64 reference attack.

Two comparisons, because the attack's last phase is chaotic: it bounces across the Conf
thresholds, and a rounding difference grows by up to a factor of ten a step there (measured on
the nets below; preprocessing and clipping grow it fastest).

- Whole trajectories, in float64, over 20 steps: rounding differences of 1e-16 stay below 1e-8
  that long (measured: at most 3e-9, with the clip), so the traces and every result must agree
  to 1e-6.
- Step by step ("shadowing"), on the float32 path and over hundreds of steps: a module wrapper
  records the input ``x + r_t`` of every step, the reference takes one step from each recorded
  point, and the library's next point must be within 1e-5 of it (float32 rounding of one step
  is below 1e-6). The per-image results are then read off the recorded trajectory by the
  reference's own bookkeeping. Nothing accumulates, so the tolerance does not grow with the
  number of steps. A step is left out where the comparison is ill-posed: where Conf is within
  1e-5 of a threshold (float32 and float64 may take different branches of the loss), and where
  |r| < 1e-3 (its direction, which the next step follows, is lost when ``x + r`` is rounded to
  float32). The images are then checked up to their first flip against the whole float64
  trajectory, which catches a step that goes wrong in those early, tiny-|r| steps.
"""

import copy
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from resistclf import ResistanceAttack

from .reference_attack import Stepper, reference_attack, summarise, trajectories
from .test_attack import one_hot_linear_net

STRICT = dict(rtol=1e-6, atol=1e-6)  # float64, 20 steps (see the module docstring)
PER_STEP = 1e-4  # float32, one step (see the module docstring)
FLOAT32 = dict(rtol=1e-4, atol=1e-5)  # float32 results, read off a float32 trajectory


@pytest.fixture(scope="module")
def mlp():
    return small_mlp_and_images()


@cache  # once per process, as conftest's data (see there)
def small_mlp_and_images():
    """A small MLP trained on six Gaussian classes of (2, 4, 2) "images", and images to attack.

    The images mix points near the class centres, points scaled towards the origin (Conf
    between the thresholds) and points scaled away from it (Conf so close to 1 that
    ``1 - Conf`` is 0 in float32), so that every branch of the attack is taken.
    """
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g)
    labels = torch.arange(300) % 6
    X = centres[labels] + 0.8 * torch.randn(300, 16, generator=g)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 6))
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(X), labels).backward()
        optimizer.step()
    module.eval().requires_grad_(False)
    module[-1].weight.mul_(2.0)  # sharper: most images flip within the default 500 steps
    module[-1].bias.mul_(2.0)
    picked = torch.arange(12) % 6
    scale = torch.tensor([0.1, 1.0, 1.0, 3.0])[torch.arange(12) % 4]
    images = centres[picked] * scale[:, None] + 0.8 * torch.randn(12, 16, generator=g)
    return module, images.reshape(12, 2, 4, 2)


PREPROCESSING = dict(mean=(0.5, -0.5), std=(1.25, 0.8), axis=-3)
CONFIGS = {
    "l2": dict(step_size=0.5),
    "l1": dict(step_size=0.2, norm="l1"),
    "linf": dict(step_size=0.2, norm="linf"),
    "adam": dict(step_size=0.1, optimizer="adam"),
    "clip": dict(step_size=0.5, clip=(-2.0, 2.0)),
    "thresholds": dict(step_size=0.5, thresholds=(0.3, 0.7)),
    "equal-thresholds": dict(step_size=0.5, thresholds=(0.5, 0.5)),
    "preprocessing": dict(step_size=0.5, clip=(-2.0, 2.0), preprocessing=PREPROCESSING),
    "scalar-preprocessing": dict(step_size=1.0, preprocessing=dict(mean=0.25, std=2.0)),
}
RANKED = {"rank-1": (dict(step_size=0.5), 1), "rank-2": (dict(step_size=0.5), 2)}


def reference_settings(settings, rank=0):
    """The reference's keyword arguments for the attack's ``settings``."""
    settings = dict(settings)
    preprocessing = settings.pop("preprocessing", None)
    if preprocessing is not None:
        shape = (-1, 1, 1) if "axis" in preprocessing else ()
        settings.update(mean=np.reshape(preprocessing["mean"], shape),
                        std=np.reshape(preprocessing["std"], shape))
    return {**settings, "rank": rank}


def assert_results_match(result, expected, **tolerance):
    """Compare an AttackResult with a list of reference Trajectory objects, field by field."""
    def field(name):
        return np.array([getattr(t, name) for t in expected])

    for name in ["c0", "res_min", "flipped", "adversarial_class"]:
        np.testing.assert_array_equal(getattr(result, name), field(name), err_msg=name)
    for name in ["res_n", "res_max", "res_mean", "conf0"]:
        np.testing.assert_allclose(getattr(result, name), field(name), err_msg=name, **tolerance)


@pytest.mark.parametrize("settings, rank", [*((s, 0) for s in CONFIGS.values()),
                                            *RANKED.values()],
                         ids=[*CONFIGS, *RANKED])
def test_attack_matches_reference_trajectory_in_float64(mlp, settings, rank):
    module, X = mlp
    # Five slots for twelve images: slots are refilled, and three are idle in the last round.
    attack = ResistanceAttack(max_iter=20, batch_size=5, **settings)
    result = attack(copy.deepcopy(module).double(), X.double(), rank=rank, return_trace=True)
    expected = reference_attack(module, X, max_iter=20, **reference_settings(settings, rank))
    np.testing.assert_allclose(result.norm_trace, [t.norms for t in expected], **STRICT)
    np.testing.assert_allclose(result.conf_trace, [t.confs for t in expected], **STRICT)
    assert_results_match(result, expected, **STRICT)
    # Each setting is exercised: some images flip, and some change class after their flip.
    flipped = np.array([t.flipped for t in expected])
    assert flipped.any()
    assert any(len(set(t.preds[t.res_min:])) > 1 or t.preds[-1] != t.c0 for t in expected
               if t.flipped)


class _Recorder(nn.Module):
    """Runs ``module`` and keeps every input and output, as float64 copies."""

    def __init__(self, module):
        super().__init__()
        self.module, self.inputs, self.outputs = module, [], []

    def forward(self, x):
        out = self.module(x)
        self.inputs.append(x.detach().double().clone())
        self.outputs.append(out.detach().double().clone())
        return out


def attack_settings(attack):
    """The settings of ``attack`` that the reference takes."""
    return {name: value for name, value in attack.get_params().items()
            if name in ("step_size", "norm", "thresholds", "clip", "optimizer", "preprocessing")}


def shadow(module, X, attack, rank=0):
    """Run ``attack`` (float32) and check each of its steps against one reference step.

    Returns the library's result and the reference's reading of the library's trajectory.
    """
    settings = reference_settings(attack_settings(attack), rank)
    recorder = _Recorder(module)
    result = attack(recorder, X, rank=rank)
    n, steps = len(X), attack.max_iter + 1
    assert len(recorder.inputs) == steps, "all images must run in one round of slots"
    stepper = Stepper(module, X, **settings)
    # The recorder sees what the module sees, (x + r - mean) / std; back to pixel units.
    R = [inputs[:n] * stepper.std + stepper.mean - stepper.X for inputs in recorder.inputs]
    np.testing.assert_array_equal(stepper.c0, result.c0)
    norms, confs, preds, compared = [], [], [], 0
    for t in range(steps):
        conf, _, size, grad = stepper.evaluate(R[t])
        # The prediction is read from the logits the library saw: where two classes are
        # within float32 rounding of each other, float64 logits could pick the other one.
        logits = recorder.outputs[t][:n].masked_fill(stepper.removed, -torch.inf)
        norms.append(size)
        confs.append(conf)
        preds.append(logits.argmax(dim=1).numpy())
        if t < attack.max_iter:
            step = stepper.step(R[t], grad)
            near = np.min([np.abs(conf - threshold) for threshold in attack.thresholds], axis=0)
            ok = (near >= 1e-5) & (size >= 1e-3)
            compared += ok.sum()
            gap = (step - R[t + 1]).flatten(1).abs().amax(dim=1).numpy()
            assert np.all(gap[ok] <= PER_STEP), f"step {t}: {gap[ok].max()}"
    assert compared >= 0.8 * n * attack.max_iter, "too few steps compared"
    return result, trajectories(norms, confs, preds, stepper.c0.numpy())


def assert_starts_like_reference(read_off, module, X, attack, rank=0):
    """The first ten steps of the float32 trajectory follow the whole float64 trajectory.

    This covers the steps the shadowing leaves out while |r| is tiny. Float32 rounding (1e-7)
    has not grown past 1e-4 after ten steps (measured: at most 2e-5, with L1 and with the clip
    and preprocessing), so 1e-3 is safe.
    """
    expected = reference_attack(module, X, max_iter=10,
                                **reference_settings(attack_settings(attack), rank))
    for name in ("norms", "confs"):
        np.testing.assert_allclose([getattr(t, name)[:11] for t in read_off],
                                   [getattr(t, name) for t in expected], atol=1e-3, err_msg=name)


def test_attack_default_float32_path_follows_reference(mlp):
    module, X = mlp
    attack = ResistanceAttack()  # every default: 500 steps of 0.15, L2, SGD, float32
    result, read_off = shadow(module, X, attack)
    assert_results_match(result, read_off, **FLOAT32)
    assert_starts_like_reference(read_off, module, X, attack)
    # Every image flips; some start with Conf so close to 1 that 1 - Conf is 0 in float32,
    # and some between the thresholds.
    assert result.flipped.all() and np.any(np.float32(result.conf0) == 1)
    assert np.any((result.conf0 > 0.2) & (result.conf0 < 0.9))


@pytest.mark.parametrize("settings, rank", [
    (dict(step_size=0.2, norm="l1"), 0),
    (dict(step_size=0.05, norm="linf"), 0),
    (dict(clip=(-2.0, 2.0), preprocessing=PREPROCESSING), 0),
    (dict(thresholds=(0.3, 0.7)), 0),
    (dict(), 1),
], ids=["l1", "linf", "clip-preprocessing", "thresholds", "rank-1"])
def test_attack_float32_settings_follow_reference(mlp, settings, rank):
    module, X = mlp
    attack = ResistanceAttack(max_iter=200, **settings)
    result, read_off = shadow(module, X, attack, rank=rank)
    assert_results_match(result, read_off, **FLOAT32)
    assert_starts_like_reference(read_off, module, X, attack, rank=rank)
    assert result.flipped.any()


def test_attack_float32_adam_follows_reference(mlp):
    # Only images whose Conf is not saturated: for those the gradient at r = 0 is about
    # 1e-26, its square underflows in float32, and float32 Adam rightly departs from float64.
    module, X = mlp
    with torch.no_grad():
        X = X[module(X).softmax(dim=1).amax(dim=1) < 1 - 1e-6]
    attack = ResistanceAttack(max_iter=200, step_size=0.1, optimizer="adam")
    result, read_off = shadow(module, X, attack)
    assert_results_match(result, read_off, **FLOAT32)
    assert_starts_like_reference(read_off, module, X, attack)
    assert len(X) >= 4 and result.flipped.all()


def test_attack_trained_cnn_matches_reference_trajectory_in_float64(trained_cnn, digits):
    _, _, X, _ = digits
    module, X = trained_cnn.module_, torch.tensor(X[:4])
    attack = ResistanceAttack(max_iter=15, step_size=0.2, batch_size=4)
    result = attack(copy.deepcopy(module).double(), X.double(), return_trace=True)
    expected = reference_attack(module, X, max_iter=15, step_size=0.2)
    np.testing.assert_allclose(result.norm_trace, [t.norms for t in expected], **STRICT)
    np.testing.assert_allclose(result.conf_trace, [t.confs for t in expected], **STRICT)
    assert_results_match(result, expected, **STRICT)
    assert result.flipped.any()


def test_attack_trained_cnn_follows_reference(trained_cnn, digits):
    _, _, X, _ = digits
    module, X = trained_cnn.module_, torch.tensor(X[:6])
    attack = ResistanceAttack(max_iter=100, batch_size=8)
    result, read_off = shadow(module, X, attack)
    assert_results_match(result, read_off, **FLOAT32)
    assert result.flipped.any()


def early_exit_reading(trajectory, early_exit):
    """Where ``early_exit`` stops an image, from its whole trajectory: a shorter Trajectory.

    The image leaves after the first step at which it has flipped and, for ``early_exit``
    steps, |r| has set no new maximum and the prediction has moved to no new class.
    """
    norms, preds, c0 = trajectory.norms, trajectory.preds, trajectory.c0
    largest, adversarial, last_move, flipped = 0.0, c0, 0, False
    for step, (size, pred) in enumerate(zip(norms, preds)):
        changed = step > 0 and pred != c0
        if size > largest or (changed and pred != adversarial):
            last_move = step
        flipped |= changed
        adversarial = pred if changed else adversarial
        largest = max(largest, size)
        if flipped and step - last_move >= early_exit:
            break
    return summarise(norms[:step + 1], trajectory.confs[:step + 1], preds[:step + 1], c0)


@pytest.mark.parametrize("early_exit", [1, 3])
def test_attack_early_exit_matches_reference_in_float64(mlp, early_exit):
    module, X = mlp
    # Images leave at different steps, so slots are refilled while others are mid-attack.
    attack = ResistanceAttack(max_iter=20, step_size=0.5, batch_size=5, early_exit=early_exit)
    result = attack(copy.deepcopy(module).double(), X.double())
    expected = [early_exit_reading(t, early_exit)
                for t in reference_attack(module, X, max_iter=20, step_size=0.5)]
    stopped = np.array([len(t.norms) < 21 for t in expected])
    assert stopped.any() and (~stopped).any()
    assert_results_match(result, expected, **STRICT)


class _Summed(nn.Module):
    """Logits (k sum(x), 0): the gradient of Conf is the same for every pixel."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        total = self.k * x.flatten(1).sum(dim=1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_attack_linf_splits_its_step_among_tied_entries():
    # Every entry of r moves alike, so all of them tie for the largest |r|.
    X = torch.full((2, 16), 0.1, dtype=torch.float64)
    X[1] = 0.15
    result = ResistanceAttack(max_iter=20, step_size=0.4, norm="linf", batch_size=2)(
        _Summed().double(), X, return_trace=True)
    expected = reference_attack(_Summed(), X, max_iter=20, step_size=0.4, norm="linf")
    np.testing.assert_allclose(result.norm_trace, [t.norms for t in expected], **STRICT)
    assert_results_match(result, expected, **STRICT)
    assert result.flipped.all()


def test_attack_l2_gradient_is_r_over_its_norm_even_where_squares_underflow():
    from resistclf._attack import _l2, _l2_grad

    r = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    direction = r / _l2(r)[:, None]
    # Where nothing underflows, the plain formula, to the last bit (as the reference has it).
    assert torch.equal(_l2_grad(r, _l2(r)), direction)
    # Entries of 1e-25 square to 0 in float32: the direction is kept all the same.
    tiny = r * 1e-25
    assert torch.all((tiny ** 2).sum(dim=1) == 0)
    torch.testing.assert_close(_l2_grad(tiny, _l2(tiny)), direction)
    assert torch.equal(_l2_grad(torch.zeros(2, 50), torch.zeros(2)), torch.zeros(2, 50))


def test_attack_results_are_read_off_the_trace_exactly_in_float64(mlp):
    # The bookkeeping keeps the module's precision: in float64 every result is the trace's
    # reading to float64 rounding (a float32 accumulator for Res_mean would be off by 1e-7).
    module, X = mlp
    result = ResistanceAttack(max_iter=40, step_size=0.5, batch_size=5)(
        copy.deepcopy(module).double(), X.double(), return_trace=True)
    assert result.flipped.sum() >= 6
    np.testing.assert_array_equal(result.res_n, result.norm_trace[:, -1])
    np.testing.assert_array_equal(result.res_max, result.norm_trace.max(axis=1))
    np.testing.assert_array_equal(result.conf0, result.conf_trace[:, 0])
    for i in np.flatnonzero(result.flipped):
        np.testing.assert_allclose(result.res_mean[i],
                                   result.norm_trace[i, result.res_min[i]:].mean(), rtol=1e-13)


@pytest.mark.parametrize("settings, rank, scale", [
    (dict(step_size=0.15), 0, 600.0),
    (dict(step_size=0.1, norm="l1"), 0, 600.0),
    (dict(step_size=0.05, optimizer="adam"), 0, 600.0),
    (dict(step_size=0.15), 1, 3000.0),
], ids=["l2", "l1", "adam", "rank-1"])
def test_attack_one_hot_images_follow_the_float64_reference_to_their_flip(settings, rank, scale):
    # Logit margins of 150 to 350: float32's softmax is one-hot, float64's is not (1 - Conf
    # down to 1e-152, and the squares in |r| stay above 1e-308), so the reference takes the
    # exact first step, of about 1e-150, where the attack takes one of 2e-15 in the same
    # direction; both are lost in |r| from the second step on. Up to its flip, each image must
    # follow the reference to float32's tolerance (FLOAT32): a few steps, nothing chaotic yet.
    module, X = one_hot_linear_net(scale)
    z = module(X).detach().double().sort(dim=1, descending=True).values
    gap = z[:, rank] - z[:, rank + 1]
    X = X[(gap > 104) & (gap < 350)]
    assert len(X) >= 4
    result = ResistanceAttack(max_iter=40, **settings)(module, X, rank=rank, return_trace=True)
    expected = reference_attack(module, X, max_iter=40, **settings, rank=rank)
    assert all(t.flipped for t in expected) and result.flipped.all()
    for i, t in enumerate(expected):
        assert result.res_min[i] == t.res_min
        np.testing.assert_allclose(result.norm_trace[i, :t.res_min + 1], t.norms[:t.res_min + 1],
                                   **FLOAT32)
        np.testing.assert_allclose(result.conf_trace[i, :t.res_min], t.confs[:t.res_min],
                                   **FLOAT32)
