"""The resistance attack: how hard it is to change a network's prediction."""

import copy
import os
import time
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import get_active_backend
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from ._nets import (
    Normalized,
    channels_last_weights,
    eval_mode,
    forward,
    module_device,
    module_dtype,
    on_device,
)

#: The write-up's three features, in the order of :attr:`AttackResult.features`.
FEATURE_NAMES = ("res_n", "res_max", "res_min")
#: Every per-image feature a :class:`ResistanceClassifier` can use.
ALL_FEATURE_NAMES = (*FEATURE_NAMES, "res_mean")


@dataclass
class AttackResult:
    """Per-sample outcome of :class:`ResistanceAttack`.

    Class indices refer to the module's outputs (column numbers of its logits).

    Attributes
    ----------
    res_n : ndarray of shape (n_samples,), dtype float64
        Res_N: the norm of the perturbation after the last step.
    res_max : ndarray of shape (n_samples,), dtype float64
        Res_max: the largest norm of the perturbation over the attack.
    res_min : ndarray of shape (n_samples,), dtype int64
        Res_min: the first step ``t`` (1 to ``max_iter``) after which the
        prediction on ``x + r_t`` differs from ``c0``. ``max_iter + 1`` when
        the prediction never changes.
    flipped : ndarray of shape (n_samples,), dtype bool
        Whether the prediction changed at any step.
    adversarial_class : ndarray of shape (n_samples,), dtype int64
        The prediction on the last iterate whose prediction differed from
        ``c0``; ``c0`` itself when the prediction never changed.
    c0 : ndarray of shape (n_samples,), dtype int64
        The class attacked: the module's prediction at ``r = 0`` (for
        ``rank=0``), or its ``rank``-th runner-up.
    conf0 : ndarray of shape (n_samples,), dtype float64
        Conf at ``r = 0``: the softmax probability of ``c0``.
    conf_trace, norm_trace : ndarray of shape (n_samples, max_iter + 1) or None
        Conf and the norm of the perturbation at ``r_0 = 0, r_1, ..., r_T``;
        only with ``return_trace=True``.
    """

    res_n: np.ndarray
    res_max: np.ndarray
    res_min: np.ndarray
    res_mean: np.ndarray
    flipped: np.ndarray
    adversarial_class: np.ndarray
    c0: np.ndarray
    conf0: np.ndarray
    conf_trace: np.ndarray | None = None
    norm_trace: np.ndarray | None = None

    def __len__(self):
        return len(self.res_n)

    def __getitem__(self, index):
        """The results of the samples selected by ``index`` (a slice or an index array)."""
        return type(self)(
            **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
               for f in fields(self)}
        )

    @property
    def features(self):
        """Res_N, Res_max and Res_min as a float64 array of shape (n_samples, 3)."""
        return self.feature_matrix(FEATURE_NAMES)

    def feature_matrix(self, names):
        """The named features as columns of a float64 array of shape (n_samples, len(names)).

        Parameters
        ----------
        names : sequence of str
            Each one of ``"res_n"``, ``"res_max"``, ``"res_min"`` and ``"res_mean"``.
        """
        names = check_feature_names(names)
        return np.column_stack([getattr(self, name) for name in names]).astype(np.float64)

    @classmethod
    def concatenate(cls, results):
        """Join the results of consecutive batches into one."""
        return cls(
            **{
                f.name: None
                if getattr(results[0], f.name) is None
                else np.concatenate([getattr(r, f.name) for r in results])
                for f in fields(cls)
            }
        )


def check_feature_names(names):
    """``names`` as a tuple, if it is a non-empty sequence of feature names; else raise."""
    if isinstance(names, str) or not len(names) or any(
            name not in ALL_FEATURE_NAMES for name in names):
        raise ValueError(
            f"features must be a non-empty sequence of names from {ALL_FEATURE_NAMES}; "
            f"got {names!r}."
        )
    return tuple(names)


def _l2(r):
    return torch.linalg.vector_norm(r, ord=2, dim=1)


def _l2_grad(r, norm):
    # Where every entry of r is below sqrt(tiny) (1e-19 in float32) the squares underflow
    # and the norm is 0 or inexact; r / |r| is then taken on r scaled to a largest entry of 1.
    largest = r.abs().amax(dim=1, keepdim=True)
    underflows = (largest < torch.finfo(r.dtype).tiny ** 0.5) & (largest > 0)
    r = torch.where(underflows, r / largest.clamp_min(torch.finfo(r.dtype).tiny), r)
    norm = torch.where(underflows[:, 0], _l2(r), norm)
    # At r = 0 the norm has no gradient; use the minimum-norm subgradient, 0.
    return r / torch.where(norm > 0, norm, 1.0)[:, None]


def _l1(r):
    return r.abs().sum(dim=1)


def _l1_grad(r, norm):
    return r.sign()  # sign(0) = 0: the minimum-norm subgradient at r = 0.


def _linf(r):
    return r.abs().amax(dim=1)


def _linf_grad(r, norm):
    # Split the gradient evenly among the tied largest entries, as torch's amax
    # does; at r = 0 the sign makes it 0, the minimum-norm subgradient.
    at_max = (r.abs() == norm[:, None]).to(r.dtype)
    return r.sign() * at_max / at_max.sum(dim=1, keepdim=True)


_NORMS = {"l2": (_l2, _l2_grad), "l1": (_l1, _l1_grad), "linf": (_linf, _linf_grad)}
_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ResistanceAttack(BaseEstimator):
    """Zero-initialised gradient attack that measures the resistance of images.

    The perturbation ``r`` starts at 0 and takes ``max_iter`` gradient steps on

    - ``|r|`` if Conf < ``thresholds[0]``,
    - ``Conf + |r|`` if Conf < ``thresholds[1]``,
    - ``Conf - |r|`` otherwise,

    where Conf is the softmax probability of the originally predicted class
    ``c0`` on ``x + r``. The third branch makes ``|r|`` grow while the net is
    confident, so the perturbation does not stall at 0; the first two pull it
    back once the prediction is close to changing. The attack ends near the
    smallest perturbation that moves the image to another class, so a large
    ``|r|`` means a resistant image.

    The object holds settings only. Calling it attacks a whole batch and
    returns one :class:`AttackResult`. Each image's result does not depend on
    the other images attacked with it (see Notes).

    Parameters
    ----------
    max_iter : int, default=500
        Number of gradient steps.
    step_size : float, default=0.15
        Learning rate of the optimizer. With plain gradient descent and the L2
        norm, each step moves ``r`` by at most about ``step_size`` in norm from
        the ``|r|`` term. 0.15 is the smallest value tried at which at least
        97% of correctly classified MNIST and FashionMNIST test images change
        prediction within 500 steps with the reference CNN, while Res_N still
        separates correct from incorrect predictions; see
        ``docs/step_size.rst``.
    norm : {"l2", "l1", "linf"}, default="l2"
        Norm of the perturbation, computed over each image's values.
    thresholds : tuple of two floats, default=(0.2, 0.9)
        The Conf thresholds that select the loss branch.
    clip : tuple of two floats or None, default=None
        If given, ``x + r`` is clipped to this box (for example ``(0, 1)``)
        after every step.
    preprocessing : dict or None, default=None
        Normalisation the module expects, as in Foolbox: ``dict(mean=...,
        std=..., axis=...)``. The module is called on ``(x + r - mean) / std``,
        so that ``X``, ``|r|`` and ``clip`` stay in the caller's pixel units.
        ``mean`` and ``std`` are numbers or sequences (``std`` > 0); without
        ``axis`` they broadcast against one sample's shape, as NumPy
        broadcasts; with a negative ``axis`` a one-dimensional ``mean`` and
        ``std`` lie along that axis of a sample (``axis=-3`` for the channels
        of ``(C, H, W)`` images, torchvision's ``Normalize``).
    optimizer : {"sgd", "adam"}, default="sgd"
        Plain gradient descent (the write-up's), or Adam.
    batch_size : int or "auto", default=256
        Number of images attacked at once. ``"auto"`` times a few steps at
        batch sizes from 16 up and takes the smallest within 10% of the best
        throughput whose estimated memory fits the budget (a quarter of the
        RAM on CPU, half the free memory on CUDA). Results depend on the batch
        size in their last digits (see Notes), so set an integer for
        bit-for-bit reproducible numbers.
    precision : {"float32", "bfloat16", "float16"}, default="float32"
        Precision of the module's forward and backward passes, through
        :func:`torch.autocast`; the attack's own bookkeeping stays in float32.
        Reduced precision is faster on hardware that supports it (bfloat16 on
        recent x86 CPUs, both on CUDA) and changes results; see the README's
        performance section for how much.
    early_exit : int or None, default=None
        If set, an image leaves the batch, and the next one takes its place,
        once its prediction has flipped and neither Res_max nor the
        adversarial class has changed for ``early_exit`` steps: the attack has
        settled into its oscillation across the Conf thresholds. Res_N is then
        ``|r|`` at that step rather than at step ``max_iter``, and Res_mean
        averages up to that step. Only with
        ``optimizer="sgd"`` and without traces.
    channels_last : bool, default=False
        Run 4-D image batches, and the module's 4-D weights, in channels-last
        memory format for the attack (the module is restored afterwards).
        Convolutions run faster that way on CPUs (oneDNN) and on CUDA tensor
        cores, most of all in reduced precision. Different kernels change
        results in their last digits, like a different batch size (see Notes).
    device : str, torch.device or None, default=None
        Where to run. None runs on the module's own device. Otherwise the
        module is moved there for the attack and moved back afterwards.
    n_jobs : int or None, default=None
        Number of joblib workers, each attacking batches of images with its
        own copy of the module. None means 1 unless in a
        :func:`joblib.parallel_config` context, as in scikit-learn: with
        ``parallel_config(backend="dask")`` the attack then uses every worker
        of the dask cluster. -1 means all CPUs. The images are split into
        tasks of one batch each, so that a lost worker costs one task; the
        results are the same as with ``n_jobs=1``. Use a process-based
        backend (loky, the default; dask; ray) so that workers do not share
        the module. See the user guide's page on scaling.
    verbose : bool, default=False
        Show a progress bar over images.

    Notes
    -----
    **The gradient of Conf.** Conf's gradient with respect to the logits is
    ``Conf * (e_c0 - p)``. In float32, ``1 - Conf`` rounds to 0 for very
    confident images, which would drop the ``e_c0`` term; it is computed
    instead as the sum of the other classes' probabilities, which is exact.

    **The gradient of |r| at r = 0** is undefined. The attack uses the
    minimum-norm subgradient, 0, so the first step follows ``-grad Conf``
    alone and no direction is preferred by the norm.

    **Batches have a fixed shape.** Images are attacked in ``batch_size``
    slots; a slot whose image is done takes the next image, and slots left
    without one are run anyway, so the kernels always see the same shapes.
    This matters because the attack's last phase is chaotic: it bounces
    across the Conf thresholds, and a difference of 1e-7 in the logits, such
    as BLAS gives when it picks another kernel for another number of rows,
    grows to about ``step_size`` in Res_N within a few hundred steps. With
    fixed shapes an image's result is the same whether it is attacked alone
    or among others, bit for bit on the machines tested. The price is that
    fewer than ``batch_size`` images cost as much as ``batch_size``; lower
    ``batch_size`` for small inputs.

    **Res_mean** is the stable summary of the same oscillation: the mean
    ``|r|`` from the first flip to the last step averages over a few hundred
    samples of it, so it changes little where Res_N changes by up to
    ``step_size``.

    **Images that never flip** get ``flipped=False``,
    ``res_min = max_iter + 1`` and ``adversarial_class = c0``; their ``res_n``
    and ``res_max`` are measured as for any other image.

    Examples
    --------
    >>> import torch
    >>> from resistclf import ResistanceAttack
    >>> module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> result = ResistanceAttack(max_iter=50, batch_size=8)(module, torch.rand(5, 4))
    >>> result.features.shape
    (5, 3)
    """

    _parameter_constraints = {
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "step_size": [Interval(Real, 0, None, closed="neither")],
        "norm": [StrOptions(set(_NORMS))],
        "thresholds": [tuple, list],
        "clip": [tuple, list, None],
        "preprocessing": [dict, None],
        "optimizer": [StrOptions({"sgd", "adam"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "precision": [StrOptions(set(_PRECISIONS))],
        "early_exit": [Interval(Integral, 1, None, closed="left"), None],
        "channels_last": ["boolean"],
        "device": [str, torch.device, None],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        max_iter=500,
        step_size=0.15,
        norm="l2",
        thresholds=(0.2, 0.9),
        clip=None,
        preprocessing=None,
        optimizer="sgd",
        batch_size=256,
        precision="float32",
        early_exit=None,
        channels_last=False,
        device=None,
        n_jobs=None,
        verbose=False,
    ):
        self.max_iter = max_iter
        self.step_size = step_size
        self.norm = norm
        self.thresholds = thresholds
        self.clip = clip
        self.preprocessing = preprocessing
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.precision = precision
        self.early_exit = early_exit
        self.channels_last = channels_last
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose

    def _check_settings(self, return_trace):
        self._validate_params()
        low, high = self.thresholds if len(self.thresholds) == 2 else (None, None)
        if not (isinstance(low, Real) and isinstance(high, Real) and 0 <= low <= high <= 1):
            raise ValueError(
                "thresholds must be two numbers (low, high) with "
                f"0 <= low <= high <= 1; got {self.thresholds!r}."
            )
        if self.clip is not None and not (
            len(self.clip) == 2 and self.clip[0] < self.clip[1]
        ):
            raise ValueError(
                f"clip must be None or a pair (low, high) with low < high; "
                f"got {self.clip!r}."
            )
        if self.preprocessing is not None:
            _mean_and_std(self.preprocessing)
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 has no meaning: give a positive number of workers, "
                             "-1 for all CPUs, or None.")
        device = torch.device("cpu" if self.device is None else self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={self.device!r} was asked for, but CUDA is not available."
            )
        if self.early_exit is not None and (self.optimizer != "sgd" or return_trace):
            raise ValueError(
                "early_exit works with optimizer='sgd' and without return_trace: Adam's "
                "state and the traces need every step."
            )

    @validate_params(
        {"X": [torch.Tensor, np.ndarray, Dataset],
         "rank": [Interval(Integral, 0, None, closed="left")], "return_trace": ["boolean"]},
        prefer_skip_nested_validation=True,
    )
    def __call__(self, module, X, *, rank=0, return_trace=False):
        """Attack every image in ``X`` and return the per-image results.

        Parameters
        ----------
        module : torch.nn.Module
            Maps a batch of inputs to logits of shape (n_samples, n_classes).
            It is run in eval mode with its parameters frozen; its mode,
            ``requires_grad`` flags and device are restored afterwards, also
            after an error.
        X : torch.Tensor, ndarray or torch.utils.data.Dataset
            The inputs, of shape (n_samples, ...); never modified. A NumPy
            array may be memory-mapped (``np.load(path, mmap_mode="r")``) and
            a map-style ``Dataset`` may return images or tuples whose first
            element is the image (as torchvision's datasets do). Either is
            read a batch at a time, so inputs larger than memory can be
            attacked.
        rank : int, default=0
            Which of the module's ranked classes to attack away from. 0 is its
            prediction, the write-up's attack. ``rank=j`` attacks away from the
            (j+1)-th ranked class with the ``j`` classes ranked above it removed
            from the softmax, so that it starts as the prediction among the
            classes left; the adversarial class is then one of those.
        return_trace : bool, default=False
            Also return Conf and ``|r|`` at every step.

        Returns
        -------
        result : AttackResult
        """
        self._check_settings(return_trace)
        images = _Images(X)
        module = self.preprocessed(module, images.sample_shape)
        device = module_device(module) if self.device is None else torch.device(self.device)
        n_jobs = effective_n_jobs(self.n_jobs)
        batch_size = self.batch_size
        if batch_size == "auto":
            batch_size = self._auto_batch_size(module, X, device, n_jobs)
        if n_jobs == 1:
            # Counted in evaluations (max_iter + 1 per image), shown in images.
            evaluations = self.max_iter + 1
            with tqdm(total=len(images) * evaluations, unit_scale=1 / evaluations, unit="img",
                      desc="resistance attack", disable=not self.verbose,
                      bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} img [{elapsed}<{remaining}, "
                                 "{rate_fmt}]") as progress:
                return self._attack_chunk(module, images, device, batch_size, rank,
                                          return_trace, progress.update)
        # One batch per task (fewer images when there are few): many small tasks, so that
        # a lost worker costs one of them. Results do not depend on the split, since every
        # batch has the same shape. Each task's images are read only when joblib dispatches
        # it, which bounds the memory they take.
        size = min(batch_size, -(-len(images) // n_jobs))
        # Threads would share the module, whose state each task changes and restores.
        shared = getattr(get_active_backend()[0], "uses_threads", False)
        tasks = Parallel(n_jobs=self.n_jobs, batch_size=1, return_as="generator")(
            delayed(_attack_task)((self, copy.deepcopy(module) if shared else module,
                                   images.read(start, start + size), device, batch_size, rank,
                                   return_trace))
            for start in range(0, len(images), size)
        )
        parts = []
        with tqdm(total=len(images), unit="img", desc="resistance attack",
                  disable=not self.verbose) as progress:
            for part in tasks:
                parts.append(part)
                progress.update(len(part))
        return AttackResult.concatenate(parts)

    def preprocessed(self, module, sample_shape):
        """``module`` with ``preprocessing`` applied to its input (``module`` itself if None).

        Parameters
        ----------
        module : torch.nn.Module
        sample_shape : tuple of int
            The shape of one input sample, which ``mean`` and ``std`` must
            broadcast to.

        Returns
        -------
        module : torch.nn.Module
        """
        if self.preprocessing is None:
            return module
        mean, std = _mean_and_std(self.preprocessing)
        for name, value in (("mean", mean), ("std", std)):
            try:
                fits = torch.broadcast_shapes(value.shape, sample_shape) == tuple(sample_shape)
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"preprocessing {name} of shape {tuple(value.shape)} does not broadcast "
                    f"to a sample of shape {tuple(sample_shape)}; give axis=-3 for per-channel "
                    "values of (C, H, W) images."
                )
        dtype, device = module_dtype(module), module_device(module)
        return Normalized(module, mean.to(device, dtype), std.to(device, dtype))

    def _attack_chunk(self, module, images, device, batch_size, rank, return_trace,
                      progress=None):
        four_d = len(images.sample_shape) == 3
        with on_device(module, device), eval_mode(module), torch.enable_grad(), \
                channels_last_weights(module, enabled=self.channels_last and four_d):
            return self._attack_images(module, images, device, batch_size, rank, return_trace,
                                       progress or (lambda count: None))

    def _attack_images(self, module, images, device, batch_size, rank, return_trace,
                       progress):
        """Attack the images through ``batch_size`` slots of a fixed-shape batch."""
        dtype = module_dtype(module)
        norm_of, norm_grad = _NORMS[self.norm]
        low, high = self.thresholds
        never = self.max_iter + 1
        autocast = torch.autocast(device.type, dtype=_PRECISIONS[self.precision],
                                  enabled=self.precision != "float32")
        memory_format = (torch.channels_last if self.channels_last
                         and len(images.sample_shape) == 3 else torch.contiguous_format)
        slots = _Slots(images, batch_size, device, dtype, return_trace, self.max_iter,
                       memory_format)
        r = torch.zeros_like(slots.x, requires_grad=True)
        optimizer = None

        while slots.busy():
            if slots.all_fresh():  # all slots restart together: a new optimizer state
                optimizer = (torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam)(
                    [r], lr=self.step_size)
            with autocast:
                raw = forward(module, slots.x + r)
            with torch.no_grad():
                slots.start_images(raw.detach(), rank)
                logits = raw.detach().to(slots.work) + slots.removed
                proba = logits.softmax(dim=1)
                conf = proba[slots.is_c0]
                norm = norm_of(r.detach().flatten(1))
                pred = logits.argmax(dim=1)
                changed = pred != slots.c0
                step = slots.step
                slots.res_min = torch.where(changed & (slots.res_min == never) & (step > 0),
                                            step, slots.res_min)
                after_flip = slots.res_min <= step
                slots.norm_sum_after_flip += torch.where(after_flip, norm, 0.0)
                slots.steps_after_flip += after_flip
                moved = (norm > slots.res_max) | (changed & (pred != slots.adversarial_class))
                slots.stable_since = torch.where(moved, step, slots.stable_since)
                slots.adversarial_class = torch.where(changed, pred, slots.adversarial_class)
                slots.res_max = torch.maximum(slots.res_max, norm)
                slots.conf0 = torch.where(step == 0, conf, slots.conf0)
                slots.record_trace(conf, norm)
                done = step == self.max_iter
                if self.early_exit is not None:
                    done |= (slots.res_min < never) & (step - slots.stable_since
                                                       >= self.early_exit)
                # dConf/dlogits = Conf * (e_c0 - p), with 1 - Conf summed from
                # the other classes so that it does not round to 0.
                others = proba.masked_fill(slots.is_c0, 0.0)
                dconf = torch.where(slots.is_c0, others.sum(dim=1, keepdim=True), -others)
                dconf *= (conf * (conf >= low))[:, None]
                norm_sign = torch.where(conf >= high, -1.0, 1.0).to(dconf.dtype)
            if not bool(done.all()):
                (grad,) = torch.autograd.grad(raw, r, grad_outputs=dconf.to(raw.dtype))
                with torch.no_grad():
                    flat = r.detach().flatten(1)
                    # Out of place: the input gradient of a module that sums its input
                    # is a broadcast view, which cannot be written to.
                    grad = grad + (norm_sign[:, None] * norm_grad(flat, norm)).view_as(r)
                    r.grad = grad
                    optimizer.step()
                    if self.clip is not None:
                        r.copy_((slots.x + r).clamp(*self.clip) - slots.x)
            with torch.no_grad():
                progress(slots.finish(done, norm, r))
        return slots.result()

    def _auto_batch_size(self, module, X, device, n_jobs=1):
        """The smallest batch size within 10% of the best measured throughput."""
        images = _Images(X)
        # Workers on this machine share its memory; those of a cluster do not count.
        budget = _memory_budget(device) // min(n_jobs, os.cpu_count() or 1)
        per_image = _bytes_per_image(module, images.take(np.arange(min(2, len(images))))
                                     .to(device), self.precision)
        best, throughput = None, {}
        for batch_size in 2 ** np.arange(4, 12):
            if batch_size * per_image > budget:
                break
            # The module is already preprocessed; time it here, in this process.
            timed = clone(self).set_params(max_iter=3, batch_size=int(batch_size),
                                           early_exit=None, preprocessing=None, n_jobs=1,
                                           verbose=False)
            batch = images.take(np.arange(batch_size) % len(images))
            timed(module, batch[:1])  # warm-up at this shape
            start = time.perf_counter()
            timed(module, batch)
            throughput[int(batch_size)] = batch_size / (time.perf_counter() - start)
            best = max(throughput.values())
            if len(images) <= batch_size or throughput[int(batch_size)] < 0.8 * best:
                break
        return min(b for b, t in throughput.items() if t >= 0.9 * best) if throughput else 16


def _attack_task(task):
    """One task of a parallel attack: ``(attack, module, images, *rest)``, ``images`` a tensor.

    Everything comes packed in one tuple, which joblib's dask backend sends with the
    task rather than scattering it to a single worker (tuples cannot be weakly
    referenced): a task then never depends on data that a lost worker held, and the
    scheduler can rerun it elsewhere.
    """
    attack, module, images, *rest = task
    return attack._attack_chunk(module, _Images(images), *rest)


class _Images:
    """Read access to the images to attack, a few at a time.

    ``X`` is a tensor, a NumPy array (a memory map is read only where asked) or a
    map-style Dataset whose items are images or tuples starting with one.
    """

    def __init__(self, X):
        if isinstance(X, IterableDataset) or (isinstance(X, Dataset) and not hasattr(
                X, "__len__")):
            raise TypeError("X must be a map-style Dataset, with __len__ and __getitem__; "
                            f"got {type(X).__name__}.")
        if isinstance(X, np.ndarray) and X.dtype.kind not in "biuf":
            raise ValueError(f"X must hold numbers; got an array of dtype {X.dtype}.")
        self.X, self.sample_shape = X, None
        first = self.read(0, 1) if len(X) else None
        if first is None or first.ndim < 2:
            shape = (len(X), *(() if first is None else first.shape[1:]))
            raise ValueError("X must hold at least one sample and have shape "
                             f"(n_samples, ...); got shape {shape}.")
        self.sample_shape = tuple(first.shape[1:])

    def __len__(self):
        return len(self.X)

    def read(self, start, stop):
        """Images ``start`` to ``stop - 1``, as a tensor (a new one, unless X is a tensor)."""
        return self._rows(slice(start, stop))

    def take(self, positions):
        """The images at ``positions`` (an integer array), as a new tensor."""
        return self._rows(np.asarray(positions))

    def _rows(self, positions):
        if isinstance(self.X, torch.Tensor):
            return self.X[positions if isinstance(positions, slice)
                          else torch.as_tensor(positions)]
        if isinstance(self.X, np.ndarray):
            rows = self.X[positions]
            # A copy in native byte order: torch takes no other, and memory maps are read-only.
            return torch.from_numpy(np.array(rows, dtype=rows.dtype.newbyteorder("=")))
        numbers = (range(len(self.X))[positions] if isinstance(positions, slice)
                   else positions.tolist())
        items = [self._item(i) for i in numbers]
        shapes = {tuple(item.shape) for item in items} | (
            set() if self.sample_shape is None else {self.sample_shape})
        if len(shapes) > 1:
            raise ValueError(f"The Dataset's images differ in shape: {sorted(shapes)}.")
        return torch.stack(items) if items else torch.zeros((0, *self.sample_shape))

    def _item(self, i):
        item = self.X[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(image, torch.Tensor):
            return image
        if isinstance(image, (np.ndarray, np.generic, Real)):
            return torch.from_numpy(np.array(image))
        raise TypeError(
            f"Dataset items must be images (tensors or arrays) or tuples starting with one; "
            f"item {i} is a {type(image).__name__} (give the Dataset a transform such as "
            "torchvision's ToTensor)."
        )


def _mean_and_std(preprocessing):
    """``preprocessing``'s mean and std as float64 tensors shaped to broadcast over a sample."""
    unknown = sorted(set(preprocessing) - {"mean", "std", "axis"})
    if unknown:
        raise ValueError(f"preprocessing takes the keys mean, std and axis; got {unknown}.")
    try:
        mean, std = (torch.as_tensor(np.asarray(preprocessing.get(key, default), dtype=float))
                     for key, default in (("mean", 0.0), ("std", 1.0)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"preprocessing mean and std must be numbers or sequences of "
                         f"numbers; got {preprocessing!r}.") from exc
    if not bool(((std > 0) & torch.isfinite(std)).all()) or not bool(torch.isfinite(mean).all()):
        raise ValueError(f"preprocessing std must be positive and finite, and mean finite; "
                         f"got {preprocessing!r}.")
    axis = preprocessing.get("axis")
    if axis is not None:
        if not isinstance(axis, Integral) or axis >= 0 or mean.ndim > 1 or std.ndim > 1:
            raise ValueError(
                "preprocessing axis must be a negative integer (the axis of a sample counted "
                f"from the end) with one-dimensional mean and std; got {preprocessing!r}."
            )
        trailing = [1] * (-axis - 1)
        mean, std = mean.reshape(-1, *trailing), std.reshape(-1, *trailing)
    return mean, std


class _Slots:
    """The fixed-shape batch: which image each slot holds, and that image's bookkeeping.

    A slot whose image is done takes the next image; once the images run
    out, slots stay idle (``image == -1``) but are still computed, so the
    module always sees ``size`` rows.
    """

    def __init__(self, images, size, device, dtype, return_trace, max_iter, memory_format):
        self.images, self.device, self.dtype, self.max_iter = images, device, dtype, max_iter
        self.work = torch.promote_types(dtype, torch.float32)  # bookkeeping precision
        # .to() sets the strides even where they are ambiguous (one channel).
        self.x = torch.zeros((size, *images.sample_shape), dtype=dtype, device=device).to(
            memory_format=memory_format)
        self.image = torch.full((size,), -1, dtype=torch.long, device=device)
        self.step = torch.zeros(size, dtype=torch.long, device=device)
        self.next_image = 0
        n = len(images)
        self.out = {name: torch.zeros(n, dtype=dtype_, device=device) for name, dtype_ in [
            ("res_n", self.work), ("res_max", self.work), ("res_min", torch.long),
            ("res_mean", self.work),
            ("adversarial_class", torch.long), ("c0", torch.long), ("conf0", self.work)]}
        self.traces = (torch.full((2, n, max_iter + 1), torch.nan, dtype=self.work,
                                  device=device) if return_trace else None)
        self.c0 = None  # per-slot bookkeeping is allocated once the logits are known
        self._fill(torch.ones(size, dtype=torch.bool, device=device))

    def _fill(self, free):
        free = free.nonzero().squeeze(1)
        count = min(len(free), len(self.images) - self.next_image)
        take, idle = free[:count], free[count:]
        numbers = torch.arange(self.next_image, self.next_image + count, device=self.device)
        self.x[take] = self.images.read(self.next_image, self.next_image + count).to(
            self.device, self.dtype)
        self.image[take] = numbers
        self.image[idle] = -1
        self.step[free] = 0
        self.next_image += count

    def busy(self):
        return bool((self.image >= 0).any())

    def all_fresh(self):
        return bool((self.step == 0).all())

    def start_images(self, logits, rank):
        """Set c0 and reset the bookkeeping of slots at step 0, from their logits at r = 0."""
        n_classes = logits.shape[1]
        if rank >= n_classes:
            raise ValueError(f"rank={rank} is out of range for a module with {n_classes} "
                             "classes.")
        fresh = self.step == 0
        if self.c0 is None:
            size = len(self.step)
            self.c0 = torch.zeros(size, dtype=torch.long, device=self.device)
            self.removed = torch.zeros((size, n_classes), dtype=self.work, device=self.device)
            self.res_min, self.adversarial_class, self.stable_since, self.steps_after_flip = (
                torch.zeros_like(self.c0) for _ in range(4))
            self.res_max, self.conf0, self.norm_sum_after_flip = (
                torch.zeros(size, dtype=self.work, device=self.device) for _ in range(3))
        if not bool(fresh.any()):
            return
        # Classes ranked above c0 are removed from the softmax with a -inf offset. Ties go
        # to the lower class index, as in argmax: at r = 0 the prediction is c0.
        ranking = logits.to(self.work).argsort(dim=1, descending=True, stable=True)
        c0 = ranking[:, rank]
        removed = torch.zeros_like(self.removed).scatter_(1, ranking[:, :rank], -torch.inf)
        self.c0 = torch.where(fresh, c0, self.c0)
        self.removed = torch.where(fresh[:, None], removed, self.removed)
        self.is_c0 = torch.nn.functional.one_hot(self.c0, n_classes).bool()
        self.res_min = torch.where(fresh, self.max_iter + 1, self.res_min)
        self.adversarial_class = torch.where(fresh, c0, self.adversarial_class)
        self.stable_since = torch.where(fresh, 0, self.stable_since)
        self.res_max = torch.where(fresh, 0.0, self.res_max)
        self.norm_sum_after_flip = torch.where(fresh, 0.0, self.norm_sum_after_flip)
        self.steps_after_flip = torch.where(fresh, 0, self.steps_after_flip)

    def record_trace(self, conf, norm):
        if self.traces is not None:
            active = self.image >= 0
            self.traces[0, self.image[active], self.step[active]] = conf[active]
            self.traces[1, self.image[active], self.step[active]] = norm[active]

    def finish(self, done, norm, r):
        """Store the results of the slots that are done and give them new images.

        Returns the progress made, in evaluations: one for each active slot,
        plus the evaluations a slot leaving early skips.
        """
        active = self.image >= 0
        done = done & active
        progress = int(active.sum() + ((self.max_iter - self.step) * done).sum())
        self.step += 1
        if not bool(done.any()):
            return progress
        images = self.image[done]
        res_mean = torch.where(self.steps_after_flip > 0,
                               self.norm_sum_after_flip / self.steps_after_flip.clamp_min(1),
                               norm)
        for name, value in [("res_n", norm), ("res_max", self.res_max), ("res_mean", res_mean),
                            ("res_min", self.res_min), ("c0", self.c0), ("conf0", self.conf0),
                            ("adversarial_class", self.adversarial_class)]:
            self.out[name][images] = value[done]
        r[done] = 0.0
        self._fill(done)
        return progress

    def result(self):
        as_numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
        out = {name: as_numpy(value) for name, value in self.out.items()}
        for name in ("res_n", "res_max", "res_mean", "conf0"):
            out[name] = out[name].astype(np.float64)
        traces = None if self.traces is None else as_numpy(self.traces).astype(np.float64)
        return AttackResult(
            **out,
            flipped=out["res_min"] <= self.max_iter,
            conf_trace=None if traces is None else traces[0],
            norm_trace=None if traces is None else traces[1],
        )


def _memory_budget(device):
    """Bytes ``batch_size="auto"`` may use: half the free GPU memory, a quarter of the RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _bytes_per_image(module, x, precision):
    """Estimated memory per image: tensors saved for backward, plus the attack's buffers."""
    saved = {}

    def pack(tensor):
        saved[(tensor.data_ptr(), tensor.numel())] = tensor.numel() * tensor.element_size()
        return tensor

    with on_device(module, x.device), eval_mode(module), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast(x.device.type, dtype=_PRECISIONS[precision],
                           enabled=precision != "float32"):
        module(x.clone().requires_grad_(True))
    # x, r, x + r, the gradient and the optimizer's update: about five input-sized buffers.
    return sum(saved.values()) / len(x) + 5 * x[0].numel() * x.element_size()
