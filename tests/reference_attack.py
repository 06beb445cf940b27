"""The resistance attack written plainly, in float64, for the tests to compare against.

It follows the definition in :class:`resistclf.ResistanceAttack`'s docstring, not the library's
code: autograd differentiates the loss (the library writes the gradient of Conf by hand), Conf
is computed from a log-sum-exp (so that its gradient does not lose ``1 - Conf``), the classes
ranked above ``c0`` are dropped with a mask, Adam is spelled out, and the per-image results are
read off the whole trajectory at the end. Images are handled as rows of one batch only for
speed: every quantity is per row, and the module is run in eval mode, so rows do not interact.
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Trajectory:
    """The attack on one image: every step, and the per-image results read off them."""

    norms: np.ndarray  # |r_t| for t = 0..max_iter
    confs: np.ndarray  # Conf(x + r_t)
    preds: np.ndarray  # the prediction on x + r_t, among the classes not removed
    c0: int
    conf0: float
    res_n: float
    res_max: float
    res_min: int
    res_mean: float
    flipped: bool
    adversarial_class: int


def summarise(norms, confs, preds, c0):
    """One image's results from its norm, Conf and prediction at every step 0..max_iter."""
    norms, preds = np.asarray(norms, dtype=float), np.asarray(preds)
    max_iter = len(norms) - 1
    changed = [t for t in range(1, max_iter + 1) if preds[t] != c0]
    res_min = changed[0] if changed else max_iter + 1
    return Trajectory(
        norms=norms, confs=np.asarray(confs, dtype=float), preds=preds, c0=int(c0),
        conf0=float(confs[0]), res_n=float(norms[-1]), res_max=float(norms.max()),
        res_min=res_min,
        res_mean=float(norms[res_min:].mean()) if changed else float(norms[-1]),
        flipped=bool(changed),
        adversarial_class=int(preds[changed[-1]]) if changed else int(c0),
    )


class Stepper:
    """The attack on the images ``X`` in float64: the loss at ``R``, and a step from there.

    ``mean`` and ``std`` are the ``preprocessing`` (the module sees ``(x + r - mean) / std``),
    as arrays that broadcast against one image.
    """

    def __init__(self, module, X, *, step_size, norm="l2", thresholds=(0.2, 0.9), clip=None,
                 optimizer="sgd", rank=0, mean=0.0, std=1.0):
        self.module = copy.deepcopy(module).double().eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.X = torch.as_tensor(X).double()
        self.mean = torch.as_tensor(np.asarray(mean, dtype=float))
        self.std = torch.as_tensor(np.asarray(std, dtype=float))
        self.step_size, self.norm, self.thresholds = step_size, norm, thresholds
        self.clip, self.optimizer = clip, optimizer
        with torch.no_grad():
            # Ties go to the lower class index, as argmax's do.
            ranking = self.logits(torch.zeros_like(self.X)).argsort(dim=1, descending=True,
                                                                    stable=True)
        self.c0 = ranking[:, rank]
        self.removed = torch.zeros(ranking.shape, dtype=torch.bool).scatter(
            1, ranking[:, :rank], True)
        self.moments, self.n_steps = (torch.zeros_like(self.X), torch.zeros_like(self.X)), 0

    def logits(self, R):
        return self.module((self.X + R - self.mean) / self.std)

    def size(self, R):
        flat = R.flatten(1)
        return {"l2": flat.norm(dim=1), "l1": flat.abs().sum(dim=1),
                "linf": flat.abs().amax(dim=1)}[self.norm]

    def evaluate(self, R):
        """Conf, prediction, |r| and the gradient of the loss at ``R``, per image (numpy)."""
        R = torch.as_tensor(R).double().detach().requires_grad_(True)
        z = self.logits(R).masked_fill(self.removed, -torch.inf)
        z_c0 = z.gather(1, self.c0[:, None])
        others = z.scatter(1, self.c0[:, None], -torch.inf)
        # softmax(z)[c0] = 1 / (1 + sum_j exp(z_j - z_c0)) = exp(-softplus(logsumexp(...))),
        # whose gradient keeps 1 - Conf = sigmoid(logsumexp(...)) where it is below 1e-16.
        conf = torch.exp(-torch.nn.functional.softplus(torch.logsumexp(others - z_c0, dim=1)))
        # At r = 0 the norm has no gradient; autograd takes the subgradient 0, as the attack does.
        size = self.size(R)
        low, high = self.thresholds
        loss = torch.where(conf < low, size, torch.where(conf < high, conf + size, conf - size))
        (grad,) = torch.autograd.grad(loss.sum(), R)
        return (conf.detach().numpy(), z.argmax(dim=1).numpy(), size.detach().numpy(), grad)

    def step(self, R, grad):
        """The next perturbations: one optimizer step from ``R``, then the clip."""
        R = torch.as_tensor(R).double()
        if self.optimizer == "sgd":
            update = grad
        else:  # Adam with torch's defaults: betas (0.9, 0.999), eps 1e-8
            self.n_steps += 1
            first = 0.9 * self.moments[0] + 0.1 * grad
            second = 0.999 * self.moments[1] + 0.001 * grad**2
            self.moments = first, second
            update = (first / (1 - 0.9**self.n_steps)) / (
                (second / (1 - 0.999**self.n_steps)).sqrt() + 1e-8)
        R = R - self.step_size * update
        if self.clip is not None:
            R = (self.X + R).clamp(*self.clip) - self.X
        return R.detach()


def trajectories(norms, confs, preds, c0):
    """Per-image :class:`Trajectory` objects from per-step arrays of shape (steps, n_images)."""
    return [summarise(*(np.asarray(a)[:, i] for a in (norms, confs, preds)), c0[i])
            for i in range(len(c0))]


def reference_attack(module, X, *, max_iter, **settings):
    """The attack on the images ``X``: one :class:`Trajectory` per image.

    ``settings`` are those of :class:`Stepper`.
    """
    stepper = Stepper(module, X, **settings)
    R = torch.zeros_like(stepper.X)
    norms, confs, preds = [], [], []
    for step in range(max_iter + 1):
        conf, pred, size, grad = stepper.evaluate(R)
        norms.append(size)
        confs.append(conf)
        preds.append(pred)
        if step < max_iter:
            R = stepper.step(R, grad)
    return trajectories(norms, confs, preds, stepper.c0.numpy())
