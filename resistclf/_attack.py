"""The resistance attack: how hard it is to change a network's prediction."""

import copy
import os
import time
import warnings
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from joblib.parallel import get_active_backend
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import Interval, StrOptions
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from ._nets import (
    Normalized,
    channels_last_weights,
    check_module,
    eval_mode,
    forward,
    module_device,
    module_dtype,
    on_device,
    resolve_device,
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


def _is_number(value):
    """Whether ``value`` is a real number other than a bool or NaN."""
    return isinstance(value, Real) and not isinstance(value, bool) and value == value


def check_clip(clip):
    """Raise unless ``clip`` is None or a pair of numbers ``(low, high)`` with low < high."""
    if clip is not None and not (isinstance(clip, (tuple, list)) and len(clip) == 2
                                 and all(map(_is_number, clip)) and clip[0] < clip[1]):
        raise ValueError(f"clip must be None or a pair of numbers (low, high) with low < high; "
                         f"got {clip!r}.")


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
        Most images attacked at once, as rows of one batch; fewer images run in
        fewer rows, the next multiple of 16 (see Notes). ``"auto"`` times a few
        steps at batch sizes from 16 up and takes the smallest within 10% of
        the best throughput whose estimated memory fits the budget (a quarter
        of the RAM on CPU, half the free memory on CUDA). Results depend on the
        batch size in their last digits (see Notes), so set an integer for
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
        module is moved there for the attack and moved back afterwards;
        ``"meta"``, which holds no data, is refused.
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

    **Images the net is sure of past float32's range.** Beyond a logit
    margin of about 104, float32's softmax is one-hot: the other classes'
    probabilities, ``1 - Conf`` and Conf's gradient are all exactly 0 (below
    a margin of about 87 they are already subnormal, and the gradient loses
    its digits). With the subgradient of ``|r|`` at 0 also 0, ``r`` would
    never leave 0, and the images the net is surest of would get Res_N =
    Res_max = 0 and never flip. In exact arithmetic the first step is
    ``step_size * (1 - Conf) * grad log(1 - Conf)``: tiny, but with a
    direction, and ``log(1 - Conf) = logsumexp(z_others) - logsumexp(z)``
    stays finite at any margin. So where ``1 - Conf`` is below the smallest
    normal number and ``r`` is still 0, the first step takes its direction
    from the gradient of ``log(1 - Conf)`` (``q_k - p_k`` for the logits of
    the other classes, ``q`` their own softmax, and ``-Conf`` for ``c0``) and
    a size of ``step_size * eps**2`` in its largest entry (2e-15 at the
    defaults in float32; ``clip`` then applies to ``r`` alone, since ``x +
    r`` rounds it away). The exact size is below float32's range, and either
    is negligible next to ``step_size``: from the next step the ``|r|`` term
    grows ``r`` along that direction by ``step_size`` a step until Conf
    falls. For a linear net, Res_max then lands within one step of the exact
    distance to the boundary along that direction, at logit margins past
    1,000. Every other image's arithmetic is unchanged, bit for bit.

    **An image's result does not depend on the images attacked with it.**
    This matters because the attack's last phase is chaotic: it bounces
    across the Conf thresholds, and a difference of 1e-7 in the logits, such
    as BLAS gives when it picks another kernel for another number of rows,
    grows to about ``step_size`` in Res_N within a few hundred steps. Images
    are attacked in the slots of one batch, at most ``batch_size``; a slot
    whose image is done takes the next image, and once the images run out
    the idle slots are dropped down to the next multiple of 16 rows, so that
    2 images cost 16 rows rather than 256. Measured on the development
    machine's CPU (AMD EPYC, torch 2.14, 1 to 16 threads) with the reference
    :class:`~resistclf.models.SimpleCNN` (28x28 and 8x8 inputs) and
    :class:`~resistclf.models.MLP`: each row's logits and input gradient are
    bit for bit the same in a batch of any multiple of 4 rows (4 to 300
    tried), wherever the row sits; batches of 1 to 3 rows differ by about
    1e-8, and so do some other row counts that are not multiples of 4 with
    several threads (5 to 11 rows with 2 threads, also 17 to 19 and 25 to 27
    with 16). Multiples of 16 keep clear of those, so there, with a
    ``batch_size`` that is a multiple of 16 (256 is), an image's result is the
    same, bit for bit, alone or among others. Hardware that picks
    other kernels for other row counts (a GPU, another BLAS) may differ in
    the last digits, as another ``batch_size`` may; an
    :class:`~resistclf.AttackCache` shared across such runs mixes them.

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
        # scikit-learn counts a bool as an integer; here True would be a typo, not a 1.
        for name in ("max_iter", "step_size", "batch_size", "early_exit", "n_jobs"):
            if isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a number, not a bool; got "
                                f"{getattr(self, name)!r}.")
        if not isinstance(return_trace, bool):
            raise TypeError(f"return_trace must be a bool; got a {type(return_trace).__name__}.")
        low, high = self.thresholds if len(self.thresholds) == 2 else (None, None)
        if not (_is_number(low) and _is_number(high) and 0 <= low <= high <= 1):
            raise ValueError(
                "thresholds must be two numbers (low, high) with "
                f"0 <= low <= high <= 1; got {self.thresholds!r}."
            )
        check_clip(self.clip)
        if self.preprocessing is not None:
            _mean_and_std(self.preprocessing)
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 has no meaning: give a positive number of workers, "
                             "-1 for all CPUs, or None.")
        if self.early_exit is not None and (self.optimizer != "sgd" or return_trace):
            raise ValueError(
                "early_exit works with optimizer='sgd' and without return_trace: Adam's "
                "state and the traces need every step."
            )

    def __call__(self, module, X, *, rank=0, return_trace=False):
        """Attack every image in ``X`` and return the per-image results.

        Parameters
        ----------
        module : torch.nn.Module
            Maps a batch of inputs to logits of shape (n_samples, n_classes)
            (log-probabilities will do; probabilities give a warning). It is
            run in eval mode with its parameters frozen; its mode,
            ``requires_grad`` flags and device are restored afterwards, also
            after an error. A float16 or bfloat16 module computes in its own
            dtype while ``x + r`` and the bookkeeping stay in float32 (for a
            float16 copy of an MLP, bit for bit what ``precision="float16"``
            gives the float32 original).
        X : torch.Tensor, ndarray or torch.utils.data.Dataset
            The inputs, of shape (n_samples, ...), as floating-point pixels
            (integer images raise: scale them, for example ``X.float() /
            255``) that are all finite; never modified. A NumPy
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
        check_module(module)
        if isinstance(rank, bool) or not isinstance(rank, Integral):
            raise TypeError(f"rank must be an integer; got a {type(rank).__name__}.")
        if rank < 0:
            raise ValueError(f"rank must be >= 0; got {rank}.")
        if not isinstance(X, (torch.Tensor, np.ndarray, Dataset)):
            raise TypeError("X must be a torch.Tensor, a NumPy array or a map-style Dataset; "
                            f"got a {type(X).__name__}.")
        images = ImageReader(X)
        device = resolve_device(self.device, module)
        module = self.preprocessed(module, images.sample_shape)
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
        # a lost worker costs one of them. Results do not depend on the split, since the
        # module computes each row alike in every batch the attack runs (see Notes). Each
        # task's images are read only when joblib dispatches it, which bounds the memory
        # they take.
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
        """Attack the images through at most ``batch_size`` slots of a batch (see Notes)."""
        dtype = module_dtype(module)
        # A float16 or bfloat16 module computes in its own dtype, but x + r and the
        # bookkeeping stay in float32: in 8 or 11 bits most steps would round away.
        slot_dtype = torch.promote_types(dtype, torch.float32)
        norm_of, norm_grad = _NORMS[self.norm]
        low, high = self.thresholds
        never = self.max_iter + 1
        autocast = torch.autocast(device.type, dtype=_PRECISIONS[self.precision],
                                  enabled=self.precision != "float32")
        memory_format = (torch.channels_last if self.channels_last
                         and len(images.sample_shape) == 3 else torch.contiguous_format)
        slots = _Slots(images, _slot_count(batch_size, len(images)), device, slot_dtype,
                       return_trace, self.max_iter, memory_format)
        r = torch.zeros_like(slots.x, requires_grad=True)
        optimizer, first = None, True

        while slots.busy:
            fresh = slots.all_fresh
            # Adam's state belongs to the rows of r, so it shrinks only with a new round.
            kept = slots.shrink() if fresh or self.optimizer == "sgd" else None
            if kept is not None:
                r = r.detach()[kept].to(memory_format=memory_format).requires_grad_(True)
            if fresh or kept is not None:  # a new optimizer state (SGD's is empty)
                optimizer = (torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam)(
                    [r], lr=self.step_size)
            inputs = slots.x + r
            with autocast:
                raw = forward(module, inputs if inputs.dtype == dtype else inputs.to(dtype),
                              n_samples=slots.busy)
            with torch.no_grad():
                active = slots.image >= 0
                norm = norm_of(r.detach().flatten(1))
                bad = active & ~(torch.isfinite(norm) & torch.isfinite(raw.detach()).all(dim=1))
                if first:
                    _warn_if_probabilities(raw.detach()[active])
                    first = False
                slots.start_images(raw.detach(), rank)
                logits = raw.detach().to(slots.work) + slots.removed
                proba = logits.softmax(dim=1)
                conf = proba[slots.is_c0]
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
                rest = others.sum(dim=1, keepdim=True)
                dconf = torch.where(slots.is_c0, rest, -others)
                dconf *= (conf * (conf >= low))[:, None]
                stalled = _underflowing(rest, active & (conf >= low), r)
                # The step's one read back to the host: all it decides on (a GPU runs on
                # without waiting between two of them).
                any_bad, any_stalled, all_done, finished, evaluations = slots.read_back(
                    bad, stalled, done)
                if any_bad:
                    self._raise_not_finite(bad, norm, slots)
                # Rare (margins above about 87): only then is a row's last check made.
                stalled = _with_a_class_to_move_to(stalled, logits, slots.is_c0) \
                    if any_stalled else None
                if stalled is not None:
                    dconf = torch.where(stalled[:, None],
                                        _log_rest_gradient(logits, slots.is_c0), dconf)
                norm_sign = torch.where(conf >= high, -1.0, 1.0).to(dconf.dtype)
            if not all_done:
                (grad,) = torch.autograd.grad(raw, r, grad_outputs=dconf.to(raw.dtype))
                with torch.no_grad():
                    flat = r.detach().flatten(1)
                    # Out of place: the input gradient of a module that sums its input
                    # is a broadcast view, which cannot be written to.
                    grad = grad + (norm_sign[:, None] * norm_grad(flat, norm)).view_as(r)
                    if stalled is not None:
                        grad = _tiny_first_step(grad, stalled)
                    r.grad = grad
                    optimizer.step()
                    if self.clip is not None:
                        clipped = (slots.x + r).clamp(*self.clip) - slots.x
                        if stalled is not None:  # r, too small to change x + r, clipped alone
                            clipped = torch.where(
                                stalled.view(-1, *[1] * (r.dim() - 1)),
                                r.clamp(self.clip[0] - slots.x, self.clip[1] - slots.x), clipped)
                        r.copy_(clipped)
            with torch.no_grad():
                slots.finish(done, norm, r, finished)
            progress(evaluations)
        return slots.result()

    def _raise_not_finite(self, bad, norm, slots):
        """Raise, naming the image and the step, where the logits or ``|r|`` are not finite
        (the ``bad`` slots)."""
        slot = int(bad.nonzero()[0, 0])
        image, step, size = int(slots.image[slot]), int(slots.step[slot]), float(norm[slot])
        if np.isnan(size):
            raise ValueError(f"|r| is NaN for image {image} at step {step}: the net's input "
                             "gradient was NaN or infinite at the step before.")
        if np.isinf(size):
            raise ValueError(
                f"|r| overflowed to inf for image {image} at step {step}: step_size="
                f"{self.step_size!r} is too large for this net; lower it, or set clip."
            )
        if step == 0:
            raise ValueError(f"The net returned NaN or infinite logits for image {image}, "
                             "before any perturbation; the attack needs finite logits.")
        raise ValueError(
            f"The net returned NaN or infinite logits for image {image} at step {step}, "
            f"with |r| = {size:.3g}: the perturbation grew past what the net can take; "
            f"lower step_size (now {self.step_size!r}), or set clip."
        )

    def _auto_batch_size(self, module, X, device, n_jobs=1):
        """The smallest batch size within 10% of the best measured throughput."""
        images = ImageReader(X)
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
            clone(timed).set_params(max_iter=1)(module, batch)  # warm-up at this shape
            start = time.perf_counter()
            timed(module, batch)
            throughput[int(batch_size)] = batch_size / (time.perf_counter() - start)
            best = max(throughput.values())
            if len(images) <= batch_size or throughput[int(batch_size)] < 0.8 * best:
                break
        return min(b for b, t in throughput.items() if t >= 0.9 * best) if throughput else 16


def _underflowing(rest, moving, r):
    """The ``moving`` rows at ``r = 0`` whose Conf gradient underflows, as a mask.

    ``rest`` is ``1 - Conf``, the other classes' probabilities summed; below the
    smallest normal number (a logit margin above about 87 in float32) its gradient
    is lost, entirely past a margin of about 104.
    """
    at_zero = ~r.detach().flatten(1).any(dim=1)
    return moving & at_zero & (rest[:, 0] < torch.finfo(rest.dtype).tiny)


def _with_a_class_to_move_to(stalled, logits, is_c0):
    """The ``stalled`` rows left a class to move to (not every other one removed)."""
    return stalled & (logits.masked_fill(is_c0, -torch.inf) > -torch.inf).any(dim=1)


def _log_rest_gradient(logits, is_c0):
    """The gradient of ``-log(1 - Conf)`` with respect to the logits, finite at any margin.

    ``log(1 - Conf) = logsumexp(z_others) - logsumexp(z)``, so the gradient is
    ``Conf`` at ``c0`` and ``p_k - q_k`` elsewhere, ``q`` being the softmax over
    the other classes. It points where ``grad Conf = (1 - Conf) * grad(-log(1 -
    Conf))`` does, without the factor ``1 - Conf`` that underflows.
    """
    p = logits.softmax(dim=1)
    q = logits.masked_fill(is_c0, -torch.inf).softmax(dim=1)
    return torch.where(is_c0, p, p - q)


def _tiny_first_step(grad, stalled):
    """``grad`` with the ``stalled`` rows scaled to a largest entry of ``eps**2``.

    Their true size, ``1 - Conf`` times the gradient of ``-log(1 - Conf)``, is below
    the dtype's range; ``eps**2`` keeps the direction, and a first step of
    ``step_size * eps**2`` is lost in the rounding of ``|r|`` once the ``|r|`` term
    grows ``r`` along it.
    """
    shape = (-1, *[1] * (grad.dim() - 1))
    largest = grad.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
    scaled = grad * (torch.finfo(grad.dtype).eps ** 2 / largest).view(shape)
    return torch.where(stalled.view(shape), scaled, grad)


def _warn_if_probabilities(outputs):
    """Warn where every row of the module's ``outputs`` lies in [0, 1] and sums to 1."""
    outputs = outputs.double()
    if len(outputs) and bool(((outputs >= 0) & (outputs <= 1)).all()) and bool(
            ((outputs.sum(dim=1) - 1).abs() <= 1e-3).all()):
        warnings.warn(
            "The module's outputs look like probabilities (every row in [0, 1] and summing "
            "to 1), but the attack needs logits (log-probabilities are fine): on "
            "probabilities Conf barely moves, few images flip and the features mean "
            "nothing. End the module with nn.LogSoftmax instead of nn.Softmax, or, with "
            "ResistanceClassifier, set net_output='proba'.",
            UserWarning, stacklevel=4,
        )


#: The batch's row count is a multiple of this, up to batch_size (see ResistanceAttack's Notes).
SLOT_QUANTUM = 16


def _slot_count(batch_size, n_images):
    """Rows of the batch for ``n_images`` images: a multiple of SLOT_QUANTUM, up to batch_size."""
    return min(batch_size, -(-n_images // SLOT_QUANTUM) * SLOT_QUANTUM)


def _attack_task(task):
    """One task of a parallel attack: ``(attack, module, images, *rest)``, ``images`` a tensor.

    Everything comes packed in one tuple, which joblib's dask backend sends with the
    task rather than scattering it to a single worker (tuples cannot be weakly
    referenced): a task then never depends on data that a lost worker held, and the
    scheduler can rerun it elsewhere.
    """
    attack, module, images, *rest = task
    return attack._attack_chunk(module, ImageReader(images), *rest)


class ImageReader:
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
        rows = self._read(positions)
        check_float(self.X.dtype if isinstance(self.X, (np.ndarray, torch.Tensor)) else rows.dtype)
        finite = torch.isfinite(rows.flatten(1) if rows.ndim > 1 else rows[:, None]).all(dim=1)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            number = (range(len(self.X))[positions] if isinstance(positions, slice)
                      else positions)[first]
            raise ValueError(f"X must be finite; image {number} holds NaN or infinite values.")
        return rows

    def _read(self, positions):
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


def check_float(dtype):
    """Raise unless ``dtype`` (NumPy's or torch's) is a floating-point type."""
    floating = (dtype.is_floating_point if isinstance(dtype, torch.dtype)
                else np.issubdtype(dtype, np.floating))
    if not floating:
        raise ValueError(
            f"X holds {dtype} values, but the attack needs floating-point pixels: step_size, "
            "clip and |r| assume a float scale such as [0, 1]. Scale the images to floats "
            "first, for example X.float() / 255 for 0-255 pixels."
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
    """The batch: which image each slot holds, and that image's bookkeeping.

    A slot whose image is done takes the next image; once the images run
    out, slots stay idle (``image == -1``) until :meth:`shrink` drops those
    beyond the next multiple of SLOT_QUANTUM.
    """

    #: The per-slot tensors, which :meth:`shrink` cuts down.
    PER_SLOT = ("x", "image", "step", "c0", "removed", "is_c0", "res_min", "adversarial_class",
                "stable_since", "steps_after_flip", "res_max", "conf0", "norm_sum_after_flip")

    def __init__(self, images, size, device, dtype, return_trace, max_iter, memory_format):
        self.images, self.device, self.dtype, self.max_iter = images, device, dtype, max_iter
        self.memory_format = memory_format
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
        self.c0 = self.is_c0 = None  # per-slot bookkeeping is allocated once the logits are known
        # What the host knows of the slots, updated where they change (so that no step
        # reads them back): the slots holding an image, and whether all or any are at step 0.
        self.busy, self.all_fresh, self.any_fresh = 0, True, True
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
        self.busy += count
        self.any_fresh = True  # the free slots are at step 0, idle or not

    def shrink(self):
        """Drop the idle slots past the next multiple of SLOT_QUANTUM.

        Returns the positions of the slots kept (the busy ones first, in order),
        or None if none is dropped.
        """
        size = _slot_count(len(self.image), self.busy)
        if size == len(self.image):
            return None
        busy = self.image >= 0
        keep = torch.cat([busy.nonzero()[:, 0], (~busy).nonzero()[:, 0]])[:size]
        for name in self.PER_SLOT:
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, value[keep])
        self.x = self.x.to(memory_format=self.memory_format)
        return keep

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
        if not self.any_fresh:
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

    def read_back(self, bad, stalled, done):
        """The step's flags, in one transfer to the host.

        Returns whether any slot is ``bad``, any ``stalled``, all ``done``, any active
        slot done, and the progress made, in evaluations: one for each active slot, plus
        the evaluations a slot leaving early skips.
        """
        active = self.image >= 0
        finished = done & active
        evaluations = active.sum() + ((self.max_iter - self.step) * finished).sum()
        *flags, evaluations = torch.stack([bad.any(), stalled.any(), done.all(),
                                           finished.any(), evaluations]).tolist()
        return (*map(bool, flags), evaluations)

    def finish(self, done, norm, r, finished):
        """Store the results of the slots that are ``done`` and give them new images;
        ``finished`` says whether any active slot is done (from :meth:`read_back`), so
        that the slots are read back only then."""
        self.step += 1
        self.all_fresh = self.any_fresh = False
        if not finished:
            return
        done = done & (self.image >= 0)
        images = self.image[done]
        res_mean = torch.where(self.steps_after_flip > 0,
                               self.norm_sum_after_flip / self.steps_after_flip.clamp_min(1),
                               norm)
        for name, value in [("res_n", norm), ("res_max", self.res_max), ("res_mean", res_mean),
                            ("res_min", self.res_min), ("c0", self.c0), ("conf0", self.conf0),
                            ("adversarial_class", self.adversarial_class)]:
            self.out[name][images] = value[done]
        r[done] = 0.0
        self.busy -= len(images)
        self._fill(done)
        self.all_fresh = bool((self.step == 0).all())

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
