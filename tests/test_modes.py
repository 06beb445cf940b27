"""Choosing a fast mode on the machine and net it runs on (resistclf.fastest_mode)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from resistclf import ResistanceAttack, ResultStore, fastest_mode

BF16 = {"precision": "bfloat16"}
CHANNELS_LAST = {"channels_last": True}
EARLY_EXIT = {"early_exit": 50}


class ViewNet(nn.Module):
    """A CNN that flattens with .view(), which channels-last activations cannot take."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


@pytest.fixture(scope="module")
def net_and_images():
    torch.manual_seed(0)
    return ViewNet().eval(), np.random.RandomState(0).rand(8, 1, 8, 8).astype(np.float32)


def seconds_per_step(table):
    """A timer that reads each mode's seconds per step from ``table``, by its settings."""
    def timer(attack, module, X):
        for (precision, channels_last, early_exit), seconds in table.items():
            if (attack.precision, attack.channels_last, attack.early_exit) == (
                    precision, channels_last, early_exit):
                return seconds * attack.max_iter
        raise AssertionError(f"no time for {attack}")
    return timer


@pytest.mark.parametrize("bf16_seconds, expected", [
    (10.0, "exact"),  # a CPU without native bfloat16: ten times slower
    (0.96, "exact"),  # within the 5% of noise: not worth leaving exact mode for
    (0.5, "bfloat16"),
])
def test_fastest_mode_never_runs_a_mode_slower_than_exact(net_and_images, bf16_seconds,
                                                          expected):
    module, X = net_and_images
    timer = seconds_per_step({("float32", False, None): 1.0,
                              ("bfloat16", False, None): bf16_seconds})
    choice = fastest_mode(module, X, {"bfloat16": BF16}, timer=timer)
    assert choice["mode"] == expected
    assert choice["seconds_per_step"] == {"exact": 1.0, "bfloat16": bf16_seconds}
    assert ("faster than exact" in choice["reason"]) == (expected == "exact")


@pytest.mark.parametrize("early_exit_seconds, expected", [
    (1.03, "early exit"),  # as fast per step, and fewer steps
    (1.2, "exact"),
])
def test_fastest_mode_credits_early_exit_with_its_fewer_steps(net_and_images,
                                                             early_exit_seconds, expected):
    module, X = net_and_images
    timer = seconds_per_step({("float32", False, None): 1.0,
                              ("float32", False, 50): early_exit_seconds})
    assert fastest_mode(module, X, {"early exit": EARLY_EXIT},
                        timer=timer)["mode"] == expected


def test_fastest_mode_leaves_out_channels_last_on_a_net_that_calls_view(net_and_images):
    module, X = net_and_images
    with pytest.raises(ValueError, match="view"):
        ResistanceAttack(max_iter=1, channels_last=True)(module, X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = fastest_mode(module, X, {"channels last": CHANNELS_LAST})
    assert choice["mode"] == "exact" and list(choice["left_out"]) == ["channels last"]
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and messages[0].startswith(
        "The channels last mode cannot run on this net, so it is left out:")


def test_fastest_mode_with_no_fast_mode_times_nothing(net_and_images):
    module, X = net_and_images
    choice = fastest_mode(module, X, {}, timer=None)
    assert choice["mode"] == "exact" and choice["seconds_per_step"] == {}


def test_fastest_mode_remembers_its_choice_for_the_machine_and_net(net_and_images, tmp_path):
    module, X = net_and_images
    calls = []
    table = seconds_per_step({("float32", False, None): 1.0, ("bfloat16", False, None): 0.5})

    def timer(*args):
        calls.append(1)
        return table(*args)

    store = ResultStore(tmp_path)
    first = fastest_mode(module, X, {"bfloat16": BF16}, store=store, timer=timer)
    again = fastest_mode(module, X, {"bfloat16": BF16}, store=store, timer=timer)
    assert first == again and first["mode"] == "bfloat16" and len(calls) == 2
    retrained = ViewNet().eval()  # other weights, the same steps: not timed again
    fastest_mode(retrained, X, {"bfloat16": BF16}, store=store, timer=timer)
    assert len(calls) == 2
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # another architecture
    fastest_mode(other, X, {"bfloat16": BF16}, store=store, timer=timer)
    assert len(calls) == 4


@pytest.mark.parametrize("modes, steps, match", [
    ({"mine": {"max_iter": 10}}, 4, r"A mode may set only \['precision', 'channels_last'"),
    ({"bfloat16": BF16}, 0, "steps must be a positive integer; got 0"),
    ({"bfloat16": BF16}, 2.5, "steps must be a positive integer; got 2.5"),
])
def test_fastest_mode_bad_arguments_raise(net_and_images, modes, steps, match):
    module, X = net_and_images
    with pytest.raises(ValueError, match=match):
        fastest_mode(module, X, modes, steps=steps)
