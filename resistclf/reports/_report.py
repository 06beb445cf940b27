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


def reanalyse_study(results, arrays):
    """The analysis of a one-set study report (reproduce, study) from its per-image arrays:
    the same :func:`~resistclf.study.analyse`, on the measurements read back, with the
    report's folds and seed. Returns the :class:`~resistclf.study.StudyResult`."""
    from .. import ResistanceAttack
    from ..study import Measurements, analyse

    measured = Measurements.from_arrays(arrays, attack=ResistanceAttack(**results["attack"]))
    return analyse(measured, folds=results["folds"], n_resamples=results["n_resamples"],
                   random_state=results["seed"])


def rewrite_study(results, arrays, markdown):
    """A one-set study report redrawn from its arrays: what ``verify --rewrite`` needs.

    Returns the recomputed numbers, the report's Markdown (``markdown(results, study)``)
    and the figures drawn from the arrays alone (not those that need the images or the
    net, which stay as they are).
    """
    study = reanalyse_study(results, arrays)
    figures = {name: fig for name, fig in study.figures().items()
               if name in ("risk_coverage", "roc", "histograms")}
    return study.to_dict(), markdown(results, study), figures


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
    departures = departures_markdown(r["attack"]) if "attack" in r else None
    lines = [f"# {title}", "", *([opening, ""] if opening else []),
             *([departures, ""] if departures else []),
             f"{description} Brackets hold bootstrap 95% intervals "
             f"({r['n_resamples']} resamples of {resampled}).", ""]
    if r.get("dataset") == "mnist" and r.get("n_train", 60000) < 60000:
        lines += [f"MNIST's training split here holds only the first {r['n_train']:,} of the "
                  "official 60,000 images, so its nets make more errors than ones trained on "
                  "all of them, and than the write-up's.", ""]
    return "\n".join(lines)


#: Why a departure from the attack's defaults matters, where it is not plain.
_DEPARTURE_NOTES = {
    "max_iter": "the step size is tuned for 500 steps; fewer leave more images unflipped",
    "step_size": "the thresholds and 500 steps are tuned for a step of 0.15",
    "precision": "features move by rounding; see docs/results/bench",
    "early_exit": "the attack stops before 500 steps once its class has settled",
}


def departures_markdown(attack):
    """One line that flags the attack settings (``get_params()``) that change its results and
    differ from :class:`~resistclf.ResistanceAttack`'s defaults; None where none does."""
    from .. import ResistanceAttack

    defaults = ResistanceAttack().get_params()
    changed = [name for name in ("max_iter", "step_size", "norm", "thresholds", "optimizer",
                                 "precision", "early_exit")
               if name in attack and _as_tuple(attack[name]) != _as_tuple(defaults[name])]
    if not changed:
        return None
    return "**Settings that depart from the defaults:** " + "; ".join(
        f"`{name}={attack[name]!r}` (default {defaults[name]!r}"
        + (f": {_DEPARTURE_NOTES[name]}" if name in _DEPARTURE_NOTES else "") + ")"
        for name in changed) + "."


def _as_tuple(value):
    """JSON turns tuples into lists; compare them as tuples."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


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
    return f"{name}(" + ", ".join(f"{k}={_as_tuple(v)!r}" for k, v in params.items()) + ")"


#: Every feature, score, metric and test a report may name, as its glossary defines it.
GLOSSARY = {
    "Res_N": "|r| at the end of the resistance attack (500 steps by default).",
    "Res_max": "the largest |r| the attack reaches.",
    "Res_min": "the number of steps until the prediction first changes (a step count, "
               "`max_iter + 1` where it never does).",
    "Res_mean": "the mean |r| over the steps after the prediction first changed (|r| at the "
                "end where it never did).",
    "max-softmax": "the softmax probability of the predicted class (its error score is 1 − "
                   "max-softmax).",
    "max-logit": "the largest logit, negated as an error score.",
    "softmax margin": "the top softmax probability minus the second.",
    "logit margin": "the top logit minus the second.",
    "entropy": "the entropy of the softmax.",
    "energy": "−logsumexp of the logits (Liu et al., 2020).",
    "DOCTOR": "D_alpha (from the Gini impurity of the softmax) and D_beta ((1 − p_max) / p_max), "
              "Granese et al. (2021).",
    "input-space margin": "the distance to the nearest decision boundary of the net linearised "
                          "at the input (DeepFool's first step).",
    "DeepFool": "DeepFool (Moosavi-Dezfooli et al., 2016): the norm of its minimal "
                "perturbation, and the class it lands in.",
    "FMN": "Fast Minimum-Norm attack (Pintor et al., 2021), through Foolbox: the norm of its "
           "perturbation, and the class it lands in.",
    "DDN": "Decoupled Direction and Norm attack (Rony et al., 2019), through Foolbox.",
    "LR(": "a learned detector: `make_detector()`, a logistic regression on each input's "
           "normal scores (its empirical quantiles mapped to a standard normal), trained and "
           "scored out of fold.",
    "AUROC": "area under the ROC curve: the chance that an error scores above a correct "
             "prediction (0.5 is chance).",
    "FPR at 95% TPR": "the share of correct predictions flagged when 95% of errors are.",
    "AURC": "area under the risk-coverage curve: the mean error rate among the predictions "
            "kept, over every coverage (×1000, lower is better).",
    "E-AURC": "AURC minus that of the best possible ranking of the same predictions.",
    "AUGRC": "area under the generalized risk-coverage curve: the share of predictions both "
             "kept and wrong, over every coverage (Traub et al., 2024).",
    "paired": "both methods on the same resampled images, so the interval is that of their "
              "difference.",
    "TOST": "two one-sided tests: equivalence is shown when the whole 90% interval of the "
            "difference lies within a margin declared before the run.",
    "Holm": "Holm's step-down adjustment of the secondary tests' p-values for their number.",
    "McNemar": "McNemar's exact test on the images where two paired methods disagree.",
    "adversarial class": "the class the resistance attack lands in; the adversarial "
                         "correction replaces a detected error with it.",
    "second choice": "the class with the second-highest softmax probability.",
    "detect then correct": "the net's prediction, replaced by the adversarial class where the "
                           "learned detector says the net is wrong.",
}


def glossary_markdown(markdown):
    """The glossary section of the terms ``markdown`` names, or "" (names and abbreviations
    match as written; lower-case terms also at the start of a sentence)."""
    lowered = markdown.replace("detect-then-correct", "detect then correct")
    terms = [term for term in GLOSSARY if term in lowered or term.lower() in lowered.lower()
             and term[0].islower()]
    if not terms:
        return ""
    return "\n".join(["## Glossary", "", *(f"- **{term.rstrip('(')}**: {GLOSSARY[term]}"
                                          for term in terms), ""])


def write_report(out, markdown, results, figures, arrays=None):
    """Write ``report.md`` (``markdown`` and the glossary of the terms it names),
    ``results.json``, each figure as ``<name>.png`` and, with
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
    write_text(out / "report.md", "\n".join(filter(None, [markdown, glossary_markdown(markdown)])))
    print(f"Wrote {out / 'report.md'}, results.json and {len(figures)} figures.", file=sys.stderr)


def write_text(path, text):
    """Write ``text`` to ``path`` (UTF-8), atomically."""
    with atomic_write(path) as file:
        file.write(text.encode())


def write_json(path, value, indent=2):
    """Write ``value`` to ``path`` as JSON (NumPy numbers and arrays as plain ones), atomically."""
    write_text(path, json.dumps(value, indent=indent, default=jsonable))
