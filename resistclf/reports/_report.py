"""Writing a report: report.md, results.json and PNG figures in one folder, with the
header and the settings section every study command shares.

What a command computes is kept in a :class:`~resistclf.ResultStore` (its ``--cache``
folder), which never unpickles what it reads back; every file here is written under a
temporary name and renamed once complete, so a crash or a second process never leaves half
a file.
"""

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import joblib
import numpy as np

from .._cache import jsonable, atomic_write

#: Cross-validation folds of every report's learned detectors and detect-then-correct.
FOLDS = 5


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


def study_results(study, run):
    """``results.json`` of a study command: what the run was, then the study's results."""
    return {**run, **study.to_dict(), "environment": environment()}


def recompute_study(results, arrays):
    """The numbers of a one-set study report (reproduce, study) from its per-image arrays:
    the same analysis, on the measurements read back, with the report's folds and seed."""
    from .. import ResistanceAttack
    from ..study import Measurements, analyse

    measured = Measurements.from_arrays(arrays, attack=ResistanceAttack(**results["attack"]))
    return analyse(measured, folds=results["folds"], n_resamples=results["n_resamples"],
                   random_state=results["seed"]).to_dict()


def traces_figure(module, attack, measured, X):
    """The write-up's figure: Conf and |r| over the attack of a hard image and an easy one.

    The hard image is a correct prediction at the 90th percentile of Res_N among correct
    ones, the easy one an error at the median of Res_N among errors (a correct prediction
    where there is none). Returns the figure and the two images' positions in ``X``.
    """
    import torch

    from ..plotting import plot_attack_traces

    result, is_error = measured.attacks[0], measured.is_error

    def at_quantile(mask, q):
        candidates = np.flatnonzero(mask)
        values = result.res_n[candidates]
        return int(candidates[np.argmin(np.abs(values - np.quantile(values, q)))])

    hard, easy = at_quantile(~is_error, 0.9), at_quantile(is_error if is_error.any()
                                                            else ~is_error, 0.5)
    traced = type(attack)(**{**attack.get_params(), "early_exit": None, "n_jobs": None,
                             "verbose": False})(
        module, torch.from_numpy(np.asarray(X[[hard, easy]], dtype=np.float32)),
        return_trace=True)
    truth = ["none" if i < 0 else measured.classes[i] for i in measured.y]

    def title(kind, i):
        return (f"{kind}: {'misclassified' if is_error[i] else 'correct'} {truth[i]}, "
                f"Res_min {result.res_min[i]}, Res_N {result.res_n[i]:.2f}")

    figure = plot_attack_traces(traced.conf_trace, traced.norm_trace,
                                np.asarray(X[[hard, easy]]),
                                [title("hard", hard), title("easy", easy)])
    return figure, {"hard": hard, "easy": easy}


def header_markdown(title, r, description, resampled="the images", opening=None):
    """A report's title, its ``opening`` lines (the primary question and its verdict) and
    its opening paragraph, with MNIST's short training split noted; ``resampled`` says
    what the bootstrap draws."""
    lines = [f"# {title}", "", *([opening, ""] if opening else []),
             f"{description} Brackets hold bootstrap 95% intervals "
             f"({r['n_resamples']} resamples of {resampled}).", ""]
    if r.get("dataset") == "mnist" and r.get("n_train", 60000) < 60000:
        lines += [f"MNIST's training split here holds only the first {r['n_train']:,} of the "
                  "official 60,000 images, so its nets make more errors than ones trained on "
                  "all of them, and than the write-up's.", ""]
    return "\n".join(lines)


def settings_markdown(r, nets=None):
    """The report's last section: the attack, the nets, versions, machine and timings."""
    nets = {"Net": r["net"]} if nets is None else nets
    return "\n".join([
        "## Settings, versions and timings",
        "",
        f"- Attack: `{call_repr('ResistanceAttack', r['attack'])}`",
        *(f"- {name}: {', '.join(f'{k} {v}' for k, v in info.items())}"
          for name, info in nets.items()),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in r["environment"].items()
                                   if k != "machine"),
        f"- Machine: {r['environment']['machine']}",
        f"- Seed {r['seed']}; wall time per phase of this run (s): "
        + ", ".join(f"{k} {v}" for k, v in r["seconds"].items())
        + ". A phase whose results were kept in the cache by an earlier run takes little "
          "time here; the cost columns give each score's time as first computed.",
        "",
    ])


def call_repr(name, params):
    """``name(key=value, ...)``, for the settings line of a report."""
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


def write_report(out, markdown, results, figures, arrays=None):
    """Write ``report.md``, ``results.json``, each figure as ``<name>.png`` and, with
    ``arrays``, the per-image arrays as ``per_image.npz`` (from which ``resistclf verify``
    recomputes every number of ``results.json``) to ``out``."""
    import matplotlib.pyplot as plt

    out = Path(out)
    if arrays is not None:
        with atomic_write(out / "per_image.npz") as file:
            np.savez_compressed(file, **arrays)
    for name, fig in figures.items():
        with atomic_write(out / f"{name}.png") as file:
            fig.savefig(file, format="png", dpi=110, bbox_inches="tight")
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
    write_text(path, json.dumps(value, indent=indent, default=jsonable))
