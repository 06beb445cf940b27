"""The resistance attack: how hard it is to change a network's prediction."""

from contextlib import contextmanager
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from tqdm.auto import tqdm

from ._nets import eval_mode, forward, module_device, module_dtype

FEATURE_NAMES = ("res_n", "res_max", "res_min")


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
        return np.column_stack([self.res_n, self.res_max, self.res_min]).astype(
            np.float64
        )

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


def _l2(r):
    return torch.linalg.vector_norm(r, ord=2, dim=1)


def _l2_grad(r, norm):
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
        the ``|r|`` term. 0.1 lies inside the range (0.05 to 0.2) where at
        least 97% of correctly classified MNIST and FashionMNIST test images
        change prediction within 500 steps with the reference CNN; see
        ``docs/step_size.rst``.
    norm : {"l2", "l1", "linf"}, default="l2"
        Norm of the perturbation, computed over each image's values.
    thresholds : tuple of two floats, default=(0.2, 0.9)
        The Conf thresholds that select the loss branch.
    clip : tuple of two floats or None, default=None
        If given, ``x + r`` is clipped to this box (for example ``(0, 1)``)
        after every step.
    optimizer : {"sgd", "adam"}, default="sgd"
        Plain gradient descent (the write-up's), or Adam.
    batch_size : int, default=256
        Number of images attacked at once.
    device : str, torch.device or None, default=None
        Where to run. None runs on the module's own device. Otherwise the
        module is moved there for the attack and moved back afterwards.
    verbose : bool, default=False
        Show a progress bar over batches.

    Notes
    -----
    **The gradient of Conf.** Conf's gradient with respect to the logits is
    ``Conf * (e_c0 - p)``. In float32, ``1 - Conf`` rounds to 0 for very
    confident images, which would drop the ``e_c0`` term; it is computed
    instead as the sum of the other classes' probabilities, which is exact.

    **The gradient of |r| at r = 0** is undefined. The attack uses the
    minimum-norm subgradient, 0, so the first step follows ``-grad Conf``
    alone and no direction is preferred by the norm.

    **Batches have a fixed shape.** Images are attacked ``batch_size`` at a
    time, and a smaller last batch is padded with zero images, so the kernels
    always see the same shapes. This matters because the attack's last phase
    is chaotic: it bounces across the Conf thresholds, and a difference of
    1e-7 in the logits, such as BLAS gives when it picks another kernel for
    another number of rows, grows to about ``step_size`` in Res_N within a few
    hundred steps. With fixed shapes an image's result is the same whether it
    is attacked alone or among others, bit for bit on the machines tested.
    The price is that fewer than ``batch_size`` images cost as much as
    ``batch_size``; lower ``batch_size`` for small inputs.

    **Images that never flip** get ``flipped=False``,
    ``res_min = max_iter + 1`` and ``adversarial_class = c0``; their ``res_n``
    and ``res_max`` are measured as for any other image.

    Examples
    --------
    >>> import torch
    >>> from resistclf import ResistanceAttack
    >>> module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> result = ResistanceAttack(max_iter=50)(module, torch.rand(5, 4))
    >>> result.features.shape
    (5, 3)
    """

    _parameter_constraints = {
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "step_size": [Interval(Real, 0, None, closed="neither")],
        "norm": [StrOptions(set(_NORMS))],
        "thresholds": [tuple, list],
        "clip": [tuple, list, None],
        "optimizer": [StrOptions({"sgd", "adam"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
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
        optimizer="sgd",
        batch_size=256,
        device=None,
        verbose=False,
    ):
        self.max_iter = max_iter
        self.step_size = step_size
        self.norm = norm
        self.thresholds = thresholds
        self.clip = clip
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def _check_settings(self):
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
        device = torch.device("cpu" if self.device is None else self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={self.device!r} was asked for, but CUDA is not available."
            )

    @validate_params(
        {"X": [torch.Tensor], "rank": [Interval(Integral, 0, None, closed="left")],
         "return_trace": ["boolean"]},
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
        X : torch.Tensor of shape (n_samples, ...)
            The inputs; never modified.
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
        self._check_settings()
        if X.ndim < 2 or len(X) == 0:
            raise ValueError(
                f"X must hold at least one sample and have shape (n_samples, ...); "
                f"got shape {tuple(X.shape)}."
            )
        device = module_device(module) if self.device is None else torch.device(self.device)
        batches = range(0, len(X), self.batch_size)
        with _on_device(module, device), eval_mode(module), torch.enable_grad():
            dtype = module_dtype(module)
            results = []
            for start in tqdm(
                batches, desc="resistance attack", unit="batch", disable=not self.verbose
            ):
                x = X[start : start + self.batch_size].to(device, dtype)
                padded = torch.zeros((self.batch_size, *x.shape[1:]), dtype=dtype, device=device)
                padded[: len(x)] = x
                results.append(self._attack_batch(module, padded, rank, return_trace)[: len(x)])
        return AttackResult.concatenate(results)

    def _attack_batch(self, module, x, rank, return_trace):
        n = len(x)
        norm_of, norm_grad = _NORMS[self.norm]
        low, high = self.thresholds
        with torch.no_grad():
            logits = forward(module, x)
        if rank >= logits.shape[1]:
            raise ValueError(
                f"rank={rank} is out of range for a module with "
                f"{logits.shape[1]} classes."
            )
        # Bookkeeping runs in at least float32, whatever the module's precision.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        # Classes ranked above c0 are removed from the softmax with a -inf offset.
        ranking = logits.to(dtype).argsort(dim=1, descending=True)
        c0 = ranking[:, rank]
        removed = torch.zeros_like(logits, dtype=dtype).scatter_(
            1, ranking[:, :rank], -torch.inf
        )
        is_c0 = torch.zeros_like(removed, dtype=torch.bool).scatter_(1, c0[:, None], True)

        r = torch.zeros_like(x, requires_grad=True)
        optimizer = (torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam)(
            [r], lr=self.step_size
        )
        never = self.max_iter + 1
        res_min = torch.full((n,), never, dtype=torch.long, device=x.device)
        adversarial_class = c0.clone()
        res_max = torch.zeros(n, dtype=dtype, device=x.device)
        traces = (
            torch.empty((2, n, self.max_iter + 1), dtype=dtype, device=x.device)
            if return_trace
            else None
        )

        for step in range(self.max_iter + 1):
            last = step == self.max_iter
            with torch.set_grad_enabled(not last):
                logits = module(x + r).to(dtype) + removed
            with torch.no_grad():
                proba = logits.softmax(dim=1)
                conf = proba[is_c0]
                norm = norm_of(r.detach().flatten(1))
                pred = logits.argmax(dim=1)
                changed = pred != c0
                res_min = torch.where(changed & (res_min == never) & (step > 0), step, res_min)
                adversarial_class = torch.where(changed, pred, adversarial_class)
                res_max = torch.maximum(res_max, norm)
                if step == 0:
                    conf0 = conf
                if return_trace:
                    traces[0, :, step] = conf
                    traces[1, :, step] = norm
                if last:
                    break
                # dConf/dlogits = Conf * (e_c0 - p), with 1 - Conf summed from
                # the other classes so that it does not round to 0.
                others = proba.masked_fill(is_c0, 0.0)
                dconf = torch.where(is_c0, others.sum(dim=1, keepdim=True), -others)
                uses_conf = (conf >= low).to(dconf.dtype)
                dconf *= (conf * uses_conf)[:, None]
                norm_sign = torch.where(conf >= high, -1.0, 1.0).to(dtype)
            (grad,) = torch.autograd.grad(logits, r, grad_outputs=dconf)
            with torch.no_grad():
                flat = r.detach().flatten(1)
                grad += (norm_sign[:, None] * norm_grad(flat, norm)).view_as(r)
                r.grad = grad
                optimizer.step()
                if self.clip is not None:
                    r.copy_((x + r).clamp(*self.clip) - x)

        flipped = res_min <= self.max_iter
        as_numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
        return AttackResult(
            res_n=as_numpy(norm).astype(np.float64),
            res_max=as_numpy(res_max).astype(np.float64),
            res_min=as_numpy(res_min),
            flipped=as_numpy(flipped),
            adversarial_class=as_numpy(adversarial_class),
            c0=as_numpy(c0),
            conf0=as_numpy(conf0).astype(np.float64),
            conf_trace=None if traces is None else as_numpy(traces[0]).astype(np.float64),
            norm_trace=None if traces is None else as_numpy(traces[1]).astype(np.float64),
        )


@contextmanager
def _on_device(module, device):
    """Move ``module`` to ``device`` for the duration, then back."""
    original = module_device(module)
    try:
        module.to(device)
        yield
    finally:
        module.to(original)
