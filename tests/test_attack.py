import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from resistclf import AttackResult, ResistanceAttack

FIELDS = ["res_n", "res_max", "res_min", "res_mean", "flipped", "adversarial_class", "c0",
          "conf0"]


@pytest.fixture(scope="module")
def cnn_module(trained_cnn):
    return trained_cnn.module_


def test_attack_gives_an_image_the_same_result_alone_and_among_others(cnn_module, digits):
    # The attack's last phase is chaotic: the 1e-8 differences of a kernel picked for 1 row
    # instead of 256 grow to about step_size in Res_N. Alone, an image runs in a batch of 16
    # rows; among 299 others, in one of 256 rows or, in the second round, of 48.
    _, _, X, _ = digits
    X = torch.tensor(X[:300])
    attack = ResistanceAttack(max_iter=150, step_size=0.2)
    among = attack(cnn_module, X)
    picked = [0, 131, 255, 256, 299]
    alone = AttackResult.concatenate([attack(cnn_module, X[i : i + 1]) for i in picked])
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(alone, name), getattr(among[picked], name),
                                      err_msg=name)


def test_attack_result_fields_are_consistent(cnn_module, digits):
    _, _, X, _ = digits
    result = ResistanceAttack(max_iter=60)(cnn_module, torch.tensor(X[:30]), return_trace=True)
    assert result.features.shape == (30, 3) and result.features.dtype == np.float64
    assert result.conf_trace.shape == result.norm_trace.shape == (30, 61)
    np.testing.assert_allclose(result.norm_trace[:, -1], result.res_n, rtol=1e-6)
    np.testing.assert_allclose(result.norm_trace.max(axis=1), result.res_max, rtol=1e-6)
    np.testing.assert_allclose(result.conf_trace[:, 0], result.conf0, rtol=1e-6)
    assert result.flipped.any()
    assert np.all(result.adversarial_class[result.flipped] != result.c0[result.flipped])
    assert np.all(result.res_min[result.flipped] <= 60)


def test_attack_never_flipped_is_marked():
    # Two identical logits that no input can separate: the prediction never changes.
    module = nn.Sequential(nn.Linear(4, 1), _Duplicate())
    result = ResistanceAttack(max_iter=20)(module, torch.rand(3, 4))
    assert not result.flipped.any()
    np.testing.assert_array_equal(result.res_min, 21)
    np.testing.assert_array_equal(result.adversarial_class, result.c0)


class _Duplicate(nn.Module):
    """Logits (z, z - 1): class 0 always wins, and Conf has no gradient."""

    def forward(self, z):
        return torch.cat([z, z - 1.0], dim=1)


def test_attack_rank_attacks_away_from_runner_up(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:30])
    with torch.no_grad():
        ranking = cnn_module.eval()(X).argsort(dim=1, descending=True).numpy()
    result = ResistanceAttack(max_iter=100)(cnn_module, X, rank=1)
    np.testing.assert_array_equal(result.c0, ranking[:, 1])
    assert result.flipped.mean() > 0.5
    # The class ranked above is removed, so the attack cannot land there.
    assert np.all(result.adversarial_class != ranking[:, 0])


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_attack_other_norms_run_and_flip(cnn_module, digits, norm):
    _, _, X, _ = digits
    step = {"l1": 0.2, "linf": 0.01}[norm]
    result = ResistanceAttack(max_iter=300, norm=norm, step_size=step)(
        cnn_module, torch.tensor(X[:10])
    )
    assert np.all(result.res_n >= 0) and result.flipped.any()


class _RecordsInputRange(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module, self.low, self.high = module, np.inf, -np.inf

    def forward(self, x):
        self.low, self.high = min(self.low, x.min().item()), max(self.high, x.max().item())
        return self.module(x)


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_attack_clip_keeps_perturbed_input_in_box(cnn_module, digits, clip):
    _, _, X, _ = digits
    module = _RecordsInputRange(cnn_module)
    ResistanceAttack(max_iter=50, clip=clip)(module, torch.tensor(X[:10]))
    inside = 0.0 <= module.low and module.high <= 1.0
    assert inside == (clip is not None)


def test_attack_adam_optimizer_runs(cnn_module, digits):
    _, _, X, _ = digits
    result = ResistanceAttack(max_iter=100, optimizer="adam", step_size=0.05)(
        cnn_module, torch.tensor(X[:10])
    )
    assert result.flipped.any()


def test_attack_does_not_modify_input(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:5])
    before = X.clone()
    ResistanceAttack(max_iter=20)(cnn_module, X)
    assert torch.equal(X, before)


class _Explodes(nn.Module):
    def __init__(self, after):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return self.linear(x)


@pytest.mark.parametrize("after", [0, 3])
def test_attack_restores_module_state_after_exception(after):
    module = _Explodes(after).train()
    module.linear.weight.requires_grad_(True)
    module.linear.bias.requires_grad_(False)
    with pytest.raises((RuntimeError, ValueError), match="boom"):
        ResistanceAttack(max_iter=10)(module, torch.rand(2, 4))
    assert module.training and module.linear.training
    assert module.linear.weight.requires_grad and not module.linear.bias.requires_grad


def test_attack_restores_module_state_and_computes_no_parameter_gradients(cnn_module, digits):
    _, _, X, _ = digits
    grads = [None if p.grad is None else p.grad.clone() for p in cnn_module.parameters()]
    cnn_module.train()
    ResistanceAttack(max_iter=5)(cnn_module, torch.tensor(X[:4]))
    assert cnn_module.training
    cnn_module.eval()
    for p, grad in zip(cnn_module.parameters(), grads):
        assert p.requires_grad
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)


def test_attack_runs_under_no_grad(cnn_module, digits):
    _, _, X, _ = digits
    with torch.no_grad():
        result = ResistanceAttack(max_iter=30)(cnn_module, torch.tensor(X[:4]))
    assert np.all(result.res_max > 0)


def test_attack_verbose_shows_progress(cnn_module, digits, capsys):
    _, _, X, _ = digits
    ResistanceAttack(max_iter=2, batch_size=2, verbose=True)(cnn_module, torch.tensor(X[:4]))
    assert "resistance attack" in capsys.readouterr().err


@pytest.mark.parametrize(
    "params, match",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"step_size": -1.0}, "step_size"),
        ({"norm": "l3"}, "norm"),
        ({"thresholds": (0.9, 0.2)}, "thresholds"),
        ({"thresholds": (0.2,)}, "thresholds"),
        ({"clip": (1.0, 0.0)}, "clip"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "big"}, "batch_size"),
        ({"precision": "int8"}, "precision"),
        ({"early_exit": 0}, "early_exit"),
        ({"early_exit": 20, "optimizer": "adam"}, "early_exit works with optimizer='sgd'"),
        ({"n_jobs": 0}, "n_jobs"),
    ],
)
def test_attack_invalid_settings_raise(params, match):
    with pytest.raises(ValueError, match=match):
        ResistanceAttack(**params)(nn.Linear(4, 3), torch.rand(2, 4))


def test_attack_early_exit_refuses_traces():
    with pytest.raises(ValueError, match="without return_trace"):
        ResistanceAttack(early_exit=10)(nn.Linear(4, 3), torch.rand(2, 4), return_trace=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_attack_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        ResistanceAttack(device="cuda")(nn.Linear(4, 3), torch.rand(2, 4))


@pytest.mark.parametrize(
    "module, X, match",
    [
        (nn.Linear(4, 3), torch.zeros(0, 4), "at least one sample"),
        (nn.Linear(4, 3), torch.zeros(4), r"shape \(n_samples, \.\.\.\); got shape \(4,\)"),
        (nn.Linear(4, 3), torch.zeros(2, 5), "cannot take input of shape"),
        (nn.Linear(4, 1), torch.zeros(2, 4), "n_classes >= 2"),
        (nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)), torch.zeros(2, 4), "one score per class"),
    ],
)
def test_attack_bad_input_raises(module, X, match):
    with pytest.raises(ValueError, match=match):
        ResistanceAttack(max_iter=2)(module, X)


def test_attack_names_the_type_of_a_list_x_without_printing_it():
    X = [[0.123456] * 4] * 1000
    with pytest.raises(TypeError, match="got a list.$") as error:
        ResistanceAttack(max_iter=2)(nn.Linear(4, 3), X)
    assert "0.123456" not in str(error.value) and len(str(error.value)) < 120


def test_attack_rank_out_of_range_raises():
    with pytest.raises(ValueError, match="rank=3 is out of range"):
        ResistanceAttack(max_iter=2)(nn.Linear(4, 3), torch.rand(2, 4), rank=3)


class _CountsBackward(torch.autograd.Function):
    """The identity, counting the backward passes through it in ``counter[0]``."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.counter[0] += 1
        return grad, None


class _Counts(nn.Module):
    """``module``, counting the rows it computes (each batch's in ``batches``) and the backward
    passes through its input."""

    def __init__(self, module):
        super().__init__()
        self.module, self.rows, self.backwards, self.batches = module, 0, [0], []

    def forward(self, x):
        self.rows += len(x)
        self.batches.append(len(x))
        return self.module(_CountsBackward.apply(x, self.backwards))


def test_attack_early_exit_agrees_with_exact_and_does_less_work(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:64])
    exact_module, early_module = _Counts(cnn_module), _Counts(cnn_module)
    exact = ResistanceAttack(max_iter=300, batch_size=16)(exact_module, X)
    early = ResistanceAttack(max_iter=300, batch_size=16, early_exit=40)(early_module, X)
    # Up to its exit an image follows the exact trajectory bit for bit.
    np.testing.assert_array_equal(early.res_min, exact.res_min)
    np.testing.assert_array_equal(early.c0, exact.c0)
    assert np.all(early.res_max <= exact.res_max)
    assert np.mean(early.adversarial_class == exact.adversarial_class) >= 0.9
    assert early_module.rows < 0.6 * exact_module.rows


def test_attack_bfloat16_is_close_to_float32(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:64])
    exact = ResistanceAttack(max_iter=100, batch_size=64)(cnn_module, X)
    fast = ResistanceAttack(max_iter=100, batch_size=64, precision="bfloat16")(cnn_module, X)
    assert not np.array_equal(fast.res_n, exact.res_n), "bfloat16 was not used"
    np.testing.assert_array_equal(fast.c0, exact.c0)
    assert np.mean(np.abs(fast.res_min - exact.res_min) <= 1) >= 0.95
    assert np.mean(fast.adversarial_class == exact.adversarial_class) >= 0.9
    assert np.corrcoef(fast.res_max, exact.res_max)[0, 1] > 0.9


def test_attack_channels_last_agrees_and_restores_the_weights(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:64])
    weights = [p for p in cnn_module.parameters()]
    exact = ResistanceAttack(max_iter=100, batch_size=64)(cnn_module, X)
    convs = [m for m in cnn_module.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []
    hooks = [conv.register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)
        and m.weight.is_contiguous(memory_format=torch.channels_last))) for conv in convs]
    try:
        fast = ResistanceAttack(max_iter=100, batch_size=64, channels_last=True)(cnn_module, X)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(seen), "the convolutions did not run channels-last"
    assert all(a is b for a, b in zip(cnn_module.parameters(), weights))
    assert all(p.is_contiguous() for p in weights)
    np.testing.assert_array_equal(fast.c0, exact.c0)
    np.testing.assert_allclose(fast.conf0, exact.conf0, rtol=1e-5)
    # Res_min and the class are decided early, before rounding differences grow.
    assert np.mean(fast.res_min == exact.res_min) >= 0.95
    assert np.mean(fast.adversarial_class == exact.adversarial_class) >= 0.9
    assert np.corrcoef(fast.res_max, exact.res_max)[0, 1] > 0.95


def test_attack_n_jobs_gives_identical_results(cnn_module, digits):
    _, _, X, _ = digits
    X = torch.tensor(X[:40])
    one = ResistanceAttack(max_iter=100, batch_size=16)(cnn_module, X)
    two = ResistanceAttack(max_iter=100, batch_size=16, n_jobs=2)(cnn_module, X)
    for name in ["res_n", "res_max", "res_min", "adversarial_class", "c0", "conf0"]:
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))


def test_attack_auto_batch_size_respects_memory_budget(cnn_module, digits, monkeypatch):
    from resistclf import _attack

    _, _, X, _ = digits
    X = torch.tensor(X[:300])
    attack = ResistanceAttack(max_iter=5, batch_size="auto")
    chosen = attack._auto_batch_size(cnn_module, X, torch.device("cpu"))
    assert chosen in {16, 32, 64, 128, 256, 512}
    per_image = _attack._bytes_per_image(cnn_module, X[:2], "float32")
    monkeypatch.setattr(_attack, "_memory_budget", lambda device: int(40 * per_image))
    assert attack._auto_batch_size(cnn_module, X, torch.device("cpu")) <= 32
    assert attack(cnn_module, X[:20]).features.shape == (20, 3)


@pytest.mark.parametrize("n_images, rounds", [(3, 1), (5, 2)])
def test_attack_costs_max_iter_plus_one_forward_and_max_iter_backward_passes(n_images, rounds):
    # The documented cost of an image (501 F + 500 B at the defaults): the last step's
    # gradient is never taken, since no step follows it.
    module = _Counts(nn.Linear(4, 3))
    ResistanceAttack(max_iter=7, batch_size=4)(module, torch.rand(n_images, 4))
    assert module.rows == rounds * 8 * 4  # forward passes of 4 rows
    assert module.backwards == [rounds * 7]


class _Sign(nn.Module):
    """Logits (x_0, -x_0): class 0 while the first entry is positive."""

    def forward(self, x):
        return torch.stack([x[:, 0], -x[:, 0]], dim=1)


def test_attack_early_exit_stops_once_the_clip_holds_r_at_its_largest():
    # With thresholds (0, 0) the loss is Conf - |r| throughout: r grows until the clip stops
    # it at x + r = -1, the class has flipped, and |r| stays at its maximum (1.5) for good.
    # That is "settled": the image leaves early_exit steps later.
    X = torch.tensor([[0.5, 0.0]])
    settings = dict(max_iter=100, step_size=0.5, thresholds=(0.0, 0.0), clip=(-1.0, 1.0),
                    batch_size=1)
    exact = ResistanceAttack(**settings)(_Sign(), X)
    module = _Counts(_Sign())
    early = ResistanceAttack(**settings, early_exit=5)(module, X)
    assert exact.res_n[0] == exact.res_max[0] == early.res_n[0] == early.res_max[0] == 1.5
    assert early.flipped[0] and early.res_min[0] == exact.res_min[0]
    pinned = 1 + int(np.ceil(1.5 / 0.5))  # |r| grows by at least step_size a step
    assert module.rows <= pinned + 5 + 1  # forward passes of one row
    # Res_mean averages |r| after the flip up to the last step taken: fewer steps at 1.5.
    assert early.res_mean[0] < exact.res_mean[0] < 1.5


class _Identity(nn.Module):
    """The logits are the inputs."""

    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("rank", [0, 1])
def test_attack_tied_logits_rank_the_lower_class_first(rank):
    # At r = 0 all 32 logits are 0: the classes rank by index, as argmax picks, so the
    # prediction at r = 0 is c0 (an unstable sort puts class 16 first here).
    result = ResistanceAttack(max_iter=5, batch_size=2)(_Identity(), torch.zeros(2, 32),
                                                        rank=rank)
    np.testing.assert_array_equal(result.c0, rank)
    np.testing.assert_allclose(result.conf0, 1 / (32 - rank), rtol=1e-6)


def test_attack_conf_at_the_low_threshold_takes_the_conf_branch():
    # Conf = 1/5 = thresholds[0] exactly at r = 0: the loss is Conf + |r| ("|r| if
    # Conf < 0.2"), so the first step follows -grad Conf and the prediction flips at once.
    # Below the threshold the loss would be |r| alone, whose gradient at r = 0 is 0.
    result = ResistanceAttack(max_iter=5, batch_size=2, thresholds=(0.2, 0.9))(
        _Identity(), torch.zeros(2, 5))
    assert result.conf0[0] == np.float32(0.2)
    np.testing.assert_array_equal(result.res_min, 1)
    below = ResistanceAttack(max_iter=5, batch_size=2, thresholds=(0.25, 0.9))(
        _Identity(), torch.zeros(2, 5))
    assert not below.flipped.any()
    np.testing.assert_array_equal(below.res_max, 0.0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attack_memory_format_follows_channels_last(channels_last):
    # Three channels, so that the two layouts differ (with one channel they coincide).
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 3))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    seen = []
    module[0].register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].is_contiguous(memory_format=layout),
         m.weight.is_contiguous(memory_format=layout))))
    ResistanceAttack(max_iter=3, batch_size=2, channels_last=channels_last)(
        module, torch.rand(3, 3, 4, 4))
    assert len(seen) == 8 and all(inputs and weight for inputs, weight in seen), seen
    assert module[0].weight.is_contiguous()


# ------------------------------------------------------ the batch: rows paid for, not padded

@pytest.mark.parametrize("n_images, batch_size, batches", [
    (2, 256, [16]),  # two images cost 16 rows, not 256
    (16, 256, [16]),
    (17, 256, [32]),
    (300, 256, [256, 48]),  # the second round: 44 images in 48 rows
    (50, 20, [20, 20, 16]),
    (3, 4, [4]),  # never more rows than batch_size
])
def test_attack_runs_the_rows_its_images_need_in_multiples_of_16(n_images, batch_size,
                                                                  batches):
    module = _Counts(nn.Linear(4, 3))
    ResistanceAttack(max_iter=2, batch_size=batch_size)(module, torch.rand(n_images, 4))
    assert module.batches == [size for size in batches for _ in range(3)]


def test_attack_early_exit_drops_idle_slots_once_the_images_run_out():
    module = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        module[0].weight.mul_(20.0)
    counted = _Counts(module)
    X = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    early = ResistanceAttack(max_iter=60, batch_size=32, early_exit=3)(counted, X)
    # 32 rows while images wait, 16 once at most 16 are left, never an odd count.
    assert set(counted.batches) == {32, 16} and counted.batches[0] == 32
    assert counted.batches == sorted(counted.batches, reverse=True)
    alone = ResistanceAttack(max_iter=60, batch_size=32, early_exit=3)(module, X[-1:])
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(alone, name), getattr(early[-1:], name))


# ------------------------------------------------- images whose float32 softmax is one-hot

def one_hot_linear_net(scale=600.0):
    """Issue 18's example: a linear net so sure of six random images that float32's softmax
    is one-hot for each (logit margins 155 to 416 at ``scale=600``)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        module[1].weight.mul_(scale)
    return module, torch.rand(6, 16)


def linear_logits(module, X):
    """The logits of ``module = Sequential(Flatten(), Linear)`` in float64, with its weights."""
    weight, bias = (p.detach().double() for p in module[1].parameters())
    return X.double().flatten(1) @ weight.T + bias, weight


def nearest_boundary(module, X):
    """The exact L2 distance from each input to the linear net's nearest decision boundary."""
    z, weight = linear_logits(module, X)
    c = z.argmax(dim=1)
    return np.array([min(float((z[i, c[i]] - z[i, j]) / (weight[c[i]] - weight[j]).norm())
                         for j in range(z.shape[1]) if j != c[i]) for i in range(len(X))])


def margins(module, X):
    z = linear_logits(module, X)[0].sort(dim=1, descending=True).values
    return (z[:, 0] - z[:, 1]).numpy()


def test_attack_moves_images_whose_float32_softmax_is_one_hot():
    # Before: 1 - Conf, Conf's gradient and the |r| subgradient were all 0, so r stayed 0:
    # Res_N = Res_max = 0 and no flip, for exactly the images the net is surest of.
    module, X = one_hot_linear_net()
    assert margins(module, X).min() > 150
    with torch.no_grad():
        assert torch.all(module(X).softmax(dim=1).amax(dim=1) == 1)
    result = ResistanceAttack(max_iter=200)(module, X)
    assert result.flipped.all()
    assert np.all(result.res_n > 0)
    # No perturbation shorter than the distance to the nearest boundary changes the class.
    assert np.all(result.res_max >= nearest_boundary(module, X))


@pytest.mark.parametrize("settings", [
    {"norm": "l1", "step_size": 0.1}, {"norm": "linf", "step_size": 0.02},
    {"optimizer": "adam", "step_size": 0.05}, {"clip": (0.0, 1.0)}, {"early_exit": 5},
    {"precision": "bfloat16"},
], ids=str)
def test_attack_moves_one_hot_images_with_every_setting(settings):
    # With the clip, r's first step (2e-15) is clipped alone: x + r, in float32, rounds it away.
    module, X = one_hot_linear_net()
    result = ResistanceAttack(max_iter=300, **settings)(module, X)
    assert result.flipped.all() and np.all(result.res_max > 0)
    if settings.get("norm", "l2") == "l2":
        assert np.all(result.res_max >= nearest_boundary(module, X))


def test_attack_moves_one_hot_images_in_float64_and_away_from_a_runner_up():
    # At scale 3,000 the third class is beyond float32's range even from the runner-up, so
    # rank=1, which removes the prediction with a -inf offset, also starts one-hot.
    module, X = one_hot_linear_net(scale=3000.0)
    z = linear_logits(module, X)[0].sort(dim=1, descending=True).values
    assert torch.all(z[:, 1] - z[:, 2] > 104)
    ranked = ResistanceAttack(max_iter=300)(module, X, rank=1)
    assert ranked.flipped.all() and np.all(ranked.res_max > 0)
    exact = ResistanceAttack(max_iter=200)(copy.deepcopy(module).double(), X.double())
    assert exact.flipped.all() and np.all(exact.res_max >= nearest_boundary(module, X))


def test_attack_one_hot_image_with_no_class_left_stays_put():
    # rank=2 of three classes leaves c0 alone in the softmax: nothing to move to, and no NaN.
    module, X = one_hot_linear_net()
    result = ResistanceAttack(max_iter=20)(module, X, rank=2)
    assert not result.flipped.any()
    np.testing.assert_array_equal(result.res_max, 0.0)


def test_attack_one_hot_images_leave_the_others_alone():
    # The first step's direction is changed for the one-hot rows only: the other rows of the
    # same batch get their results bit for bit, as when attacked without them.
    module, X = one_hot_linear_net()
    mild = X * 0.2  # margins 31 to 83: 1 - Conf is a normal float32
    assert margins(module, mild).max() < 87
    both = ResistanceAttack(max_iter=100)(module, torch.cat([X, mild]))
    alone = ResistanceAttack(max_iter=100)(module, mild)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(both[6:], name), getattr(alone, name))


def test_attack_res_max_tracks_the_linear_boundary_at_margins_past_1000():
    # Every image starts one-hot but the first (margins 91 to 1,208). The first step points
    # along grad log(1 - Conf); from then on the |r| term grows r by step_size a step along
    # that line (Conf's own gradient is below 1e-9 of it until Conf leaves 1), so the image
    # flips at the first step past the boundary along the line, and |r| never grows past that
    # again: the loss then pulls r back (Conf < 0.9), up to a push of at most
    # step_size * |w_c0 - w_j| / 4 = 0.15 * step_size here while Conf is between 0.2 and 0.9.
    # Res_max is therefore the distance d along the line plus less than one step: the
    # tolerance is one step_size, 1% of d at most; d is exact here, in float64.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    X = (torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
         * torch.linspace(200, 1400, 8)[:, None])
    assert margins(module, X).max() > 1000 and np.sum(margins(module, X) > 104) == 7
    x = X.double().requires_grad_(True)
    z, weight = linear_logits(module, x)
    c = z.detach().argmax(dim=1)
    is_c0 = nn.functional.one_hot(c, 3).bool()
    log_rest = torch.logsumexp(z.masked_fill(is_c0, -torch.inf), dim=1) - torch.logsumexp(z, 1)
    (direction,) = torch.autograd.grad(log_rest.sum(), x)
    direction = direction / direction.norm(dim=1, keepdim=True)
    z = z.detach()
    rates = (weight[None, :, :] - weight[c][:, None, :]) @ direction[:, :, None]  # dz_j - dz_c0
    gaps = z.gather(1, c[:, None]) - z
    d = torch.where(rates[:, :, 0] > 0, gaps / rates[:, :, 0], torch.inf).amin(dim=1).numpy()
    step_size = 20.0
    result = ResistanceAttack(max_iter=int(d.max() / step_size) + 20, step_size=step_size)(
        module, X)
    assert result.flipped.all()
    assert np.all(result.res_max >= d), result.res_max - d
    assert np.all(result.res_max <= d + step_size), result.res_max - d


# ------------------------------------------------------ values that are not finite, or wrong

class _NotFinite(nn.Module):
    """A linear net whose logits are ``value`` where an input has an entry beyond ``limit``."""

    def __init__(self, value, limit):
        super().__init__()
        self.linear, self.value, self.limit = nn.Linear(4, 3), value, limit
        with torch.no_grad():
            self.linear.weight.mul_(20.0)

    def forward(self, x):
        far = (x.abs() > self.limit).any(dim=1, keepdim=True)
        return torch.where(far, self.value, self.linear(x))


@pytest.mark.parametrize("value", [torch.nan, torch.inf, -torch.inf])
def test_attack_rejects_a_net_that_returns_non_finite_logits(value):
    X = torch.rand(3, 4)
    X[1, 2] = 5.0
    with pytest.raises(ValueError, match="NaN or infinite logits for image 1, before any"):
        ResistanceAttack(max_iter=5)(_NotFinite(value, limit=2.0), X)
    # Once r has carried an image past what the net takes, the message names step_size.
    # Thresholds (0, 0) make the loss Conf - |r| throughout: r grows 0.5 a step.
    with pytest.raises(ValueError, match=r"for image 0 at step [2-9], with \|r\| = .*lower "
                                         r"step_size \(now 0.5\)"):
        ResistanceAttack(max_iter=50, step_size=0.5, thresholds=(0.0, 0.0))(
            _NotFinite(value, limit=2.0), torch.full((3, 4), 0.5))


@pytest.mark.parametrize("X", [torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, np.nan, 0.5, 0.5]]),
                               np.array([[0.5] * 4, [0.5] * 4, [np.inf, 0, 0, 0]])],
                         ids=["nan-tensor", "inf-array"])
def test_attack_rejects_pixels_that_are_not_finite(X):
    with pytest.raises(ValueError, match=f"image {len(X) - 1} holds NaN or infinite values"):
        ResistanceAttack(max_iter=5)(nn.Linear(4, 3), X)


def test_attack_huge_step_size_raises_instead_of_returning_inf():
    with pytest.raises(ValueError, match=r"overflowed to inf .* step_size=1e\+30 is too large"):
        ResistanceAttack(max_iter=30, step_size=1e30)(nn.Linear(4, 3), torch.rand(6, 4))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_attack_rejects_integer_images(dtype):
    X = (torch.rand(4, 1, 2, 2) * 255).to(dtype)
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=rf"X holds {dtype} values.*X.float\(\) / 255"):
        ResistanceAttack(max_iter=5)(module, X)
    with pytest.raises(ValueError, match="X holds uint8 values"):
        ResistanceAttack(max_iter=5)(module, X.numpy().astype(np.uint8))


def test_attack_warns_when_the_module_returns_probabilities():
    module = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="look like probabilities.*net_output='proba'"):
        ResistanceAttack(max_iter=5)(module, torch.rand(6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log-probabilities are logits
        ResistanceAttack(max_iter=5)(nn.Sequential(module[0], nn.LogSoftmax(dim=1)),
                                     torch.rand(6, 4))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_attack_low_precision_module_is_attacked_like_autocast(half):
    # x + r and the bookkeeping stay in float32, the module computes in its own dtype: the
    # same numbers as precision= gives the float32 module, whose weights autocast rounds alike.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    X = torch.rand(20, 16)
    expected = ResistanceAttack(max_iter=60, precision=str(half)[6:])(module, X)
    result = ResistanceAttack(max_iter=60)(copy.deepcopy(module).to(half), X)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name))
    assert result.flipped.any()


def test_attack_refuses_the_meta_device_and_keeps_the_weights():
    module = nn.Linear(4, 3)
    weight = module.weight.detach().clone()
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        ResistanceAttack(max_iter=2, device="meta")(module, torch.rand(2, 4))
    assert module.weight.device.type == "cpu" and torch.equal(module.weight, weight)


def test_on_device_gives_the_module_back_its_own_tensors_even_from_meta():
    from resistclf._nets import on_device

    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    module[0].weight.grad = torch.ones(3, 4)
    memory = [t.data_ptr() for t in [*module.parameters(), *module.buffers()]]
    with on_device(module, "meta"):
        assert module[0].weight.is_meta and module[1].running_mean.is_meta
    assert [t.data_ptr() for t in [*module.parameters(), *module.buffers()]] == memory
    assert torch.equal(module[0].weight.grad, torch.ones(3, 4))


class _ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x), x


def test_attack_error_counts_the_callers_samples_not_the_padded_rows():
    with pytest.raises(ValueError, match="for 6 samples it returned a tuple; return the logits"):
        ResistanceAttack(max_iter=2)(_ReturnsTuple(), torch.rand(6, 4))
    with pytest.raises(ValueError, match=r"for 6 samples, padded to a batch of 16 rows it "
                                         r"returned a tensor of shape \(16, 3, 1\)"):
        ResistanceAttack(max_iter=2)(nn.Sequential(nn.Linear(4, 3), nn.Unflatten(1, (3, 1))),
                                     torch.rand(6, 4))


#: The ways a tensor's value reaches Python, each a wait for the device on a GPU.
HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


def _count_host_reads(monkeypatch, attack, module, X):
    count = 0

    def counting(original):
        def read(self, *args, **kwargs):
            nonlocal count
            count += 1
            return original(self, *args, **kwargs)
        return read

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        attack(module, X)
    return count


# An early exit past the last step: its bookkeeping runs, but every image ends together
# (a slot that leaves early is read back then, as a new round is).
@pytest.mark.parametrize("settings", [{}, {"early_exit": 200}, {"clip": (0.0, 1.0)},
                                      {"precision": "bfloat16"}])
def test_attack_reads_back_to_the_host_once_per_step(cnn_module, digits, monkeypatch,
                                                     settings):
    # Twice the steps on the same images, in one round of the batch: the extra steps'
    # reads alone (the round's own reads cancel out).
    X = digits[2][:24]
    reads = [_count_host_reads(monkeypatch, ResistanceAttack(max_iter=steps, batch_size=32,
                                                             **settings), cnn_module, X)
             for steps in (40, 80)]
    assert reads[1] - reads[0] <= 40, reads
