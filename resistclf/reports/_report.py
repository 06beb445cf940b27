"""Writing a report (report.md, results.json and PNG figures in one folder), and the files
the study commands keep between runs.

Every file a command reads back may have been written by someone else (``--out`` folders
are shared between people and machines), so none is read with pickle: arrays are ``.npz``
read with ``allow_pickle=False``, the rest JSON, and nets ``torch.load(weights_only=True)``.
A file that cannot be read that way is reported with a warning that names it, and what it
held is computed again. Every file is written under a temporary name and renamed once
complete, so a crash or a second process never leaves half a file.
"""

import json
import os
import platform
import sys
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import joblib
import numpy as np

from .. import AttackCache
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


@contextmanager
def parallel_backend(n_jobs=None, scheduler=None):
    """Where the attacks of a study command run, for its ``--n-jobs`` and ``--scheduler``.

    Inside this context a :class:`~resistclf.ResistanceAttack` left at ``n_jobs=None``
    uses the workers chosen here (and so do scikit-learn's estimators left at
    ``n_jobs=None``); results are the same wherever the attack runs.

    Parameters
    ----------
    n_jobs : int or None, default=None
        Number of worker processes on this machine (joblib's loky backend); None
        means 1 and -1 all CPUs. Ignored with ``scheduler``.
    scheduler : str or None, default=None
        Address of a running dask scheduler, such as ``"tcp://10.0.0.5:8786"``. A
        :class:`distributed.Client` connects to it, and the attacks run on all of
        its workers through joblib's dask backend.

    Yields
    ------
    client : distributed.Client or None
        The connected client, with ``scheduler``.
    """
    if scheduler is None:
        with joblib.parallel_config(n_jobs=n_jobs):
            yield None
        return
    try:
        from distributed import Client
    except ImportError as exc:
        raise ImportError(
            "--scheduler runs the attacks on a dask cluster, which needs dask.distributed. "
            "Install the optional extra: pip install 'resistclf[distributed]'."
        ) from exc
    with Client(scheduler) as client, joblib.parallel_config(backend="dask"):
        yield client


def keep_first_timings(out, timings, cached):
    """Time each phase in ``cached`` as the run that computed it did.

    A phase that only reused cached results takes its time from the previous
    ``results.json`` in ``out``, if that records one, so that a rerun's report
    still tells what the work cost.
    """
    previous = read_json(Path(out) / "results.json")
    previous = previous.get("seconds") if isinstance(previous, dict) else None
    for name in cached:
        if isinstance(previous, dict) and isinstance(previous.get(name), (int, float)):
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
    for name, fig in figures.items():
        with atomic_write(out / f"{name}.png") as file:
            fig.savefig(file, format="png", dpi=110)
        plt.close(fig)
    write_json(out / "results.json", results)
    write_text(out / "report.md", markdown)
    print(f"Wrote {out / 'report.md'}, results.json and {len(figures)} figures.", file=sys.stderr)


def write_text(path, text):
    """Write ``text`` to ``path`` (UTF-8), atomically."""
    with atomic_write(path) as file:
        file.write(text.encode())


def write_json(path, value, indent=2):
    """Write ``value`` to ``path`` as JSON (NumPy numbers and arrays as plain ones), atomically."""
    write_text(path, json.dumps(value, indent=indent, default=_jsonable))


def read_json(path):
    """What the JSON file ``path`` holds; None if it is missing or not JSON (with a warning)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        warn_unreadable(path, f"it is not JSON ({exc})")
        return None


def write_arrays(path, **arrays):
    """Write ``arrays`` to ``path`` as an ``.npz`` file of plain arrays, atomically."""
    with atomic_write(path) as file:
        np.savez(file, **arrays)


def read_arrays(path, names):
    """The arrays ``names`` of the ``.npz`` file ``path``, read without pickle.

    Returns None if the file is missing, or (with a warning) if it is not an
    ``.npz`` file of plain arrays holding each of ``names``.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = exc
    except (AttributeError, TypeError):  # np.load gave a single array, not an archive
        reason = "it is not an .npz archive"
    warn_unreadable(path, f"it is not an .npz file of plain arrays {list(names)} ({reason})")
    return None


def load_attack_cache(path):
    """The attack cache saved in ``path``; an empty one if there is none or it is unreadable."""
    path = Path(path)
    if not path.exists():
        return AttackCache()
    try:
        return AttackCache.load(path)
    except ValueError as exc:
        warn_unreadable(path, str(exc))
        return AttackCache()


def warn_unreadable(path, reason):
    """Warn that the file ``path`` is ignored, and its content computed again."""
    warnings.warn(f"Ignoring {path}: {reason}. What it held is computed again and the file "
                  "replaced.", UserWarning, stacklevel=3)


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

