"""The study's data and reference network, shared by every report and benchmark."""

import sys
import time
import warnings

import numpy as np
import torch

from .. import fastest_mode
from ..datasets import load_fashion_mnist, load_mnist
from ..models import SimpleCNN, make_net

DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}

#: Training of the reference CNN: Adam, learning rate 1e-3, batches of 128.
REFERENCE_EPOCHS = 20


def load_dataset(name, root, *, download=False):
    """Training and test splits of ``name`` ("mnist" or "fashion-mnist").

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarrays
        Images of shape (n, 1, 28, 28), float32 in [0, 1]; int64 labels.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}; got {name!r}.")
    load = DATASETS[name]
    return (*load(root, train=True, download=download), *load(root, train=False,
                                                               download=download))


def reference_net(X_train, y_train, *, store, seed=0, epochs=REFERENCE_EPOCHS, module=SimpleCNN,
                  module_params=None, verbose=True):
    """The reference CNN (or another module) trained on ``X_train``, kept in ``store``.

    The weights are keyed by the training data, the architecture and how the net is
    trained, so every command that asks for the same net reuses it. A training run cut
    short (skorch ends ``fit`` quietly on Ctrl-C) is never kept: it stops the command.

    Parameters
    ----------
    X_train, y_train : ndarrays
        Training images and labels.
    store : ResultStore
        Where the weights (``net-<key>.pt``) and how they were trained (``net-<key>.json``)
        are kept.
    seed : int, default=0
        Seeds torch for the initialisation and the batch order.
    epochs : int, default=REFERENCE_EPOCHS
    module : torch.nn.Module class, default=SimpleCNN
        Trained the reference way (see :func:`~resistclf.models.make_net`).
    module_params : dict or None, default=None
        Passed to ``module``, besides ``n_classes``.
    verbose : bool, default=True
        Print skorch's epoch log while training.

    Returns
    -------
    net : skorch.NeuralNetClassifier
        Trained.
    info : dict
        How it was trained, and how long that took.

    Raises
    ------
    KeyboardInterrupt
        If training stopped before the last epoch; nothing is kept.
    """
    module_params = module_params or {}
    architecture = f"{module.__name__}(" + ", ".join(
        f"{k}={v!r}" for k, v in module_params.items()) + ")"
    info = {"architecture": architecture, "epochs": epochs, "seed": seed,
            "n_train": int(len(X_train)), "optimizer": "Adam(lr=1e-3), batch_size=128"}
    n_classes = int(y_train.max()) + 1
    net = make_net(module, max_epochs=epochs, verbose=int(verbose), n_classes=n_classes,
                   **module_params)
    # A net loaded from its weights has not seen y: it needs its classes to be told.
    net.classes = np.arange(n_classes)
    settings = {**info, "X_train": X_train, "y_train": y_train}

    def train():
        if verbose:
            print(f"Training {architecture} on {len(X_train)} images for {epochs} epochs...",
                  file=sys.stderr)
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net.fit(X_train, y_train)
        if len(net.history) < epochs:
            raise KeyboardInterrupt(
                f"Training of {architecture} stopped after {len(net.history)} of {epochs} "
                "epochs (interrupted); the half-trained net was not kept. Run the command "
                "again to train it.")
        info["train_seconds"] = round(time.perf_counter() - start, 1)
        # Training is bit-reproducible for a seed only at a fixed thread count (see the limits
        # page of the user guide), so the count is recorded; it does not decide reuse.
        info["torch_threads"] = torch.get_num_threads()
        return net.module_.state_dict()

    def load(state):
        with torch.random.fork_rng():  # the weights are replaced: leave torch's RNG alone
            net.initialize()
        try:
            net.module_.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"they are not the weights of {architecture} ({exc})") from exc

    store.tensors("net", settings, train, check=load)
    return net, store.json("net", settings, lambda: info)


#: The attack's modes, as ``ResistanceAttack`` settings on top of the defaults (which are
#: exact float32). The benchmark judges each fast mode by the study's conclusions on the full
#: MNIST and FashionMNIST test sets; ``--fast`` uses the fastest one found equivalent.
ATTACK_MODES = {
    "exact": {},
    "bfloat16, channels last": {"precision": "bfloat16", "channels_last": True},
    "early exit": {"early_exit": 50},
    "channels last, early exit": {"channels_last": True, "early_exit": 50},
    "all three": {"precision": "bfloat16", "channels_last": True, "early_exit": 50},
}
#: The mode ``--fast`` runs on each dataset: the fastest of ``ATTACK_MODES`` that ``resistclf
#: bench`` found equivalent to exact mode on that test set by two one-sided tests against
#: declared margins, or exact mode where none was. The committed benchmark
#: (docs/results/bench/bench.json) judged its modes before that test existed (an interval
#: that contains 0 is not equivalence), so no fast mode has been shown equivalent yet.
FAST_MODES = {"mnist": "exact", "fashion-mnist": "exact"}
NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: The class names the figures show, where a class's label is not its name.
CLASS_NAMES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]}


def attack_mode(fast, dataset, module=None, X=None, store=None):
    """The name and settings of the mode a study command attacks ``dataset`` in.

    With ``fast``, the mode of :data:`FAST_MODES` where it is faster than exact mode on
    this machine for ``module`` and images like ``X`` (:func:`resistclf.fastest_mode`,
    remembered in ``store``), else exact mode, with a warning that says why.
    """
    name = FAST_MODES[dataset] if fast else "exact"
    if fast and name == "exact":
        warnings.warn(f"--fast runs exact mode on {NAMES[dataset]}: no fast mode reached exact "
                      "mode's conclusions there (docs/results/bench).", stacklevel=2)
    if name == "exact":
        return name, ATTACK_MODES[name]
    choice = fastest_mode(module, X, {name: ATTACK_MODES[name]}, store=store)
    if choice["mode"] == "exact":
        warnings.warn(f"--fast runs exact mode on {NAMES[dataset]}: the {name} mode reaches "
                      f"exact mode's conclusions, but {choice['reason']} "
                      f"({choice['seconds_per_step']}).", stacklevel=2)
    return choice["mode"], choice["settings"]


def mode_sentence(mode, dataset, fast):
    """How a report says which mode ran: a clause, without a full stop."""
    if mode == "exact":
        sentence = "exact mode (float32, the default)"
        if fast:
            sentence += (f"; `--fast` was given, but no fast mode both reached exact mode's "
                         f"conclusions on the full {NAMES[dataset]} test set "
                         "(docs/results/bench) and ran faster than exact mode on this "
                         "machine and net")
        return sentence
    settings = ", ".join(f"{k}={v!r}" for k, v in ATTACK_MODES[mode].items())
    return (f"**fast mode** (`--fast`: {mode}, `{settings}`), which the benchmark found to reach "
            f"exact mode's conclusions on the full {NAMES[dataset]} test set "
            "(docs/results/bench), and which ran faster than exact mode on this machine and "
            "net (timed before the run)")
