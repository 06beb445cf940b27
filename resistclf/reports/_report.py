"""Writing a report: report.md, results.json and PNG figures in one folder."""

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..metrics import bootstrap_interval


def environment():
    """Package versions and the machine, for the record."""
    import sklearn
    import skorch
    import torch
    import torchvision

    from .. import __version__

    return {
        "resistclf": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__, "skorch": skorch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}, CUDA {'yes' if torch.cuda.is_available() else 'no'}",
    }


@contextmanager
def phase(command, name, timings, verbose):
    """Time a phase of ``command`` into ``timings[name]``; announce it on stderr if verbose."""
    if verbose:
        print(f"[{command}] {name}...", file=sys.stderr)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 1)


def keep_first_timings(out, timings, cached):
    """Time each phase in ``cached`` as the run that computed it did.

    A phase that only reused cached results takes its time from the previous
    ``results.json`` in ``out``, if that records one, so that a rerun's report
    still tells what the work cost.
    """
    path = Path(out) / "results.json"
    previous = json.loads(path.read_text()).get("seconds", {}) if path.exists() else {}
    for name in cached:
        if name in previous:
            timings[name] = previous[name]


def rate(mask, *, n_resamples, seed):
    """The mean of a boolean array with its count and a bootstrap 95% interval."""
    mask = np.asarray(mask, dtype=bool)
    interval = (bootstrap_interval(np.mean, mask, n_resamples=n_resamples, random_state=seed)
                if len(mask) else (np.nan, np.nan))
    return {"value": float(np.mean(mask)) if len(mask) else np.nan, "ci": interval,
            "count": int(mask.sum()), "of": int(len(mask))}


def scored(metrics, is_positive, scores, *, n_resamples, seed):
    """Each metric of each score, with a bootstrap 95% interval.

    Parameters
    ----------
    metrics : dict of str to callable
        ``metric(is_positive, score)`` returns a float (NaN where undefined).
    is_positive : ndarray of bool, shape (n_samples,)
    scores : dict of str to ndarray of shape (n_samples,)
        Higher means more likely positive.

    Returns
    -------
    results : dict
        ``results[score_name][metric_name] = {"value": ..., "ci": (low, high)}``.
    """
    return {
        name: {key: {"value": metric(is_positive, score),
                     "ci": bootstrap_interval(metric, is_positive, score,
                                              n_resamples=n_resamples, random_state=seed)}
               for key, metric in metrics.items()}
        for name, score in scores.items()
    }


def call_repr(name, params):
    """``name(key=value, ...)``, for the settings line of a report."""
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


def write_report(out, markdown, results, figures):
    """Write ``report.md``, ``results.json`` and each figure as ``<name>.png`` to ``out``."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "report.md").write_text(markdown)
    print(f"Wrote {out / 'report.md'}, results.json and {len(figures)} figures.", file=sys.stderr)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def table(header, rows):
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def with_interval(value, interval, percent=False, digits=3):
    """``value [low, high]``, as a percentage if asked."""
    if value is None or np.isnan(value):
        return "n/a"
    f = (lambda v: f"{100 * v:.{max(digits - 2, 1)}f}%") if percent else (lambda v: f"{v:.{digits}f}")
    if interval is None or np.isnan(interval[0]):
        return f(value)
    return f"{f(value)} [{f(interval[0])}, {f(interval[1])}]"
