"""Choosing a fast attack mode on the machine and the net it will run on.

Which modes reach exact mode's conclusions is a property of the method: ``resistclf bench``
judges it by two one-sided tests and the result is committed. Which of those modes is
*fastest* is a property of the hardware and the net (bfloat16 is several times faster than
float32 on a CPU with native bfloat16, and about ten times slower on one without; channels
last helps some convolutions and breaks a net that calls ``.view()``), so
:func:`fastest_mode` measures it where the attack runs.
"""

import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from ._attack import ResistanceAttack
from ._nets import resolve_device

#: What a mode may set: the attack's settings that change its speed.
MODE_SETTINGS = ("precision", "channels_last", "early_exit")


def machine_fingerprint(device):
    """What makes one machine's timings differ from another's: the CPU model, the GPU's name
    where the attack runs on one, and torch's version and threads."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "gpu": gpu, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def fastest_mode(module, X, modes, *, attack=None, steps=4, store=None, timer=None):
    """The fastest of ``modes`` on this machine, for ``module`` and images like ``X``.

    Each mode attacks one batch of ``X`` for ``steps`` steps, after a one-step warm-up,
    and is timed per step. Exact mode (``{}``) is always a candidate, and another mode
    qualifies only where it is more than 5% faster per step, so the choice is never slower
    than exact mode beyond the timing's noise. How many steps a mode takes is the
    method's, not the machine's: early exit takes fewer, never more, so a mode with
    ``early_exit`` qualifies at a step as fast as exact mode's, and wins a tie (within 5%).
    A mode that cannot run on ``module`` (channels last on a net that calls ``.view()``
    on its activations, say) is left out with one warning.

    Parameters
    ----------
    module : torch.nn.Module
        The net the attack will run on (returning logits).
    X : array-like of shape (n_samples, ...)
        Images like those the attack will see; one batch of them is attacked.
    modes : dict of str to dict
        Mode name to its settings (keys of :data:`MODE_SETTINGS`): the modes shown to
        reach exact mode's conclusions. ``"exact"`` is added where missing.
    attack : ResistanceAttack or None, default=None
        The attack whose other settings (norm, step size, batch size, preprocessing,
        device) the timing uses; None means the defaults.
    steps : int, default=4
        Timed steps per mode.
    store : ResultStore or None, default=None
        Where the choice is remembered, by machine (:func:`machine_fingerprint`), the
        net's architecture, the image shape and the modes: a second call on the same
        machine and net reads it back instead of timing again.
    timer : callable or None, default=None
        ``timer(attack, module, X)`` returns the seconds of one call; None times
        ``attack(module, X)`` with :func:`time.perf_counter`. For tests.

    Returns
    -------
    choice : dict
        ``"mode"`` (the name chosen), ``"settings"`` (its settings), ``"seconds_per_step"``
        (mode to seconds, the modes timed), ``"left_out"`` (mode to the reason it could
        not run) and ``"reason"`` (a sentence for a report's header).
    """
    attack = ResistanceAttack() if attack is None else attack
    unknown = {name: sorted(set(settings) - set(MODE_SETTINGS))
               for name, settings in modes.items() if set(settings) - set(MODE_SETTINGS)}
    if unknown:
        raise ValueError(f"A mode may set only {list(MODE_SETTINGS)}; got {unknown}.")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    modes = {"exact": {}, **modes}
    if len(modes) == 1:
        return _choice("exact", {}, {}, {}, "no fast mode reached exact mode's conclusions")

    def measure():
        batch = np.asarray(X[:attack.batch_size if isinstance(attack.batch_size, int)
                             else 64])
        return _time_modes(module, batch, modes, attack, steps, timer)

    if store is None:
        timed, left_out = measure()
    else:
        device = resolve_device(attack.device, module)
        remembered = store.json("fastest-mode", {
            # A step costs the same whatever the weights: the architecture is the net.
            "machine": machine_fingerprint(device), "module": repr(module),
            "parameters": [list(p.shape) for p in module.parameters()],
            "sample_shape": list(np.shape(X)[1:]), "modes": modes, "steps": steps,
            "attack": {k: v for k, v in attack.get_params().items()
                       if k not in MODE_SETTINGS + ("verbose", "n_jobs")}},
            lambda: dict(zip(("timed", "left_out"), measure())))
        timed, left_out = remembered["timed"], remembered["left_out"]
    for name, reason in left_out.items():
        warnings.warn(f"The {name} mode cannot run on this net, so it is left out: {reason}",
                      UserWarning, stacklevel=2)
    exact = timed["exact"]
    # Early exit takes fewer steps, never more, so a mode with it qualifies at a step as
    # fast as exact mode's; any other mode must be more than 5% faster per step.
    qualified = {name: seconds for name, seconds in timed.items()
                 if name == "exact" or seconds < 0.95 * exact
                 or "early_exit" in modes[name] and seconds <= 1.05 * exact}
    quickest = min(qualified.values())
    best = min((name for name, seconds in qualified.items() if seconds <= 1.05 * quickest),
               key=lambda name: ("early_exit" not in modes[name], qualified[name]))
    reason = (f"the fastest of the equivalent modes on this machine and net "
              f"({exact / timed[best]:.2f}x exact mode's speed per step"
              + (", and fewer steps" if "early_exit" in modes[best] else "") + ")"
              if best != "exact" else
              "no equivalent fast mode was faster than exact mode on this machine and net")
    return _choice(best, modes[best], timed, left_out, reason)


def _time_modes(module, X, modes, attack, steps, timer):
    """Seconds per step of each mode on ``X``, and the modes that could not run."""
    def default_timer(timed, module, X):
        start = time.perf_counter()
        timed(module, X)
        return time.perf_counter() - start

    timer = default_timer if timer is None else timer
    timed, left_out = {}, {}
    for name, settings in modes.items():
        mode_attack = clone(attack).set_params(**{"precision": "float32", "channels_last": False,
                                                  "early_exit": None, **settings},
                                               verbose=False, n_jobs=1)
        try:
            clone(mode_attack).set_params(max_iter=1)(module, X)  # warm-up at this shape
        except ValueError as exc:
            if name == "exact":
                raise
            left_out[name] = str(exc)
            continue
        timed[name] = timer(clone(mode_attack).set_params(max_iter=steps), module, X) / steps
    return timed, left_out


def _choice(mode, settings, timed, left_out, reason):
    return {"mode": mode, "settings": dict(settings), "seconds_per_step": dict(timed),
            "left_out": dict(left_out), "reason": reason}
