"""Writing a report: report.md, results.json and PNG figures in one folder."""

import json
import os
import platform
import sys
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .._cache import atomic_write
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


@contextmanager
def parallel_backend(scheduler):
    """Send joblib's jobs (the attack's ``n_jobs``) to the dask scheduler at ``scheduler``.

    With ``scheduler=None`` joblib's default backend is kept.
    """
    if scheduler is None:
        yield
        return
    import joblib
    from distributed import Client

    with Client(scheduler) as client, joblib.parallel_config(backend="dask"):
        yield client


def write_arrays(path, key, arrays, info):
    """Save ``arrays`` to ``path.npz`` and ``{"key": key, "info": info}`` to ``path.json``."""
    path = Path(path)
    with atomic_write(path.with_suffix(".npz")) as file:
        np.savez(file, **arrays)
    with atomic_write(path.with_suffix(".json")) as file:
        file.write(json.dumps({"key": key, "info": info}, indent=1, default=_jsonable).encode())


def read_arrays(path, key):
    """``(arrays, info)`` saved by :func:`write_arrays` under ``key``, or None.

    None if nothing was saved, if it was saved for another key, or if the files cannot be
    read (with a warning that names them, so that the caller recomputes).
    """
    path = Path(path)
    npz, record = path.with_suffix(".npz"), path.with_suffix(".json")
    if not (npz.exists() and record.exists()):
        return None
    try:
        saved = json.loads(record.read_text())
        if saved["key"] != key:
            return None
        with np.load(npz, allow_pickle=False) as data:
            return dict(data), saved["info"]
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"Recomputing: {npz} or {record} cannot be read ({exc}).", stacklevel=2)
        return None
