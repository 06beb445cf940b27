import numpy as np
import pytest
import torch
from torch import nn

from resistclf import AttackResult, ResistanceAttack


@pytest.fixture(scope="module")
def cnn_module(trained_cnn):
    return trained_cnn.module_


def test_attack_batched_equals_one_image_at_a_time(cnn_module, digits):
    # The attack's last phase is chaotic: without fixed-shape batches, the
    # 1e-7 differences of a kernel picked for one row instead of 12 grow to
    # about step_size in Res_N.
    _, _, X, _ = digits
    X = torch.tensor(X[:12])
    attack = ResistanceAttack(max_iter=300, step_size=0.2, batch_size=16)
    batched = attack(cnn_module, X)
    alone = AttackResult.concatenate([attack(cnn_module, X[i : i + 1]) for i in range(len(X))])
    for name in ["res_n", "res_max", "res_min", "flipped", "adversarial_class", "c0", "conf0"]:
        np.testing.assert_allclose(getattr(batched, name), getattr(alone, name), rtol=1e-6)


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
        (nn.Linear(4, 3), [[0.0] * 4] * 2, "torch.Tensor"),
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
    """``module``, counting the rows it computes and the backward passes through its input."""

    def __init__(self, module):
        super().__init__()
        self.module, self.rows, self.backwards = module, 0, [0]

    def forward(self, x):
        self.rows += len(x)
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
