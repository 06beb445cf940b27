"""The study engine: the write-up's claims on any trained network and data, beside baselines.

Two steps, so that one measurement serves every analysis:

- :func:`measure` runs everything that costs passes through the network, once per image:
  the logits, the resistance attack at each rank the top-k lists need, and the attack-based
  competitors (input-space margin, DeepFool, FMN, DDN). Given a :class:`~resistclf.ResultStore`,
  every per-image result is keyed by its content and kept, so an interrupted study resumes
  and a second study over the same images computes nothing again.
- :func:`analyse` turns the per-image :class:`Measurements` into a :class:`StudyResult`: every
  error score scored by AUROC and the risk-coverage metrics with bootstrap intervals, the
  learned detectors out of fold, the complementarity test, the correction and top-k claims
  beside their softmax baselines, detect-then-correct, and each score's cost. A result
  writes its report's Markdown, JSON and figures.

:func:`run_study` does both. Measurements can be subset and concatenated, so a study under
distribution shift analyses i.i.d. and shifted images together, as FD-Shifts does.

Directions: every score handed to a metric is an **error score**, higher for samples more
likely wrong. :meth:`Measurements.error_scores` is the one place where distances and
resistance features, for which *small* means likely wrong, are turned into error scores.
"""

import functools
import sys
import warnings
from dataclasses import dataclass, field, fields
from numbers import Integral

import numpy as np
import torch
from scipy.special import softmax
from scipy.stats import spearmanr
from joblib import effective_n_jobs
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ._attack import ALL_FEATURE_NAMES, AttackResult, ResistanceAttack
from ._cache import ResultStore, settings_key, as_rows
from ._estimator import detect_then_correct, make_detector, topk_indices
from ._nets import check_net, eval_mode, forward, logit_module, module_dtype, net_classes, \
    on_device, resolve_device
from .metrics import DetectionMetric, Mean, MeanDifference, MetricDifference, \
    bootstrap_interval, equivalence_test, holm_family, mcnemar_test, paired_difference
from .scores import (
    SOFTMAX_SCORES,
    deepfool,
    input_margin,
    minimum_norm,
    resistance_error_scores,
    softmax_scores,
)

__all__ = ["COMPETITORS", "DEFAULT_COMPETITORS", "EQUIVALENCE_MARGIN", "Measurements",
           "PRIMARY_QUESTION", "StudyResult", "analyse", "complementarity_table", "cost_cell",
           "count_cell", "detection_table", "distance_name", "label_indices", "markdown_table",
           "measure", "metric_cell", "percent_cell", "proportion", "resistance_key",
           "p_cell", "run_study", "score_metrics", "tests_markdown", "verdict_markdown",
           "with_interval"]

#: The per-sample fields of an AttackResult that a study keeps (traces are never kept).
_ATTACK_FIELDS = [f.name for f in fields(AttackResult) if not f.name.endswith("_trace")]
#: The per-method dicts of Measurements, each ``{method: per-sample array}``.
_PER_METHOD = ("distances", "landing", "forward", "backward", "seconds")
#: Display name of each resistance feature.
RESISTANCE = {"res_n": "Res_N", "res_max": "Res_max", "res_min": "Res_min",
              "res_mean": "Res_mean"}
#: The attack-based competitors: name -> (function, its settings, passes it reports).
#: Each is a distance from the input to a decision boundary, in the attack's norm units;
#: all but the input-space margin also land in a class.
COMPETITORS = {
    "input-space margin": ("input_margin", {}),
    "DeepFool": ("deepfool", {}),
    "FMN-L2": ("minimum_norm", {"attack": "fmn-l2"}),
    "FMN-Linf": ("minimum_norm", {"attack": "fmn-linf"}),
    "DDN": ("minimum_norm", {"attack": "ddn"}),
    "FMN-L2, 500 steps": ("minimum_norm", {"attack": "fmn-l2", "steps": 500}),
    "FMN-Linf, 500 steps": ("minimum_norm", {"attack": "fmn-linf", "steps": 500}),
    "DDN, 500 steps": ("minimum_norm", {"attack": "ddn", "steps": 500}),
}
#: The competitors a study runs by default: each at its own default budget.
DEFAULT_COMPETITORS = ("input-space margin", "DeepFool", "FMN-L2", "FMN-Linf", "DDN")
METRICS = {"auroc": "AUROC", "aurc": "AURC", "eaurc": "E-AURC", "augrc": "AUGRC",
           "fpr_at_95_tpr": "FPR at 95% TPR"}
#: Metrics shown multiplied by 1000, as the field reports them.
PER_MILLE = {"aurc", "eaurc", "augrc"}
#: The complementarity test: (with, without) pairs of learned detectors.
COMPLEMENTS = {
    "resistance beyond the softmax": ("LR(softmax + resistance)", "LR(softmax)"),
    "resistance beyond the softmax and the attack distances": (
        "LR(softmax + distances + resistance)", "LR(softmax + distances)"),
    "LR(resistance + max-softmax) beyond max-softmax": ("LR(resistance + max-softmax)",
                                                        "max-softmax"),
}
#: Each report's primary question, fixed before any data is seen: the complementarity row
#: it reads, tested on Δ AUROC.
PRIMARY = "resistance beyond the softmax"
#: The primary question, as each report's header names it.
PRIMARY_QUESTION = ("Does resistance add to the softmax in detecting the net's errors? "
                    "(Δ AUROC of the same learned detector with and without the resistance "
                    "features, paired, out of fold)")
#: The margins of the equivalence tests (TOST), declared before the runs they judge: a
#: difference in AUROC within ±0.005 changes no ranking of detectors a reader would act on.
EQUIVALENCE_MARGIN = {"auroc": 0.005}
#: How many of the net's errors the errors figure shows (the figure says how many there are).
ERRORS_SHOWN = 40
#: The panels of the histograms figure, every one on a log axis.
HISTOGRAMS = ["Res_N", "Res_max", "Res_min (steps)", "Res_mean", "1 - max-softmax (baseline)"]


def resistance_key(rank):
    """The key of the resistance attack at ``rank`` in :attr:`Measurements.seconds`."""
    return "resistance" if rank == 0 else f"resistance, rank {rank}"


def distance_name(competitor):
    """The error score's display name of a competitor's distance."""
    return competitor if competitor == "input-space margin" else f"{competitor} distance"


# ------------------------------------------------------------------------ measurements

@dataclass
class Measurements:
    """Everything a study measures, per sample.

    Create it with :func:`measure`. Index it (``m[mask]``) for a subset, and join
    several with :meth:`concatenate`: every analysis of :func:`analyse` works on
    any of them.

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
        The net's class labels; class indices below index it.
    y : ndarray of shape (n_samples,), dtype int64
        Index of each sample's true class in ``classes``; -1 where the true
        class is none of the net's (new-class shift): every prediction on such
        a sample is a failure.
    logits : ndarray of shape (n_samples, n_classes), dtype float64
    attacks : tuple of AttackResult
        The resistance attack at ranks 0, 1, ...
    distances : dict of str to ndarray of shape (n_samples,)
        Each competitor's distance to a decision boundary (small means likely
        wrong).
    landing : dict of str to ndarray of shape (n_samples,)
        The class each competitor that lands somewhere lands in.
    forward, backward : dict of str to ndarray of shape (n_samples,)
        Passes through the net spent on each sample, per method (``"softmax"``,
        ``"resistance"`` at rank 0, ``"resistance, rank 1"`` and so on, and each
        competitor).
    seconds : dict of str to ndarray of shape (n_samples,)
        Each sample's share of the wall time of the batch that computed it, per
        method, as first computed (a result read back from a store keeps the
        time it took then).
    attack : ResistanceAttack
        The attack's settings.
    """

    classes: np.ndarray
    y: np.ndarray
    logits: np.ndarray
    attacks: tuple
    distances: dict
    landing: dict
    forward: dict
    backward: dict
    seconds: dict
    attack: ResistanceAttack = field(default_factory=ResistanceAttack)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        """The measurements of the samples selected by ``index`` (a mask, slice or indices)."""
        return self._map(lambda array: array[index])

    @classmethod
    def concatenate(cls, parts):
        """Join measurements of the same net and settings, sample after sample.

        Parameters
        ----------
        parts : sequence of Measurements

        Returns
        -------
        measurements : Measurements
        """
        first = parts[0]
        for part in parts[1:]:
            if not np.array_equal(part.classes, first.classes) or len(part.attacks) != len(
                    first.attacks) or set(part.distances) != set(first.distances):
                raise ValueError("Only measurements of the same net, ranks and competitors "
                                 "can be concatenated.")
        joined = {}
        for f in fields(cls):
            values = [getattr(part, f.name) for part in parts]
            if f.name in ("classes", "attack"):
                joined[f.name] = values[0]
            elif f.name == "attacks":
                joined[f.name] = tuple(AttackResult.concatenate(ranked)
                                       for ranked in zip(*values))
            elif isinstance(values[0], dict):
                joined[f.name] = {key: np.concatenate([v[key] for v in values])
                                  for key in values[0]}
            else:
                joined[f.name] = np.concatenate(values)
        return cls(**joined)

    def _map(self, take):
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("classes", "attack"):
                values[f.name] = value
            elif f.name == "attacks":
                values[f.name] = tuple(result[take(np.arange(len(self)))] for result in value)
            elif isinstance(value, dict):
                values[f.name] = {key: take(array) for key, array in value.items()}
            else:
                values[f.name] = take(value)
        return type(self)(**values)

    def to_arrays(self):
        """Every per-sample array, flat, as an ``.npz`` holds them (no pickled objects).

        Returns
        -------
        arrays : dict of str to ndarray
            ``classes``, ``y``, ``logits``, ``attack<rank>.<field>`` for each
            :class:`~resistclf.AttackResult` field, and ``<kind>.<method>`` for
            ``distances``, ``landing``, ``forward``, ``backward`` and ``seconds``.
            :meth:`from_arrays` reads them back.
        """
        classes = np.asarray(self.classes)
        arrays = {"classes": classes.astype(str) if classes.dtype == object else classes,
                  "y": self.y, "logits": self.logits}
        for rank, result in enumerate(self.attacks):
            arrays.update({f"attack{rank}.{name}": getattr(result, name)
                           for name in _ATTACK_FIELDS})
        for kind in _PER_METHOD:
            arrays.update({f"{kind}.{name}": value for name, value in getattr(self, kind).items()})
        return arrays

    def per_image_table(self, sources=None, leading=None):
        """One row per sample, raw values as measured: what a CSV or a data frame holds.

        Nothing is negated or turned into an error score here: Res_N is the norm the
        attack reached, max-softmax the net's probability of its prediction, a
        distance the competitor's distance.

        Parameters
        ----------
        sources : array-like of shape (n_samples,) or None, default=None
            Each sample's source id (an image and its corrupted copies share one);
            None leaves the column out.
        leading : dict of str to array-like or None, default=None
            Columns to put first, such as the set each sample belongs to.

        Returns
        -------
        columns : dict of str to ndarray of shape (n_samples,)
            ``source`` (with ``sources``), ``label`` (the true class's name, empty
            where it is none of the net's), ``prediction``, ``is_error``,
            ``max-softmax``, ``max-logit``, for the attack at each rank ``Res_N``,
            ``Res_max``, ``Res_min (steps)``, ``Res_mean``, ``flipped`` and
            ``adversarial class`` (rank 0 unsuffixed, then ``, rank 1``...), and
            each competitor's ``<name> distance`` and ``<name> class``.
        """
        classes = np.asarray(self.classes)
        logits = np.asarray(self.logits, dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        columns = {name: np.asarray(value) for name, value in (leading or {}).items()}
        if sources is not None:
            columns["source"] = np.asarray(sources)
        columns.update({
            "label": np.where(self.y >= 0, classes[np.maximum(self.y, 0)].astype(str), ""),
            "prediction": classes[self.prediction].astype(str),
            "is_error": self.is_error,
            "max-softmax": (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1),
            "max-logit": logits.max(axis=1)})
        for rank, result in enumerate(self.attacks):
            suffix = "" if rank == 0 else f", rank {rank}"
            columns.update({f"{name}{suffix}": np.asarray(getattr(result, field_))
                            for name, field_ in [("Res_N", "res_n"), ("Res_max", "res_max"),
                                                 ("Res_min (steps)", "res_min"),
                                                 ("Res_mean", "res_mean"),
                                                 ("flipped", "flipped")]})
            columns[f"adversarial class{suffix}"] = classes[result.adversarial_class].astype(str)
        for name, distance in self.distances.items():
            columns[f"{name} distance"] = np.asarray(distance)
        for name, landed in self.landing.items():
            landed = np.asarray(landed)
            columns[f"{name} class"] = np.where(landed >= 0, classes[np.maximum(landed, 0)]
                                                .astype(str), "")
        return columns

    def to_frame(self, sources=None, leading=None):
        """:meth:`per_image_table` as a pandas DataFrame (pandas is optional).

        Parameters
        ----------
        sources : array-like of shape (n_samples,) or None, default=None
        leading : dict of str to array-like or None, default=None

        Returns
        -------
        frame : pandas.DataFrame
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("Measurements.to_frame needs pandas (pip install pandas); "
                              "per_image_table() gives the same columns as arrays, and "
                              "to_csv() writes them without it.") from exc
        return pd.DataFrame(self.per_image_table(sources, leading))

    def to_csv(self, path, sources=None, leading=None):
        """Write :meth:`per_image_table` to ``path`` as CSV (no pandas needed).

        Parameters
        ----------
        path : str or path-like
        sources : array-like of shape (n_samples,) or None, default=None
        leading : dict of str to array-like or None, default=None
        """
        import csv

        columns = self.per_image_table(sources, leading)
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(columns)
            for row in zip(*columns.values()):
                writer.writerow([repr(float(v)) if isinstance(v, np.floating) else
                                 str(v) for v in row])

    @classmethod
    def from_arrays(cls, arrays, *, attack=None):
        """Measurements from :meth:`to_arrays`' arrays (as read back from an ``.npz``).

        Parameters
        ----------
        arrays : mapping of str to ndarray
        attack : ResistanceAttack or None, default=None
            The attack's settings (a report's ``results.json`` holds them); None
            means the defaults.

        Returns
        -------
        measurements : Measurements
        """
        ranks = sorted({int(key.split(".")[0][6:]) for key in arrays if key.startswith("attack")})
        per_method = {kind: {key.split(".", 1)[1]: np.asarray(arrays[key]) for key in arrays
                             if key.startswith(f"{kind}.")} for kind in _PER_METHOD}
        return cls(classes=np.asarray(arrays["classes"]), y=np.asarray(arrays["y"]),
                   logits=np.asarray(arrays["logits"]),
                   attacks=tuple(AttackResult(**{name: np.asarray(arrays[f"attack{rank}.{name}"])
                                                 for name in _ATTACK_FIELDS}) for rank in ranks),
                   attack=ResistanceAttack() if attack is None else attack, **per_method)

    @property
    def prediction(self):
        """Index of the net's predicted class."""
        return self.attacks[0].c0

    @property
    def is_error(self):
        """Whether the net's prediction is wrong (always, where ``y`` is -1)."""
        return self.prediction != self.y

    def error_scores(self):
        """Every per-sample error score: resistance, softmax-derived and the distances.

        Higher means more likely an error, for every score: resistance features
        and distances, for which a small value means a likely error, are
        negated here, and only here.

        Returns
        -------
        scores : dict of str to ndarray of shape (n_samples,)
        """
        scores = {RESISTANCE[name]: score for name, score in
                  resistance_error_scores(self.attacks[0], ALL_FEATURE_NAMES).items()}
        scores.update(softmax_scores(self.logits))
        scores.update({distance_name(name): -distance
                       for name, distance in self.distances.items()})
        return scores

    def topk_labels(self, k):
        """:meth:`~resistclf.ResistanceClassifier.predict_topk`'s lists, as class indices.

        Parameters
        ----------
        k : int
            From 1 to ``n_classes``; ``k >= 3`` needs the attack at three ranks
            (two for three classes), ``k = 2`` at one.

        Returns
        -------
        labels : ndarray of shape (n_samples, k)
            Indices into ``classes``, best first.
        """
        return topk_indices(self.attacks, self.logits, k)

    def corrected_predictions(self, *, folds=5, random_state=0, groups=None, train=None):
        """Detect-then-correct's predictions, cross-validated over the samples.

        Each fold's detector and threshold are fit, as
        :class:`~resistclf.ResistanceClassifier` fits them on a fixed net, on the
        other folds' attack results and labels; no image is attacked again.

        Parameters
        ----------
        folds : int, default=5
            Folds stratified by the true class (fewer where the largest class
            has fewer samples).
        random_state : int, default=0
            Seeds the folds and each fold's detector, as ``random_state`` seeds
            :class:`~resistclf.ResistanceClassifier`.
        groups : array-like of shape (n_samples,) or None, default=None
            The source of each sample: samples of one source (an image and its
            corrupted copies) stay in one fold (``StratifiedGroupKFold``).
        train : array-like of bool, shape (n_samples,) or None, default=None
            The samples each fold's detector may learn from (FD-Shifts: the
            i.i.d. ones); every sample of a class is still corrected out of
            fold. None means all.

        Returns
        -------
        prediction : ndarray of shape (n_samples,)
            Class indices: the adversarial class where the detector flags an
            error, else the net's prediction. Samples of no class (``y`` is -1)
            are left out of the folds and keep the net's prediction.
        """
        corrected = self.prediction.copy()
        known = np.flatnonzero(self.y >= 0)
        y, result = self.y[known], self.attacks[0][known]
        learns = np.ones(len(known), dtype=bool) if train is None else np.asarray(
            train, dtype=bool)[known]
        counts = np.bincount(y[learns]) if learns.any() else np.zeros(1, int)
        n_splits = min(folds, counts.max())
        if n_splits < 2:
            raise ValueError(f"Cross-validated correction needs a class with at least 2 "
                             f"samples; the largest has {counts.max()}.")
        splits = _splits(y, None if groups is None else np.asarray(groups)[known], n_splits,
                         random_state)
        for fit, held in splits:
            fit = fit[learns[fit]]
            corrected[known[held]] = detect_then_correct(result[fit], y[fit], result[held],
                                                         random_state=random_state)
        return corrected

    def cost(self):
        """Mean passes and seconds per sample, per method, and the total seconds.

        Returns
        -------
        cost : dict of str to dict
            ``{"forward": ..., "backward": ..., "seconds_per_image": ...,
            "seconds": ...}`` per method.
        """
        return {name: {"forward": float(np.mean(self.forward[name])),
                       "backward": float(np.mean(self.backward[name])),
                       "seconds_per_image": float(np.mean(self.seconds[name])),
                       "seconds": float(np.sum(self.seconds[name]))}
                for name in self.seconds}


def measure(net, X, y=None, *, attack=None, ranks=1, competitors=DEFAULT_COMPETITORS,
            net_output="auto", store=None, batch_size=256, verbose=False):
    """Run the network, the resistance attack and the competitors on every sample.

    Parameters
    ----------
    net : torch.nn.Module, skorch NeuralNetClassifier or FrozenEstimator
        A trained network (see :class:`~resistclf.ResistanceClassifier`'s
        ``net``).
    X : array-like of shape (n_samples, ...)
        Float inputs in the units the attack's ``clip`` and ``preprocessing``
        expect; read a batch at a time, so it may be a memory map or any
        array-like with ``shape``, ``dtype`` and numpy indexing (such as a
        lazy reader of image files). Never modified.
    y : array-like of shape (n_samples,) or None, default=None
        True labels, each one of the net's classes. None means that no sample
        belongs to any of the net's classes (new-class shift): every
        prediction is then a failure.
    attack : ResistanceAttack or None, default=None
        The attack's settings; None means ``ResistanceAttack()``. Its
        ``preprocessing`` applies to the competitors too, so every distance is
        in the units of ``X``.
    ranks : int, default=1
        The attack runs away from each of the net's ``ranks`` top classes: 1
        for detection and correction, 3 for top-5 lists (see
        :meth:`~resistclf.ResistanceClassifier.predict_topk`).
    competitors : sequence of str, default=DEFAULT_COMPETITORS
        Names from :data:`COMPETITORS`.
    net_output : {"auto", "logits", "proba"}, default="auto"
        What the net's module returns (see
        :class:`~resistclf.ResistanceClassifier`).
    store : ResultStore, str, path-like or None, default=None
        Where per-sample results are kept, keyed by the net, the settings and
        each sample's bytes; a path means ``ResultStore(path)``. None keeps
        nothing.
    batch_size : int, default=256
        Samples per forward pass for the logits and the competitors.
    verbose : bool, default=False
        Announce each step on standard error, and show the attack's progress.

    Returns
    -------
    measurements : Measurements
    """
    attack = ResistanceAttack() if attack is None else attack
    if not isinstance(attack, ResistanceAttack):
        raise TypeError(f"attack must be a ResistanceAttack or None; got "
                        f"{type(attack).__name__}.")
    if not isinstance(ranks, Integral) or isinstance(ranks, bool) or ranks < 1:
        raise ValueError(f"ranks must be a positive integer; got {ranks!r}.")
    unknown = [name for name in competitors if name not in COMPETITORS]
    if isinstance(competitors, str) or unknown:
        raise ValueError(f"competitors must be names from {list(COMPETITORS)}; got "
                         f"{competitors!r}.")
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    check_net(net)
    X = _as_array(X)
    store = store if isinstance(store, ResultStore) else ResultStore(store)
    module = attack.preprocessed(logit_module(net, net_output), X.shape[1:])
    # The study shows one progress bar (below): the attack shows none of its own. ``module``
    # applies the preprocessing already: the attack on it must not apply it again.
    on_module = ResistanceAttack(**{**attack.get_params(), "preprocessing": None,
                                    "verbose": False})
    attack = ResistanceAttack(**{**attack.get_params(), "verbose": verbose})
    device = resolve_device(attack.device, module)
    # One sample first: the data's shape, the device and the labels are checked before any
    # heavy work.
    classes = net_classes(net, _logits(module, np.asarray(X[:1], np.float32), 1, device).shape[1])
    y_idx = label_indices(y, classes, len(X))
    digests = store.digests(X)  # read X once for every table below
    columns = store.rows("logits", (module, batch_size), X,
                         lambda rows: {"logits": _logits(module, rows[:], batch_size, device)},
                         digests=digests)
    logits = columns["logits"].astype(np.float64)
    forward_, backward_ = {"softmax": np.ones(len(X))}, {"softmax": np.zeros(len(X))}
    seconds = {"softmax": columns["seconds"]}
    passes = {**{resistance_key(rank): attack.max_iter + 1 for rank in range(ranks)},
              **{name: _competitor_passes(name, len(classes)) for name in competitors}}
    progress = _Progress(len(X), passes, verbose)

    attacks = []
    for rank in range(ranks):
        key = resistance_key(rank)
        columns = progress.rows(key, store, f"resistance-rank{rank}",
                                (module, settings_key(attack), rank), X,
                                lambda rows, rank=rank: _attack_columns(on_module, module, rows,
                                                                        rank),
                                chunk_size=_attack_chunk_size(attack), digests=digests)
        attacks.append(AttackResult(**{name: columns[name] for name in _ATTACK_FIELDS}))
        steps = np.full(len(X), attack.max_iter, dtype=float)
        forward_[key], backward_[key], seconds[key] = steps + 1, steps, columns["seconds"]

    distances, landing = {}, {}
    for name in competitors:
        function, params = COMPETITORS[name]
        columns = progress.rows(
            name, store, f"competitor-{name}",
            (module, function, params, attack.clip, batch_size), X,
            lambda rows, function=function, params=params: _competitor_columns(
                function, params, module, rows[:], attack, batch_size, len(classes)),
            digests=digests)
        distances[name] = columns["distance"]
        if "adversarial_class" in columns:
            landing[name] = columns["adversarial_class"]
        forward_[name], backward_[name] = columns["forward"], columns["backward"]
        seconds[name] = columns["seconds"]
    progress.close()
    return Measurements(classes=classes, y=y_idx, logits=logits, attacks=tuple(attacks),
                        distances=distances, landing=landing, forward=forward_,
                        backward=backward_, seconds=seconds, attack=attack)


def _competitor_passes(name, n_classes):
    """About how many forward and backward passes a competitor takes per image: its step
    budget (the input-space margin: one forward pass and a backward pass per other class;
    DeepFool mostly stops within a few of its 50 steps)."""
    function, params = COMPETITORS[name]
    if function == "input_margin":
        return n_classes
    if function == "deepfool":
        return 10
    return params.get("steps", 100)


class _Progress:
    """One progress bar for all of :func:`measure`'s work, weighted by the passes through
    the net each image takes; rows found in the store leave the bar's total."""

    def __init__(self, n_samples, passes, verbose):
        self.n_samples, self.passes = n_samples, passes
        self.bar = tqdm(total=n_samples * sum(passes.values()), disable=not verbose,
                        desc=f"measure {n_samples} samples, logits: ",  # as set_description
                        file=sys.stderr, unit="pass", unit_scale=True, dynamic_ncols=True,
                        bar_format="{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def rows(self, key, store, name, settings, X, compute, **kwargs):
        """``store.rows(name, settings, X, compute)``, counted on the bar."""
        self.bar.set_description(f"measure {self.n_samples} samples, {key}")
        computed = 0

        def counted(rows):
            nonlocal computed
            values = compute(rows)
            computed += len(rows)
            self.bar.update(self.passes[key] * len(rows))
            return values

        columns = store.rows(name, settings, X, counted, **kwargs)
        self.bar.total -= self.passes[key] * (self.n_samples - computed)
        self.bar.refresh()
        return columns

    def close(self):
        if self.bar.total == 0:  # every row was in the store
            self.bar.set_description(f"measure {self.n_samples} samples, all from the store")
            self.bar.total = self.bar.n = 1
        self.bar.close()


def _attack_chunk_size(attack):
    """Images attacked between two writes of the store: a batch per worker, or eight with
    early exit, whose refilled slots need many images to keep busy (an image's result does
    not depend on the images attacked with it, so the chunks change no number)."""
    batch_size = attack.batch_size if isinstance(attack.batch_size, Integral) else 256
    return batch_size * effective_n_jobs(attack.n_jobs) * (1 if attack.early_exit is None else 8)


def _as_array(X):
    X = as_rows(X)
    if np.dtype(X.dtype).kind != "f":
        raise ValueError(f"X must hold floats in the units the attack expects; got an array "
                         f"of dtype {X.dtype}. Scale integer images (0-255) to floats first.")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"X must hold at least one sample and have shape (n_samples, ...); "
                         f"got shape {X.shape}.")
    return X


def label_indices(y, classes, n_samples=None):
    """Each label's index in the net's ``classes``, as :class:`Measurements` holds them.

    Parameters
    ----------
    y : array-like of shape (n_samples,) or None
        Labels, each one of ``classes``. None means that no sample belongs to
        any of them (new-class shift).
    classes : ndarray of shape (n_classes,)
    n_samples : int or None, default=None
        The number of samples ``y`` must label; None takes ``len(y)``.

    Returns
    -------
    indices : ndarray of shape (n_samples,), dtype int64
        -1 for every sample where ``y`` is None.

    Raises
    ------
    ValueError
        If ``y`` is not one label per sample, or holds labels outside ``classes``.
    """
    n = len(y) if n_samples is None and y is not None else n_samples
    if y is None:
        return np.full(n, -1, dtype=np.int64)
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have one label per sample, shape ({n},); got shape {y.shape}.")
    index = {label: i for i, label in enumerate(classes.tolist())}
    unknown = sorted({label for label in np.unique(y).tolist() if label not in index}, key=str)
    if unknown:
        raise ValueError(f"y holds labels outside the net's classes: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}. The net's classes are "
                         f"{classes.tolist()[:20]}{' ...' if len(classes) > 20 else ''}; "
                         "give y=None for samples of none of them (new-class shift).")
    return np.array([index[label] for label in y.tolist()], dtype=np.int64)


def _logits(module, X, batch_size, device):
    """The module's logits for ``X`` (float32 rows), as float32, in batches, on ``device``."""
    dtype = module_dtype(module)
    with on_device(module, device), eval_mode(module), torch.no_grad():
        logits = torch.cat([forward(module, torch.from_numpy(X[i : i + batch_size]).to(
            device, dtype)).float().cpu() for i in range(0, len(X), batch_size)]).numpy()
    if not np.isfinite(logits).all():
        raise ValueError("The net returned NaN or infinite logits; scores computed from them "
                         "would be meaningless.")
    return logits


def _attack_columns(attack, module, rows, rank):
    result = attack(module, rows, rank=rank)
    return {name: getattr(result, name) for name in _ATTACK_FIELDS}


def _competitor_columns(function, params, module, X, attack, batch_size, n_classes):
    """A competitor's distance, landing class and passes for the float32 rows ``X``."""
    device = attack.device
    X = torch.from_numpy(X)
    if function == "input_margin":
        distance = input_margin(module, X, batch_size=batch_size, device=device)
        return {"distance": distance, "forward": np.ones(len(X)),
                "backward": np.full(len(X), n_classes - 1.0)}
    if function == "deepfool":
        result = deepfool(module, X, clip=attack.clip, batch_size=batch_size, device=device,
                          **params)
    else:
        result = minimum_norm(module, X, bounds=attack.clip, batch_size=batch_size,
                              device=device, **params)
    return {"distance": result.distance, "adversarial_class": result.adversarial_class,
            "forward": np.asarray(result.forward_passes, dtype=float),
            "backward": np.asarray(result.backward_passes, dtype=float)}


# ------------------------------------------------------------------------ analysis

@dataclass
class StudyResult:
    """What :func:`analyse` finds: every claim beside its baseline, with intervals.

    Attributes
    ----------
    measurements : Measurements
        What the analysis was computed from.
    scores : dict of str to ndarray
        Every error score, learned detectors' out-of-fold scores included.
    groups : dict of str to list of str
        The scores by family, in the order the detection table shows them.
    results : dict
        Every figure of the analysis, as JSON holds it (see :meth:`to_dict`).
    fold : ndarray of shape (n_samples,)
        The fold each sample's learned scores were predicted in (-1 where no
        detector was learned).
    sources : ndarray of shape (n_samples,) or None
        The source of each sample, where samples share one (``groups`` of
        :func:`analyse`).
    """

    measurements: Measurements
    scores: dict
    groups: dict
    results: dict
    fold: np.ndarray = None
    sources: np.ndarray = None

    def to_dict(self):
        """The analysis as JSON-able values.

        Returns
        -------
        results : dict
            ``n_samples``, ``accuracy``, ``errors``, ``flip_rate``, ``separation``, ``detection``
            (per score and metric, ``value`` and ``ci``), ``complementarity``,
            ``correction``, ``competitors`` (agreement and rank correlation with
            resistance), ``topk_error``, ``detect_then_correct`` and ``cost``.
            An entry is None where the data cannot give it (no errors, or too
            few ranks attacked).
        """
        return self.results

    def per_image(self):
        """What a reader needs to recompute every metric: one array per sample and score.

        Returns
        -------
        arrays : dict of str to ndarray
            ``y`` (class index, -1 for none), ``prediction``, ``is_error``,
            ``fold`` (of the learned detectors, -1 where none was learned),
            ``source`` (the sample's source id; its position where none was
            given) and ``score.<name>`` for every error score, learned
            detectors' out-of-fold scores included (higher means more likely
            an error).
        """
        m = self.measurements
        return {"y": m.y, "prediction": m.prediction, "is_error": m.is_error,
                "fold": np.full(len(m), -1) if self.fold is None else self.fold,
                "source": np.arange(len(m)) if self.sources is None else self.sources,
                **{f"score.{name}": np.asarray(score, dtype=np.float64)
                   for name, score in self.scores.items()}}

    def to_markdown(self, level=2):
        """The report's sections on the network, detection, correction and top-k.

        Parameters
        ----------
        level : int, default=2
            Heading level of the sections.

        Returns
        -------
        markdown : str
        """
        return _markdown(self.results, self.groups, "#" * level)

    def shown_scores(self):
        """The scores the ROC and risk-coverage figures draw: of each family, the one with the
        highest AUROC, and every learned detector (the tables hold them all).

        Returns
        -------
        names : list of str
            Empty where no detection metric was computed.
        """
        detection = self.results["detection"] or {}
        shown = []
        for family, names in self.groups.items():
            present = [name for name in names if name in detection]
            if family.startswith("learned"):
                shown += present
            elif present:
                shown.append(max(present, key=lambda name: detection[name]["auroc"]["value"]))
        return shown

    def figures(self, X=None, class_names=None):
        """The report's figures.

        Parameters
        ----------
        X : array-like of shape (n_samples, ..., H, W) or None, default=None
            The images measured (only the misclassified ones are read); with
            them, a grid of misclassified images.
        class_names : sequence of str or None, default=None
            The name of each class, indexed by the class labels; None shows the
            labels themselves.

        Returns
        -------
        figures : dict of str to matplotlib Figure
            ``risk_coverage`` and ``roc`` (the scores of :meth:`shown_scores`) and
            ``histograms`` where the samples hold errors and correct predictions, and
            ``errors`` with ``X``.
        """
        from .plotting import RiskCoverageDisplay, distinct_line_styles, legend_outside, \
            plot_histograms, plot_image_grid, plot_roc_curves

        m, figures = self.measurements, {}
        is_error = m.is_error
        shown = self.shown_scores()
        if 0 < is_error.sum() < len(m):
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(10, 5))
            distinct_line_styles(ax, len(shown))
            for name in shown:
                RiskCoverageDisplay.from_predictions(is_error, self.scores[name], name=name,
                                                     ax=ax)
            ax.set_title("Risk against coverage: the best score of each family, and the "
                         "learned detectors", fontsize=10)
            legend_outside(ax)
            fig.tight_layout()
            figures["risk_coverage"] = fig
            # scikit-learn's ROC curve needs finite scores; moving infinities past the finite
            # values changes no rank, so no point of the curve.
            figures["roc"] = plot_roc_curves(is_error, {name: _finite(self.scores[name])
                                                         for name in shown})
            result = m.attacks[0]
            # Heavy tails (images that never flip reach |r| = 70; 1 - max-softmax spans ten
            # decades), so every panel has a log axis.
            figures["histograms"] = plot_histograms(
                [result.res_n, result.res_max, result.res_min.astype(float), result.res_mean,
                 self.scores["max-softmax"]], is_error, HISTOGRAMS, log_panels=HISTOGRAMS)
        if X is not None and is_error.any():
            all_errors = np.flatnonzero(is_error)
            errors = all_errors[:ERRORS_SHOWN]
            second = np.argsort(-m.logits, axis=1, kind="stable")[:, 1]

            def name(label):
                return label if class_names is None else class_names[label]

            def true(i):
                return "none" if m.y[i] < 0 else name(m.classes[m.y[i]])

            figures["errors"] = plot_image_grid(
                np.asarray(X[errors]),
                [f"true {true(i)}\npred {name(m.classes[m.prediction[i]])}\nadv "
                 f"{name(m.classes[m.attacks[0].adversarial_class[i]])}\n2nd "
                 f"{name(m.classes[second[i]])}" for i in errors])
            shown_count = ("every one" if len(errors) == len(all_errors)
                           else f"the first {len(errors)}")
            figures["errors"].suptitle(
                f"The net's errors: {shown_count} of {len(all_errors)} (true label, "
                "prediction, the attack's class, the softmax second choice)", fontsize=10)
            figures["errors"].tight_layout()
        return figures


def _one_blas_thread(function):
    """``function`` with BLAS on one thread: the learned detectors' small fits spend far
    longer waking BLAS threads than computing (an analysis took twice as long on 2 cores)."""
    @functools.wraps(function)
    def one_thread(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)
    return one_thread


@_one_blas_thread
def analyse(measurements, *, groups=None, train=None, folds=5, n_resamples=1000,
            random_state=0):
    """Every claim of the write-up on ``measurements``, beside its baseline.

    Parameters
    ----------
    measurements : Measurements
    groups : array-like of shape (n_samples,) or None, default=None
        The source each sample was made from, where samples share one (an
        image and its corrupted copies): the bootstrap resamples whole sources
        (a cluster bootstrap) and the folds keep each source's samples
        together. None means every sample was drawn on its own.
    train : array-like of bool, shape (n_samples,) or None, default=None
        The samples the learned detectors and detect-then-correct may learn
        from; every sample is still scored out of fold. FD-Shifts' protocol
        under distribution shift passes the i.i.d. samples here, so that no
        detector sees the shift it is tested on. None means all.
    folds : int, default=5
        Folds of the out-of-fold learned detectors and of detect-then-correct
        (fewer where there are fewer errors).
    n_resamples : int, default=1000
        Bootstrap resamples (of the samples, or of the sources), for the 95%
        intervals.
    random_state : int, default=0
        Seeds the folds and the bootstrap.

    Returns
    -------
    result : StudyResult
    """
    m = measurements
    if not isinstance(m, Measurements):
        raise TypeError(f"measurements must be Measurements (from measure); got "
                        f"{type(m).__name__}.")
    for name, value in (("folds", folds), ("n_resamples", n_resamples)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < (
                2 if name == "folds" else 1):
            raise ValueError(f"{name} must be an integer >= {2 if name == 'folds' else 1}; "
                             f"got {value!r}.")
    groups = _per_sample("groups", groups, len(m))
    train = _per_sample("train", train, len(m), dtype=bool)
    seed = random_state
    is_error = m.is_error
    result = m.attacks[0]
    boot = {"groups": groups, "n_resamples": n_resamples, "random_state": seed}
    rate = lambda mask, rows=slice(None): proportion(  # noqa: E731
        mask, groups=None if groups is None else groups[rows], n_resamples=n_resamples,
        random_state=seed)
    scores = m.error_scores()
    families = {
        "resistance (this library)": [*RESISTANCE.values(), "LR(resistance)"],
        "softmax-derived, from one forward pass": list(SOFTMAX_SCORES),
        "attack-based competitors": [distance_name(name) for name in m.distances],
    }
    learns = is_error if train is None else is_error[train]
    n_errors = int(learns.sum())
    detectable = min(n_errors, len(learns) - n_errors) >= 2
    results = {
        "n_samples": len(m),
        "n_sources": len(m) if groups is None else int(len(np.unique(groups))),
        "accuracy": rate(~is_error),
        "errors": rate(is_error),
        "flip_rate": {"correct": rate(result.flipped[~is_error], ~is_error),
                      "incorrect": rate(result.flipped[is_error], is_error)},
        "separation": _separation(m.logits, result, is_error),
        "detection": None, "complementarity": None, "tests": None,
        "correction": _correction(m, rate),
        "competitors": _competitor_agreement(m),
        "topk_error": _topk(m, rate),
        "detect_then_correct": None,
        "cost": _cost(m),
        "folds": folds, "n_resamples": n_resamples, "seed": seed,
        "grouped": groups is not None,
        "trained_on": "all samples" if train is None else f"{int(train.sum())} samples",
    }
    fold = np.full(len(m), -1)
    if 0 < is_error.sum() < len(m):
        if detectable:
            fold = _fold_ids(is_error, groups, train,
                             min(folds, n_errors, len(learns) - n_errors), seed)
            learned = _learned_scores(is_error, scores, list(m.distances), fold, train)
            scores = {**{name: scores[name]
                         for name in families["resistance (this library)"][:-1]},
                      "LR(resistance)": learned.pop("LR(resistance)"),
                      **{name: score for name, score in scores.items()
                         if name not in RESISTANCE.values()}, **learned}
            families[f"learned combinations ({fold.max() + 1}-fold out-of-fold)"] = \
                list(learned)
        results["detection"] = score_metrics(is_error, scores, **boot)
        if detectable:
            results["complementarity"] = _complementarity(is_error, scores, boot)
            results["detect_then_correct"] = _detect_then_correct(m, folds, rate, boot,
                                                                  groups, train)
            results["tests"] = _tests(m, results, scores, boot)
    return StudyResult(measurements=m, scores=scores, groups=families, results=results,
                       fold=fold, sources=groups)


def _per_sample(name, values, n, dtype=None):
    """``values`` as an array of one entry per sample, or None."""
    if values is None:
        return None
    values = np.asarray(values, dtype=dtype)
    if values.shape != (n,):
        raise ValueError(f"{name} must hold one value per sample, shape ({n},); got shape "
                         f"{values.shape}.")
    return values


def _splits(y, groups, n_splits, seed):
    """Stratified folds of the rows, keeping each group in one fold where groups are given."""
    with warnings.catch_warnings():  # classes with fewer members than folds
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        if groups is None:
            return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed)
                        .split(np.zeros(len(y)), y))
        n_splits = min(n_splits, len(np.unique(groups)))
        return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
                    .split(np.zeros(len(y)), y, groups))


def _fold_ids(is_error, groups, train, n_splits, seed):
    """The out-of-fold detectors' fold of each sample, stratified by error, by source.

    Without groups or a training mask these are the folds of ``StratifiedKFold``, as before
    either existed; every fold then holds errors and correct predictions to learn from.
    """
    fold = np.empty(len(is_error), dtype=np.int64)
    if groups is None and train is not None:
        groups = np.arange(len(is_error))
    for k, (_, held) in enumerate(_splits(is_error, groups, n_splits, seed)):
        fold[held] = k
    return fold


def _learned_scores(is_error, scores, competitors, fold, train=None):
    """Out-of-fold error scores of learned detectors, all on the same folds.

    Each fold's detectors learn from the other folds' samples that ``train`` allows (all
    of them where it is None) and score the fold's samples. Every one is
    :func:`~resistclf.make_detector`: each input is mapped to normal scores by its
    quantiles, so that no monotone transform of an input (log(1 - p) or p itself) changes
    what the logistic regression sees, and a combination does not lose to its best input.
    (Gradient-boosted trees, the other learner with that property, scored 0.02 to 0.10
    AUROC below max-softmax alone on a random 1,000 of the MNIST and FashionMNIST test
    images, with 19 and 94 errors, whatever leaf size we tried.)
    """
    learns = np.ones(len(is_error), dtype=bool) if train is None else train

    def out_of_fold(*names):
        features = np.column_stack([_finite(scores[name]) for name in names])
        predicted = np.empty(len(is_error))
        for k in range(fold.max() + 1):
            fit_rows = learns & (fold != k)
            with warnings.catch_warnings():  # fewer training samples than quantiles
                warnings.filterwarnings("ignore", "n_quantiles .* is greater than the total",
                                        UserWarning)
                detector = clone(make_detector()).fit(features[fit_rows], is_error[fit_rows])
            predicted[fold == k] = detector.predict_proba(features[fold == k])[:, 1]
        return predicted

    resistance = list(RESISTANCE.values())
    softmax = list(SOFTMAX_SCORES)
    distances = [distance_name(name) for name in competitors]
    return {
        "LR(resistance)": out_of_fold("Res_N", "Res_max", "Res_min"),
        "LR(resistance + max-softmax)": out_of_fold("Res_N", "Res_max", "Res_min",
                                                    "max-softmax"),
        "LR(softmax)": out_of_fold(*softmax),
        "LR(softmax + resistance)": out_of_fold(*softmax, *resistance),
        "LR(softmax + distances)": out_of_fold(*softmax, *distances),
        "LR(softmax + distances + resistance)": out_of_fold(*softmax, *distances,
                                                            *resistance),
    }
def run_study(net, X, y=None, *, attack=None, ranks=1, competitors=DEFAULT_COMPETITORS,
              net_output="auto", store=None, batch_size=256, folds=5, n_resamples=1000,
              random_state=0, verbose=False):
    """:func:`measure`, then :func:`analyse`: the whole study of one net on one data set.

    Parameters are those of :func:`measure` and :func:`analyse`.

    Returns
    -------
    result : StudyResult

    Examples
    --------
    >>> import numpy as np, torch
    >>> from resistclf import ResistanceAttack
    >>> from resistclf.study import run_study
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X = np.random.RandomState(0).rand(40, 4).astype(np.float32)
    >>> wrong = np.arange(40) % 7 == 0  # six labels the net gets wrong
    >>> y = (net(torch.from_numpy(X)).argmax(1).numpy() + wrong) % 3
    >>> study = run_study(net, X, y, attack=ResistanceAttack(max_iter=30),
    ...                   competitors=("input-space margin",), n_resamples=20)
    >>> study.to_dict()["errors"]["count"]
    6
    """
    measured = measure(net, X, y, attack=attack, ranks=ranks, competitors=competitors,
                       net_output=net_output, store=store, batch_size=batch_size,
                       verbose=verbose)
    return analyse(measured, folds=folds, n_resamples=n_resamples, random_state=random_state)


def proportion(mask, *, groups=None, n_resamples=1000, random_state=0):
    """The fraction of True in ``mask``, with its count and a bootstrap 95% interval.

    Parameters
    ----------
    mask : array-like of bool, shape (n_samples,)
    groups : array-like of shape (n_samples,) or None, default=None
        Sources of the samples, resampled together (a cluster bootstrap).
    n_resamples : int, default=1000
    random_state : int, default=0

    Returns
    -------
    rate : dict
        ``value`` and ``ci`` (None for an empty mask), ``count`` and ``of``.
    """
    seed = random_state
    mask = np.asarray(mask, dtype=bool)
    if not len(mask):
        return {"value": None, "ci": None, "count": 0, "of": 0}
    return {"value": float(np.mean(mask)),
            "ci": bootstrap_interval(Mean(), mask, groups=groups, n_resamples=n_resamples,
                                     random_state=seed),
            "count": int(mask.sum()), "of": int(len(mask))}


def _separation(logits, result, is_error):
    """The write-up's form: q10 of each feature among correct, q90 among errors."""
    values = {"Res_N": result.res_n, "Res_max": result.res_max,
              "Res_min": result.res_min.astype(float), "Res_mean": result.res_mean,
              "max-softmax": softmax(logits, axis=1).max(axis=1)}
    return {name: {"q10_correct": float(np.quantile(v[~is_error], 0.1))
                   if (~is_error).any() else None,
                   "q90_incorrect": float(np.quantile(v[is_error], 0.9))
                   if is_error.any() else None}
            for name, v in values.items()}


def _finite(score):
    """``score`` with infinities moved just past its finite values, keeping every rank.

    A competitor that finds no adversarial without a box reports an infinite distance;
    the ranking metrics take it as it is, a learner needs finite numbers.
    """
    finite = score[np.isfinite(score)]
    low, high = (finite.min() - 1, finite.max() + 1) if len(finite) else (-1.0, 1.0)
    return np.where(score == np.inf, high, np.where(score == -np.inf, low, score))


def score_metrics(is_positive, scores, *, metrics=None, groups=None, n_resamples=1000,
                  random_state=0):
    """Every metric of every score, each with its bootstrap 95% interval.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
        The net's errors, or whatever a detector should flag.
    scores : dict of str to ndarray of shape (n_samples,)
        Higher means more likely positive.
    metrics : sequence of str, dict of str to callable, or None, default=None
        Keys of :func:`~resistclf.metrics.detection_metrics`, whose bootstrap
        computes every resample at once; or ``metric(is_positive, score)`` to a
        float, by name. None means the keys of :data:`METRICS`.
    groups : array-like of shape (n_samples,) or None, default=None
        Sources of the samples, resampled together (a cluster bootstrap).
    n_resamples : int, default=1000
    random_state : int, default=0

    Returns
    -------
    results : dict
        ``results[score][metric] = {"value": ..., "ci": (low, high)}``.
    """
    def all_metrics(e, score):
        return {key: metric(e, score) for key, metric in metrics.items()}

    if isinstance(metrics, dict):
        statistic, keys = all_metrics, list(metrics)
    else:
        keys = list(METRICS if metrics is None else metrics)
        statistic = DetectionMetric(tuple(keys))
    results = {}
    for name, score in scores.items():
        values = statistic(is_positive, score)
        intervals = bootstrap_interval(statistic, is_positive, score, groups=groups,
                                       n_resamples=n_resamples, random_state=random_state)
        results[name] = {key: {"value": values[key], "ci": intervals[key]} for key in keys}
    return results


def _complementarity(is_error, scores, boot):
    """Paired bootstrap differences in AUROC and AURC of each pair of ``COMPLEMENTS``."""
    results = {}
    for name, (with_, without) in COMPLEMENTS.items():
        tested = paired_difference(MetricDifference(("auroc", "aurc")), is_error,
                                   scores[with_], scores[without], **boot)
        row = {"with": with_, "without": without}
        for key, test in tested.items():
            row[key] = {**test, "verdict": _verdict(test["ci"], higher_is_better=key == "auroc",
                                                    words=("adds", "loses"))}
        results[name] = row
    return results


def _verdict(ci, *, higher_is_better=True, words=("better", "worse")):
    """The word for a difference whose 95% interval is ``ci``: a difference test found one,
    or it did not (which is not evidence of none: see the equivalence test)."""
    low, high = ci
    if np.isnan(low):
        return "n/a"
    if low > 0 or high < 0:
        return words[0] if (low > 0) == higher_is_better else words[1]
    return "no difference found"


def _tests(m, r, scores, boot):
    """The primary test, fixed before any data is seen, and the secondary ones, Holm-adjusted.

    Primary: does resistance add to the softmax in detecting the net's errors (Δ AUROC of
    the same learned detector with and without the resistance features, paired), with two
    one-sided tests of equivalence within :data:`EQUIVALENCE_MARGIN`. Secondary: the other
    complementarity questions, the best resistance score against the best softmax-derived
    score, the correction claim against the softmax second choice, top-2, and
    detect-then-correct's change in top-1 accuracy.
    """
    is_error = m.is_error
    with_, without = COMPLEMENTS[PRIMARY]
    primary = {"question": PRIMARY_QUESTION, "with": with_, "without": without,
               "metric": "auroc", **r["complementarity"][PRIMARY]["auroc"]}
    primary["equivalence"] = equivalence_test(
        MetricDifference("auroc"), is_error, scores[with_], scores[without],
        margin=EQUIVALENCE_MARGIN["auroc"], **boot)

    secondary = {}
    for name, row in r["complementarity"].items():
        for key in ("auroc", "aurc"):
            if (name, key) != (PRIMARY, "auroc"):
                secondary[f"{name}: Δ {METRICS[key]}"] = {
                    "with": row["with"], "without": row["without"], "metric": key, **row[key]}
    detection = r["detection"]
    best = {family: max(names, key=lambda name: detection[name]["auroc"]["value"])
            for family, names in (("resistance", [*RESISTANCE.values(), "LR(resistance)"]),
                                  ("softmax", list(SOFTMAX_SCORES)))}
    secondary["best resistance score against the best softmax score: Δ AUROC"] = {
        "with": best["resistance"], "without": best["softmax"], "metric": "auroc",
        "selected": "each the highest AUROC of its family on these samples (exploratory)",
        **paired_difference(MetricDifference("auroc"), is_error, scores[best["resistance"]],
                            scores[best["softmax"]], **boot)}
    secondary.update(_paired_rate_tests(m, r, boot))
    holm_family(secondary, favours_a=lambda test: test["metric"] not in ("aurc", "error"))
    return {"primary": primary, "secondary": secondary}


def _paired_rate_tests(m, r, boot):
    """Paired tests of the correction claim, top-2 and detect-then-correct, where measured.

    A paired bootstrap of the difference in rates (by source, where samples share one), and
    the exact McNemar test on the same pairs where every sample is its own source.
    """
    groups = boot["groups"]
    result = m.attacks[0]
    tests = {}

    def add(name, a_right, b_right, rows, metric, with_, without):
        if not len(rows):
            return
        test = paired_difference(MeanDifference(), a_right, b_right,
                                 **{**boot, "groups": None if groups is None else groups[rows]})
        if groups is None:
            test["mcnemar"] = mcnemar_test(a_right, b_right)
        tests[name] = {"with": with_, "without": without, "metric": metric, **test}

    errors = np.flatnonzero(m.is_error & (m.y >= 0))
    second = np.argsort(-m.logits, axis=1, kind="stable")[:, 1]
    add("correction: adversarial class against the softmax second choice, among errors",
        result.adversarial_class[errors] == m.y[errors], second[errors] == m.y[errors], errors,
        "rate", "adversarial class", "softmax second choice")
    known = np.flatnonzero(m.y >= 0)
    if r["topk_error"] and "top2_softmax" in r["topk_error"]:
        truth = m.y[known, None]
        ranking = np.argsort(-m.logits, axis=1, kind="stable")
        add("top-2 accuracy: predict_topk against softmax top-2",
            (m.topk_labels(2)[known] == truth).any(axis=1),
            (ranking[known, :2] == truth).any(axis=1), known, "rate", "predict_topk",
            "softmax top-2")
    dtc = r["detect_then_correct"]
    if dtc is not None:
        corrected = np.asarray(dtc.pop("_corrected"))
        add("detect-then-correct: top-1 accuracy against the net's", corrected == m.y[known],
            m.prediction[known] == m.y[known], known, "rate", "ResistanceClassifier", "net")
    return tests


def _correction(m, rate):
    """Among errors with a true class: how often each method lands on it."""
    result = m.attacks[0]
    errors = np.flatnonzero(m.is_error & (m.y >= 0))
    second = np.argsort(-m.logits, axis=1, kind="stable")[:, 1]
    truth = m.y[errors]
    flipped = np.flatnonzero(result.flipped)
    correction = {
        "adversarial_class_is_true": rate(result.adversarial_class[errors] == truth, errors),
        "second_choice_is_true": rate(second[errors] == truth, errors),
        **{f"{name}_class_is_true": rate(landing[errors] == truth, errors)
           for name, landing in m.landing.items()},
        "adversarial_is_second_choice_errors": rate(
            result.adversarial_class[errors] == second[errors], errors),
        "adversarial_is_second_choice_all_flipped": rate(
            result.adversarial_class[flipped] == second[flipped], flipped),
    }
    return correction


def _competitor_agreement(m):
    """Per competitor: Spearman correlation of each resistance feature with its distance,
    and how often its landing class agrees with the resistance attack's adversarial class."""
    result = m.attacks[0]
    agreement = {}
    for name, distance in m.distances.items():
        row = {"spearman": {}}
        for feature, label in RESISTANCE.items():
            rho = spearmanr(getattr(result, feature), distance).statistic \
                if len(m) > 2 else np.nan
            row["spearman"][label] = None if np.isnan(rho) else float(rho)
        if name in m.landing:
            both = result.flipped
            row["same_class_as_resistance"] = {
                "count": int((m.landing[name][both] == result.adversarial_class[both]).sum()),
                "of": int(both.sum())}
        agreement[name] = row
    return agreement


def _topk(m, rate):
    """Top-2 and top-5 error of the resistance lists and of softmax top-k, where measured."""
    known = np.flatnonzero(m.y >= 0)
    if not len(known):
        return None
    ranking = np.argsort(-m.logits, axis=1, kind="stable")
    results = {}
    for k, ranks_needed in ((2, 1), (5, 3)):
        if len(m.classes) < k or len(m.attacks) < min(ranks_needed, len(m.classes) - 1):
            continue
        truth = m.y[known, None]
        results[f"top{k}_predict_topk"] = rate(~(m.topk_labels(k)[known] == truth).any(axis=1),
                                               known)
        results[f"top{k}_softmax"] = rate(~(ranking[known, :k] == truth).any(axis=1), known)
    return results or None


def _detect_then_correct(m, folds, rate, boot, groups, train):
    """Detect-then-correct's top-1 accuracy beside the net's, over the samples of a class.

    The corrected predictions ride along under ``_corrected`` for the paired tests, which
    take them out.
    """
    known = np.flatnonzero(m.y >= 0)
    try:
        corrected = m.corrected_predictions(folds=folds, random_state=boot["random_state"],
                                            groups=groups, train=train)[known]
    except ValueError:  # no class with two samples
        return None
    y, prediction = m.y[known], m.prediction[known]
    difference = paired_difference(lambda c, p, t: np.mean(c == t) - np.mean(p == t),
                                   corrected, prediction, y,
                                   **{**boot, "groups": None if groups is None else groups[known]})
    return {
        "accuracy_net": rate(prediction == y, known),
        "accuracy_resistance_classifier": rate(corrected == y, known),
        "difference": {**difference, "verdict": _verdict(difference["ci"],
                                                         words=("gains", "loses"))},
        "changed": int(np.sum(corrected != prediction)),
        "changed_to_true": int(np.sum((corrected != prediction) & (corrected == y))),
        "changed_from_true": int(np.sum((corrected != prediction) & (prediction == y))),
        "_corrected": corrected,
    }


def _cost(m):
    """Per score: passes and seconds per image of the method that computes it."""
    cost = m.cost()
    per_score = {name: cost["softmax"] for name in SOFTMAX_SCORES}
    resistance = {**cost["resistance"], "at_most": m.attack.early_exit is not None}
    per_score.update({name: resistance for name in [*RESISTANCE.values(), "LR(resistance)"]})
    per_score.update({distance_name(name): cost[name] for name in m.distances})
    return per_score


# ------------------------------------------------------------------------ Markdown

def markdown_table(header, rows):
    """A Markdown table: a header row, then one row per list of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def with_interval(value, interval, percent=False, digits=3):
    """``value [low, high]``, as a percentage if asked; n/a for a missing value."""
    if value is None or np.isnan(value):
        return "n/a"
    f = (lambda v: f"{100 * v:.{max(digits - 2, 1)}f}%") if percent else (
        lambda v: f"{v:.{digits}f}")
    if interval is None or np.isnan(interval[0]):
        return f(value)
    return f"{f(value)} [{f(interval[0])}, {f(interval[1])}]"


def metric_cell(metrics, key):
    """One metric of one score with its interval, as the tables show it."""
    scale = 1000 if key in PER_MILLE else 1
    value, ci = metrics[key]["value"], metrics[key]["ci"]
    return with_interval(scale * value, (scale * ci[0], scale * ci[1]),
                          digits=1 if key in PER_MILLE else 3)


def percent_cell(rate):
    """A rate with its interval, as a percentage."""
    return with_interval(rate["value"], rate["ci"], percent=True)


def count_cell(rate):
    """A rate's count, as ``count of total``."""
    return f"{rate['count']} of {rate['of']}"


def cost_cell(cost):
    """Passes and milliseconds per image, as the tables show a cost."""
    if cost is None:
        return "n/a"
    bound = "≤ " if cost.get("at_most") else ""
    return (f"{bound}{cost['forward']:.3g} F + {bound}{cost['backward']:.3g} B, "
            f"{1000 * cost['seconds_per_image']:.3g} ms")


def detection_table(detection, groups, cost):
    """The table of every score's metrics, grouped, with each score's cost per image."""
    rows = []
    for group, names in groups.items():
        names = [name for name in names if name in detection]
        if not names:
            continue
        rows.append([f"*{group}*", *[""] * (len(METRICS) + 1)])
        rows += [[name, *(metric_cell(detection[name], key) for key in METRICS),
                  cost_cell(cost.get(name))] for name in names]
    header = ["score", *(f"{label}{' ×1000' if key in PER_MILLE else ''}"
                         for key, label in METRICS.items()), "cost per image"]
    return markdown_table(header, rows)


def complementarity_table(results):
    """The complementarity test's differences, intervals and verdicts (a sentence where
    too few errors or correct predictions left nothing to learn a detector from)."""
    if not results:
        return ("Too few errors or correct predictions among the samples detectors learn from "
                "(fewer than 2) to learn one.")

    def cell(row, key, scale):
        d = row[key]
        low, high = d["ci"]
        digits = 3 if scale == 1 else 2
        return (f"{scale * d['difference']:+.{digits}f} [{scale * low:+.{digits}f}, "
                f"{scale * high:+.{digits}f}]: {d['verdict']}")

    return markdown_table(["question", "detector with", "detector without", "Δ AUROC",
                           "Δ AURC ×1000"],
                          [[name, row["with"], row["without"], cell(row, "auroc", 1),
                            cell(row, "aurc", 1000)] for name, row in results.items()])


def p_cell(p, resamples=None):
    """A bootstrap p-value as the tables show it: ``= 0.012``, or ``< 2/resamples`` where no
    resample fell on the other side of 0 (the smallest p the bootstrap can tell apart)."""
    if p is None or np.isnan(p):
        return "n/a"
    if p == 0:
        return f"< {2 / resamples:.2g}" if resamples else "≈ 0"
    return f"= {p:.2g}"


def verdict_markdown(r, subject="the net's errors"):
    """A report's opening verdict, in at most five lines, from an analysis' results.

    The best resistance score against the best softmax-derived score (by AUROC), the
    primary test with its interval, its word and its equivalence test, and the correction
    claim with its paired test.
    """
    tests = r.get("tests")
    if not tests:
        return "**Verdict:** too few errors or correct predictions to test anything."
    p = tests["primary"]
    eq = p["equivalence"]
    best = tests["secondary"]["best resistance score against the best softmax score: Δ AUROC"]
    det = r["detection"]
    auc = lambda name: f"{det[name]['auroc']['value']:.3f}"  # noqa: E731
    word = {"adds": "**adds**", "loses": "**loses**"}.get(p["verdict"], "adds **nothing shown**")
    equivalent = (f"equivalent to no change within ±{eq['margin']} (TOST, 90% interval "
                  f"[{eq['ci'][0]:+.4f}, {eq['ci'][1]:+.4f}])" if eq["equivalent"] else
                  f"not shown equivalent to no change within ±{eq['margin']} (TOST, 90% "
                  f"interval [{eq['ci'][0]:+.4f}, {eq['ci'][1]:+.4f}])")
    lines = [
        f"**Verdict (primary question: does resistance add to the softmax in detecting "
        f"{subject}?):** resistance {word}: Δ AUROC {p['difference']:+.4f} "
        f"[{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}], p {p_cell(p['p_value'], p['resamples'])}; "
        f"{equivalent}.",
        f"- Best single scores by AUROC: {best['with']} {auc(best['with'])} against "
        f"{best['without']} {auc(best['without'])}; paired Δ {best['difference']:+.4f} "
        f"[{best['ci'][0]:+.4f}, {best['ci'][1]:+.4f}] ({best['verdict']}, Holm-adjusted).",
    ]
    name = "correction: adversarial class against the softmax second choice, among errors"
    if name in tests["secondary"]:
        c, cor = tests["secondary"][name], r["correction"]
        lines.append(
            f"- Correction: the adversarial class is the true label for "
            f"{count_cell(cor['adversarial_class_is_true'])} errors, the softmax second choice "
            f"for {count_cell(cor['second_choice_is_true'])}; paired Δ "
            f"{100 * c['difference']:+.1f} points [{100 * c['ci'][0]:+.1f}, "
            f"{100 * c['ci'][1]:+.1f}] ({c['verdict']}, Holm-adjusted).")
    return "\n".join(lines)


def tests_markdown(tests):
    """The primary test and the secondary tests (Holm-adjusted), as a Markdown table."""
    def diff(test):
        scale = 1000 if test["metric"] == "aurc" else 100 if test["metric"] == "rate" else 1
        digits = 2 if scale == 1000 else 1 if scale == 100 else 4
        unit = " ×1000" if scale == 1000 else " points" if scale == 100 else ""
        low, high = test["ci"]
        return (f"{scale * test['difference']:+.{digits}f} [{scale * low:+.{digits}f}, "
                f"{scale * high:+.{digits}f}]{unit}")

    p = tests["primary"]
    eq = p["equivalence"]
    rows = [[f"**primary**: {p['question']}", f"{p['with']} − {p['without']}", diff(p),
             p_cell(p["p_value"], p["resamples"]), "—",
             f"{p['verdict']}; TOST ±{eq['margin']}: "
             f"{'equivalent' if eq['equivalent'] else 'not shown equivalent'} (90% "
             f"[{eq['ci'][0]:+.4f}, {eq['ci'][1]:+.4f}])"]]
    for name, test in tests["secondary"].items():
        mcnemar = test.get("mcnemar")
        exact = (f"; McNemar exact p = {mcnemar['p_value']:.3g} ({mcnemar['a_only']} vs "
                 f"{mcnemar['b_only']} discordant)" if mcnemar else "")
        rows.append([name, f"{test['with']} − {test['without']}", diff(test),
                     p_cell(test["p_value"], test["resamples"]),
                     p_cell(test["p_holm"], test["resamples"]),
                     test["verdict"] + exact])
    return "\n".join([
        "One primary question, fixed in the code before the run; the secondary comparisons "
        "are Holm-adjusted as one family (a verdict needs Holm p < 0.05). Differences are "
        "paired: both methods on the same resamples of the same images. Equivalence needs "
        "the two one-sided tests (TOST) against the margin declared in the code "
        "(`resistclf.study.EQUIVALENCE_MARGIN`); \"no difference found\" is not equivalence.",
        "",
        markdown_table(["test", "difference of", "Δ [95% interval]", "p", "Holm p", "verdict"],
                       rows)])


def _markdown(r, groups, h):
    """The engine's sections of a report, from ``results``."""
    lines = [
        f"{h} The network", "",
        f"{count_cell(r['errors'])} predictions wrong: error rate {percent_cell(r['errors'])}. "
        f"The resistance attack changed the prediction of "
        f"{percent_cell(r['flip_rate']['correct'])} of the correct predictions and "
        f"{percent_cell(r['flip_rate']['incorrect'])} of the wrong ones.", "",
        f"{h} Detecting the net's errors", "",
    ]
    if r["detection"] is None:
        lines += ["Too few errors or correct predictions (fewer than 2) to score detectors.",
                  ""]
    else:
        best = min(SOFTMAX_SCORES, key=lambda name: r["detection"][name]["aurc"]["value"])
        lines += [
            "Errors are the positive class and every score is oriented so that higher means "
            "more likely an error. AUROC and FPR at 95% TPR rank errors against correct "
            "predictions; AURC, E-AURC and AUGRC (×1000, lower is better) score the selective "
            "classifier that rejects the highest scores first, as FD-Shifts (Jaeger et al., "
            "ICLR 2023) and Traub et al. (2024) do, with tied scores accepted in random order "
            "(the expectation, exactly). Learned detectors are scored on out-of-fold "
            "predictions only, all on the same folds: LR is `make_detector()` (a logistic "
            "regression on each input's normal scores, taken from its quantiles). Cost: "
            "forward (F) and backward (B) passes per image, and the milliseconds per image "
            "measured when it was first computed.", "",
            detection_table(r["detection"], groups, r["cost"]), "",
            f"The best softmax-derived score by AURC is {best}.", "",
            "![Risk against coverage](risk_coverage.png)", "",
            "![ROC curves](roc.png)", "",
            "![Histograms](histograms.png)", "",
            f"{h} Does resistance add anything beyond the softmax?", "",
            "The same learner, out-of-fold on the same folds, with and without the resistance "
            "features (Res_N, Res_max, Res_min, Res_mean). The detector sees each input "
            "through its quantiles, so no monotone transform of an input changes it: a "
            "difference is information, not scaling. Δ is (with) − (without) with its paired "
            "bootstrap 95% interval; resistance *adds* information when the interval "
            "excludes 0 (AUROC up, AURC down). The first row's Δ AUROC is the report's "
            "primary test; every other cell is secondary, judged Holm-adjusted in the "
            "table of tests below.", "",
            complementarity_table(r["complementarity"]), "",
        ]
    cor = r["correction"]
    rows = [["adversarial class = true label", count_cell(cor["adversarial_class_is_true"]),
             percent_cell(cor["adversarial_class_is_true"])],
            ["softmax second choice = true label (baseline)",
             count_cell(cor["second_choice_is_true"]), percent_cell(cor["second_choice_is_true"])]]
    rows += [[f"{name}'s class = true label", count_cell(cor[f"{name}_class_is_true"]),
              percent_cell(cor[f"{name}_class_is_true"])]
             for name in r["competitors"] if f"{name}_class_is_true" in cor]
    rows.append(["adversarial class = softmax second choice",
                 count_cell(cor["adversarial_is_second_choice_errors"]),
                 percent_cell(cor["adversarial_is_second_choice_errors"])])
    lines += [f"{h} Adversarial correction", "", markdown_table(["among the net's errors", "count",
                                                          "rate"], rows), "",
              "Over every image whose prediction flipped, the adversarial class equals the "
              "softmax second choice for "
              f"{percent_cell(cor['adversarial_is_second_choice_all_flipped'])}.", ""]
    lines += [f"{h} Resistance and the minimum-norm competitors", "",
              "Spearman's rank correlation, over every image, between each resistance feature "
              "and each competitor's distance; and, among the images the resistance attack "
              "flipped, how often the competitor lands in the same class.", "",
              markdown_table(["competitor", *(f"ρ with {name}" for name in RESISTANCE.values()),
                      "same class as the resistance attack"],
                     [[name, *("n/a" if rho is None else f"{rho:.3f}"
                               for rho in row["spearman"].values()),
                       count_cell(row["same_class_as_resistance"])
                       if "same_class_as_resistance" in row else "no class"]
                      for name, row in r["competitors"].items()]), ""]
    if r["topk_error"]:
        topk = r["topk_error"]
        lines += [f"{h} Top-k", "",
                  markdown_table(["", "resistance (`predict_topk`)", "softmax top-k (baseline)"],
                         [[f"top-{k} error", percent_cell(topk[f"top{k}_predict_topk"]),
                           percent_cell(topk[f"top{k}_softmax"])]
                          for k in (2, 5) if f"top{k}_softmax" in topk]), "",
                  "Top-2 is [prediction, adversarial correction]; top-5 merges the net's top "
                  "three classes with the classes the attack lands in away from each (see "
                  "`ResistanceClassifier.predict_topk`).", ""]
    if r["tests"]:
        lines += [f"{h} The primary test and the secondary ones", "", tests_markdown(r["tests"]),
                  ""]
    dtc = r["detect_then_correct"]
    if dtc is not None:
        lines += [f"{h} Detect, then correct", "",
                  f"`ResistanceClassifier`'s detector and threshold under {r['folds']}-fold "
                  "cross-validation over the samples, the net kept fixed: each fold's are fit "
                  "on the other folds.", "",
                  markdown_table(["", "top-1 accuracy"], [
                      ["net", percent_cell(dtc["accuracy_net"])],
                      ["ResistanceClassifier", percent_cell(dtc["accuracy_resistance_classifier"])],
                      ["difference", with_interval(dtc["difference"]["difference"],
                                                    dtc["difference"]["ci"], percent=True)
                       + f": {dtc['difference']['verdict']}"]]),
                  "",
                  f"It changed {dtc['changed']} predictions: {dtc['changed_to_true']} to the "
                  f"true label, {dtc['changed_from_true']} away from a correct one.", ""]
    return "\n".join(lines)
