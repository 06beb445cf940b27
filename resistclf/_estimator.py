"""ResistanceClassifier: detect a network's errors by their resistance, and correct them."""

import sys
import warnings
from collections import OrderedDict
from dataclasses import fields
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    KFold,
    StratifiedKFold,
    check_cv,
    cross_val_predict,
    train_test_split,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, RealNotInt, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data
from skorch import NeuralNet
from torch import nn

from ._attack import (
    FEATURE_NAMES,
    AttackResult,
    ImageReader,
    ResistanceAttack,
    check_feature_names,
    check_float,
)
from ._cache import AttackCache, ResultStore, settings_key
from ._nets import (
    check_net,
    eval_mode,
    forward,
    is_trained,
    logit_module,
    module_dtype,
    net_classes,
    on_device,
    resolve_device,
)

#: Number of folds used to get out-of-fold P(error) when tuning the threshold.
THRESHOLD_FOLDS = 5
#: Below this share of flips among the net's correct predictions, fit warns that the attack
#: is too weak. The reference settings flip at least 97% of them on MNIST and FashionMNIST
#: (see ResistanceAttack's step_size); below a half, Res_min is cut off at max_iter + 1 for
#: most correct predictions, and the features mostly say how far max_iter steps reach.
MIN_FLIP_RATE = 0.5
#: How many inputs' attack results a ResistanceClassifier keeps in memory (one per input and
#: rank: predict_topk with k >= 3 attacks three ranks).
LAST_RESULTS = 4


def make_detector():
    """The default error detector: logistic regression on normal scores of each feature.

    Each feature is mapped through its empirical quantiles to a standard normal
    (:class:`~sklearn.preprocessing.QuantileTransformer`), then a logistic regression
    combines them. The map depends only on the order of each feature's values,
    so no monotone transform of an input (a logarithm, ``1 - p`` for ``p``) can
    help or hurt the detector, and heavy tails do not dominate it: images that
    never flip have Res_min = ``max_iter + 1`` and ``|r|`` growing to 70, and the
    max-softmax of correct predictions sits within 1e-3 of 1, where a linear
    model on raw or ``log(1 + x)`` values sees no difference. Out-of-fold on the
    MNIST test set (reference CNN, 5 folds), the detector on Res_N, Res_max,
    Res_min and max-softmax scored AUROC 0.966, against 0.961 for the logistic
    regression on standardised ``log(1 + x)`` used before and 0.967 for
    max-softmax alone.

    Returns
    -------
    detector : sklearn.pipeline.Pipeline
        Unfitted. Fit on fewer than 100 samples, the transformer warns that it
        uses as many quantiles as there are samples.
    """
    return make_pipeline(
        QuantileTransformer(n_quantiles=100, output_distribution="normal", subsample=None),
        # Converged, so that the fit is the optimum and not where lbfgs stopped: the
        # iterate lbfgs stops at depends on the machine's rounding, so an unconverged fit
        # could not be recomputed elsewhere (``resistclf verify``). A fit that converges
        # within scikit-learn's default 100 iterations is unchanged.
        LogisticRegression(max_iter=10_000),
    )


class ResistanceClassifier(ClassifierMixin, TransformerMixin, MetaEstimatorMixin, BaseEstimator):
    """Detect a network's errors by their resistance to an attack, and correct them.

    For each sample, :class:`ResistanceAttack` measures how hard it is to
    change the net's prediction: Res_N, Res_max and Res_min. A detector
    (logistic regression by default) learns from these features whether the
    net's prediction is wrong. Where it flags an error, :meth:`predict`
    returns the class the attack lands in (the *adversarial correction*)
    instead of the net's prediction.

    Parameters
    ----------
    net : skorch NeuralNetClassifier, FrozenEstimator or torch.nn.Module
        The network.

        - A skorch :class:`~skorch.NeuralNetClassifier`, fitted or not. An
          unfitted one is cloned and trained in :meth:`fit`.
        - A fitted skorch net wrapped in
          :class:`sklearn.frozen.FrozenEstimator`. Use this inside
          ``cross_val_score``, ``GridSearchCV`` or ``Pipeline``: they clone
          their estimator, and a cloned skorch net comes back untrained,
          whereas a FrozenEstimator clones to itself.
        - A trained :class:`torch.nn.Module` returning one logit per class;
          its classes are ``0, ..., n_outputs - 1``.
    attack : ResistanceAttack or None, default=None
        The attack's settings; None means ``ResistanceAttack()``. Its
        parameters can be searched as ``attack__step_size`` and so on.
    detector : classifier or None, default=None
        Learns P(error) from the resistance features. None means
        :func:`make_detector`. It is cloned, never modified.
    features : tuple of str, default=("res_n", "res_max", "res_min")
        The attack's per-image features that :meth:`transform` returns and
        the detector learns from: any of ``"res_n"``, ``"res_max"``,
        ``"res_min"`` and ``"res_mean"`` (see :class:`AttackResult`). The
        default is the write-up's three; ``"res_mean"`` is their stable
        companion, opt-in.
    cv : "auto", "prefit", int, float, cross-validation splitter, iterable or None, \
            default="auto"
        Where the detector's training samples come from. They must be samples
        the net did not train on, since a net is rarely wrong, and hard to
        attack, on its own training data.

        - ``"prefit"``: the net is already trained and used as it is; the
          detector learns from all of ``X, y`` given to :meth:`fit`.
        - float in (0, 1): a clone of the net trains on the rest and the
          detector learns from this fraction of ``X, y``, held out at random
          and stratified by class. That clone is the net used afterwards.
        - int >= 2: cross-fitting over that many folds. For each fold a clone
          trains on the other folds and the fold is attacked, so every sample
          gives out-of-fold features; then a final clone trains on all of
          ``X``. This costs ``cv + 1`` trainings and attacks every sample once.
          The folds are :class:`~sklearn.model_selection.StratifiedKFold`'s,
          as :func:`~sklearn.model_selection.check_cv` makes them, but
          shuffled with ``random_state`` (:class:`~sklearn.model_selection.KFold`'s
          where a class has a single sample): unshuffled folds of data sorted by
          anything but the class (source, time) would each hold one part of it.
        - a cross-validation splitter (``GroupKFold(5)``, ``PredefinedSplit``,
          ...) or an iterable of ``(train, test)`` index arrays: cross-fitting
          over its splits, as for an int. ``groups`` given to :meth:`fit` go to
          its ``split``. Test sets may overlap or leave samples out: the
          detector learns from every (sample, test set) pair.
        - None: 5, as :func:`~sklearn.model_selection.check_cv` reads it.
        - ``"auto"``: ``"prefit"`` if the net is trained (a torch module, a
          FrozenEstimator, or an initialized skorch net), else ``0.2``.

        The default hold-out fraction attacks a fifth of the training data,
        which is the cheapest honest option: the attack costs ``max_iter``
        forward and backward passes per sample, far more than a training
        epoch, and cross-fitting attacks every sample. Cross-fitting is what
        gives :meth:`fit_transform` out-of-sample features for every sample.
    threshold : "auto" or float in [0, 1], default="auto"
        A sample is corrected where P(error) >= threshold. ``"auto"`` picks the
        threshold that maximises the accuracy of the corrected predictions on
        out-of-fold P(error) of the detector's training samples, as
        :class:`~sklearn.model_selection.TunedThresholdClassifierCV` does; if no
        threshold improves on the net's own accuracy, nothing is corrected.
    net_output : {"auto", "logits", "proba"}, default="auto"
        What the net's module returns. ``"auto"`` follows skorch's convention:
        probabilities with ``NLLLoss`` (skorch's default criterion), logits
        with ``CrossEntropyLoss``; a torch module returns logits.
        Probabilities are turned into log-probabilities for the attack.
    cache : AttackCache or None, default=None
        Keeps each image's attack result, so that ``fit``, ``transform``,
        ``predict``, ``predict_topk`` and the clones made by cross-validation
        attack an image once, and across runs if it is saved. None keeps
        only the last few inputs' results in memory (see Notes).
    random_state : int, RandomState instance or None, default=None
        Seeds the net's training (torch's RNG is seeded inside a forked RNG
        state, so the global state is left alone), the hold-out split and
        the folds. The attack itself is deterministic.

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained net: ``net`` itself for ``"prefit"``, else a trained clone.
    classes_ : ndarray of shape (n_classes,)
        The net's class labels.
    detector_ : classifier
        The fitted detector. A :class:`~sklearn.dummy.DummyClassifier` if the
        detector's training samples held only correct or only wrong
        predictions.
    threshold_ : float
        The threshold on P(error) in use; ``inf`` means nothing is corrected.
    n_features_in_ : int
        ``X.shape[1]``: the number of features, or of channels for images.

    See Also
    --------
    ResistanceAttack : The attack, usable on its own with any torch module.

    Notes
    -----
    **One attack per input.** Without a ``cache``, the classifier keeps the
    attack results of the last 4 inputs (and ranks) in memory, keyed by the
    input's content (its dtype, shape and bytes), the attacked rank, the
    attack's settings and a fingerprint of the module (architecture,
    parameters, buffers and plain attributes). So ``transform``,
    ``predict_error_proba``, ``predict``, ``predict_topk`` and ``score`` on
    the same ``X`` attack it once between them, and a net changed in place
    is attacked afresh. :meth:`fit` starts the memory afresh; clones, copies
    and pickles do not carry it.

    ``X`` may be a memory-mapped array (``np.load(path, mmap_mode="r")``) of
    float32 or float64: :meth:`transform`, the predictions and the attacks of
    :meth:`fit` read it a batch at a time, so it may be larger than memory.
    Arrays of other dtypes are converted, which loads them whole; so are the
    samples a net trains on when :meth:`fit` trains it. Integer images (more
    than two dimensions) raise, as in the attack: its step size is made for
    float pixels such as [0, 1], not 0-255.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.frozen import FrozenEstimator
    >>> from skorch import NeuralNetClassifier
    >>> from resistclf import ResistanceAttack, ResistanceClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(200, 4).astype(np.float32)
    >>> y = (X[:, 0] > 0.5).astype(np.int64)
    >>> net = NeuralNetClassifier(
    ...     torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...     max_epochs=5, lr=0.5, train_split=None, verbose=0,
    ... ).fit(X, y)
    >>> clf = ResistanceClassifier(
    ...     FrozenEstimator(net), attack=ResistanceAttack(max_iter=50), random_state=0
    ... ).fit(X, y)
    >>> clf.transform(X[:3]).shape
    (3, 3)
    >>> clf.predict_topk(X[:3], k=2).shape
    (3, 2)
    """

    _parameter_constraints = {
        "net": "no_validation",  # check_net gives a clearer message
        "attack": [ResistanceAttack, None],
        "detector": [HasMethods(["fit", "predict_proba"]), None],
        "features": [tuple, list],
        "cv": [
            StrOptions({"auto", "prefit"}),
            Interval(RealNotInt, 0, 1, closed="neither"),
            "cv_object",
        ],
        "threshold": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
        "net_output": [StrOptions({"auto", "logits", "proba"})],
        "cache": [AttackCache, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        net,
        *,
        attack=None,
        detector=None,
        features=FEATURE_NAMES,
        cv="auto",
        threshold="auto",
        net_output="auto",
        cache=None,
        random_state=None,
    ):
        self.net = net
        self.attack = attack
        self.detector = detector
        self.features = features
        self.cv = cv
        self.threshold = threshold
        self.net_output = net_output
        self.cache = cache
        self.random_state = random_state

    def __sklearn_clone__(self):
        if not isinstance(self.net, FrozenEstimator) and isinstance(self.net, NeuralNet) \
                and is_trained(self.net):
            warnings.warn(
                "Cloning a ResistanceClassifier clones its skorch net, and a cloned "
                "skorch net comes back untrained, so fit will train it again. Wrap "
                "a trained net in sklearn.frozen.FrozenEstimator to keep it as it is.",
                UserWarning,
                stacklevel=2,
            )
        return super().__sklearn_clone__()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Res_min is a step count and the attack runs in float32: the output is
        # float64 whatever the input.
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags

    def __getstate__(self):
        # Copies and pickles start with no remembered attacks: they are a cache, not state.
        state = dict(super().__getstate__())
        if "_last_results" in state:
            state["_last_results"] = _LastResults()
        return state

    # ----------------------------------------------------------------- fit

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None):
        """Train the net if needed, attack fresh samples and fit the detector.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Float inputs, as the net takes them.
        y : array-like of shape (n_samples,)
            True labels.
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels, passed to the ``split`` method of a splitter given as
            ``cv`` (``GroupKFold`` and the like), as in scikit-learn. Splitters
            that do not use groups warn that they ignore them, and so does a
            float ``cv``; ``"prefit"`` splits nothing and ignores them.

        Returns
        -------
        self : ResistanceClassifier
        """
        self._fit(X, y, groups)
        return self

    @_fit_context(prefer_skip_nested_validation=False)
    def fit_transform(self, X, y, groups=None):
        """Fit, and return the resistance features of ``X`` from nets that did not train on it.

        These are the features :meth:`fit` computed to train the detector,
        not those of ``fit(X, y).transform(X)``, which come from the final
        net on samples it trained on: such samples look more resistant than
        new ones, and a model fitted on them (the next step of a
        :class:`~sklearn.pipeline.Pipeline`) would learn from leaked
        features. This is the cross-fitting contract of scikit-learn's
        :class:`~sklearn.preprocessing.TargetEncoder`.

        - int ``cv`` or a splitter whose test sets cover every sample: each
          sample's features come from the attack on the net trained without
          it (its fold's net). No sample is attacked twice.
        - float ``cv``: only the held-out samples have out-of-sample features.
          They are returned for those samples, the final net's features for
          the others (the net trained on them), and a warning says how many
          samples are in-sample. The same holds for the samples that a
          splitter leaves out of every test set. Use an int ``cv`` for
          out-of-sample features of every sample.
        - ``"prefit"``: the net did not train on ``X``, so the features of
          :meth:`transform` are already out-of-sample; they are returned,
          computed once, and a following ``transform(X)`` reuses them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Float inputs, as the net takes them.
        y : array-like of shape (n_samples,)
            True labels.
        groups : array-like of shape (n_samples,) or None, default=None
            Group labels for a splitter given as ``cv``; see :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_samples, len(features)), dtype float64
            The attack's features named by ``features``, row for row.

        Raises
        ------
        ValueError
            If a splitter's test sets hold a sample more than once (such as
            ``ShuffleSplit``'s or ``RepeatedKFold``'s): that sample then has
            several out-of-sample values and no one to return. :meth:`fit`
            accepts such splitters. Raised before any training.
        """
        X, cv, rows, results = self._fit(X, y, groups, cross_fitted=True)
        features = np.empty((len(X), len(self.features)), dtype=np.float64)
        features[rows] = results.feature_matrix(self.features)
        in_sample = np.setdiff1d(np.arange(len(X)), rows)
        if len(in_sample):
            _warn(
                f"fit_transform returns out-of-sample features for the "
                f"{len(X) - len(in_sample)} samples of X that {_describe(cv)} held out, "
                f"but not for the other {len(in_sample)}: the final net trained on them, so "
                "their features are in-sample, and a model fitted on them learns from leaked "
                "features. Use an int cv (cross-fitting) for out-of-sample features of every "
                "sample."
            )
            features[in_sample] = self._attack(X[in_sample], remember=False).feature_matrix(
                self.features)
        return features

    def _fit(self, X, y, groups, cross_fitted=False):
        """Fit; return the validated X, the cv used, and the rows and results learnt from.

        The results are the attacks the detector learns from, by nets that did not
        train on their rows of X (in ``rows``, which may repeat). ``cross_fitted``
        rejects splitters that hold a row out more than once, before any training.
        """
        _check_images(X)
        X, y = validate_data(self, X, y, allow_nd=True, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        check_feature_names(self.features)
        if groups is not None:
            check_consistent_length(X, y, groups)
        inner = check_net(self.net)
        rng = check_random_state(self.random_state)
        self._sample_shape = X.shape[1:]
        self._last_results = _LastResults()
        cv = self.cv
        if isinstance(cv, str) and cv == "auto":
            cv = "prefit" if is_trained(self.net) else 0.2
        elif cv is None:
            cv = 5  # as check_cv reads it

        if isinstance(cv, str) and cv == "prefit":
            if not is_trained(self.net):
                raise NotFittedError(
                    "cv='prefit' needs a trained net, but the skorch net is not "
                    "initialized. Fit it first, or use cv='auto'."
                )
            self.net_ = self.net
            self.classes_ = net_classes(self.net_, self._n_outputs(X[:1]))
            y_idx = self._encode(y)
            # The final net's own results on X: remembered for transform(X) and the rest.
            rows, results = np.arange(len(X)), self._attack(X)
        else:
            if isinstance(inner, nn.Module):
                raise ValueError(
                    f"{_describe(cv)} trains the net, but a torch.nn.Module cannot be "
                    "trained here. Pass it trained with cv='prefit', or wrap it in a "
                    "skorch NeuralNetClassifier."
                )
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(
                    "y contains only one class; a classifier needs at least 2 classes."
                )
            y_idx = np.searchsorted(self.classes_, y)
            rows, results = self._fit_net(inner, X, y_idx, groups, cv, rng, cross_fitted)

        self._fit_detector(results, y_idx[rows], rng)
        return X, cv, rows, results

    def _fit_net(self, inner, X, y_idx, groups, cv, rng, cross_fitted):
        """Train clones of the net; attack samples they did not train on."""
        stratify = y_idx if np.bincount(y_idx).min() >= 2 else None
        if isinstance(cv, Real) and not isinstance(cv, Integral):
            if groups is not None:
                _warn(f"The groups parameter is ignored by cv={cv!r}, a hold-out fraction "
                      "drawn at random: pass a splitter that uses groups, such as "
                      "GroupKFold, as cv to keep each group on one side.")
            train, held = train_test_split(
                np.arange(len(X)), test_size=cv, stratify=stratify, random_state=rng
            )
            self.net_ = self._train(inner, X[train], y_idx[train], rng)
            return held, self._attack(X[held], remember=False)

        if isinstance(cv, Integral):
            # check_cv's folds for a classifier, shuffled with the seed (see cv's doc).
            cv = (StratifiedKFold if stratify is not None else KFold)(
                n_splits=cv, shuffle=True, random_state=rng
            )
        splits = _check_splits(cv, X, y_idx, groups, cross_fitted)
        held_rows, parts = [], []
        for train, held in splits:
            self.net_ = self._train(inner, X[train], y_idx[train], rng)
            held_rows.append(held)
            parts.append(self._attack(X[held], remember=False))
        rows = np.concatenate(held_rows)
        order = np.argsort(rows, kind="stable")  # the detector sees X's order
        results = AttackResult.concatenate(parts)[order]
        self.net_ = self._train(inner, X, y_idx, rng)
        return rows[order], results

    def _train(self, inner, X, y_idx, rng):
        net = clone(inner).set_params(classes=list(self.classes_))
        with torch.random.fork_rng():
            torch.manual_seed(rng.randint(2**31))
            net.fit(_to_tensor(X), y_idx)
        net_classes(net, self._n_outputs(X[:1], net))  # the module must fit classes_
        return net

    def _fit_detector(self, results, y_idx, rng):
        error = results.c0 != y_idx
        if error.all() or not error.any():
            _warn(
                f"The net's predictions on the {len(error)} samples used to fit the "
                f"detector are all {'wrong' if error.all() else 'correct'}; the "
                "detector predicts that rate for every sample."
            )
        self._check_flip_rate(results.flipped[~error])
        self.detector_, self.threshold_ = _fit_corrector(
            results, y_idx, features=self.features, detector=self.detector,
            threshold=self.threshold, rng=rng)

    def _check_flip_rate(self, flipped):
        """Warn if the attack changed too few of the net's correct predictions (``flipped``)."""
        if not len(flipped) or flipped.mean() >= MIN_FLIP_RATE:
            return
        attack = self._attack_settings()
        clip = (f" clip={attack.clip!r} keeps x + r in a box: check that it is the inputs' "
                "whole range." if attack.clip is not None else "")
        _warn(
            f"The attack changed the class of only {flipped.mean():.0%} of the net's "
            f"{len(flipped)} correct predictions on the samples the detector learns from, "
            f"within max_iter={attack.max_iter} steps of step_size={attack.step_size}: the "
            "others' resistance is cut off at max_iter, so the features barely tell them "
            "apart. Let the attack go further, with a larger step or more steps: "
            "attack=ResistanceAttack(step_size=..., max_iter=...)." + clip + " If the net "
            "returns probabilities rather than logits, set net_output='proba'."
        )

    # ------------------------------------------------------------- predict

    def transform(self, X):
        """Resistance features of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)

        Returns
        -------
        features : ndarray of shape (n_samples, len(features)), dtype float64
            The attack's features named by ``features``: by default Res_N,
            Res_max and Res_min (see :class:`AttackResult`).
        """
        return self.attack_results(X).feature_matrix(self.features)

    def get_feature_names_out(self, input_features=None):
        """Names of the columns of :meth:`transform`: ``features``.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored; present for API consistency.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        return np.asarray(self.features, dtype=object)

    def predict_error_proba(self, X):
        """Probability, according to the detector, that the net's prediction is wrong.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)

        Returns
        -------
        proba : ndarray of shape (n_samples,)
        """
        return self._error_proba(self.attack_results(X))

    def predict(self, X):
        """The net's prediction, replaced by the adversarial class where an error is flagged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        results = self.attack_results(X)
        corrected = self._error_proba(results) >= self.threshold_
        return self.classes_[np.where(corrected, results.adversarial_class, results.c0)]

    def predict_proba(self, X):
        """The net's class probabilities (softmax of its logits).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = self._validate(X)
        return torch.softmax(self._logits(X), dim=1).numpy().astype(np.float64)

    def predict_topk(self, X, k=2):
        """Ranked labels from the net's top classes and their adversarial classes.

        For each of the net's top three classes ``c1, c2, c3`` the attack runs
        with ``rank=j`` (see :meth:`ResistanceAttack.__call__`): away from
        ``c_j``, with the classes ranked above ``c_j`` removed from the
        softmax, landing in ``a_j``. The list is ``c1, a1, c2, a2, c3, a3``
        with repeats dropped, then filled up from the net's own ranking, and
        cut to ``k``. So ``k=1`` is the net's prediction and ``k=2`` is the
        prediction followed by its adversarial correction.

        Removing the higher-ranked classes is what gives ``a2`` and ``a3`` a
        meaning: taken literally, ``c2`` and ``c3`` usually start with
        Conf < 0.2, the loss is then ``|r|`` alone, and the attack stays at
        ``r = 0`` without telling anything. With the classes above removed,
        ``c_j`` is the prediction of the net restricted to the classes left,
        and its attack is the write-up's attack on that restricted net.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
        k : int, default=2
            Length of each list, from 1 to ``n_classes``. ``k=2`` attacks once,
            ``k>=3`` three times (twice for 3 classes).

        Returns
        -------
        labels : ndarray of shape (n_samples, k)
            Best first.
        """
        check_is_fitted(self)
        n_classes = len(self.classes_)
        _check_k(k, n_classes)
        X = self._validate(X)
        attacks = [self._attack(X, rank=rank) for rank in range(_ranks_needed(k, n_classes))]
        return self.classes_[topk_indices(attacks, self._logits(X).numpy(), k)]

    def attack_results(self, X, rank=0):
        """The full per-sample outcome of the attack on the fitted net.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
        rank : int, default=0
            Which ranked class to attack away from; see
            :meth:`ResistanceAttack.__call__`.

        Returns
        -------
        result : AttackResult
            Class indices in it index :attr:`classes_`.
        """
        check_is_fitted(self)
        return self._attack(self._validate(X), rank=rank)

    # ------------------------------------------------------------- helpers

    def _validate(self, X):
        shape, fitted = getattr(X, "shape", None), self._sample_shape
        # n_features_in_ is the channel count for images: speak of channels and shapes.
        if shape is not None and len(shape) >= 2 and (len(shape) > 2 or len(fitted) > 1):
            name = type(self).__name__
            if len(shape) != len(fitted) + 1:
                raise ValueError(
                    f"X has samples of shape {tuple(shape[1:])}, but {name} was fitted on "
                    f"samples of shape {tuple(fitted)}: give X the same number of dimensions."
                )
            if shape[1] != fitted[0]:
                raise ValueError(
                    f"X has images with {_channels(shape[1])} (samples of shape "
                    f"{tuple(shape[1:])}), but {name} was fitted on images with "
                    f"{_channels(fitted[0])} (samples of shape {tuple(fitted)})."
                )
        _check_images(X)
        return validate_data(
            self, X, reset=False, allow_nd=True, dtype=[np.float32, np.float64]
        )

    def _encode(self, y):
        """Indices of ``y`` in ``classes_``; reject labels the net does not know."""
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        unknown = sorted({label for label in np.unique(y).tolist() if label not in index},
                         key=str)
        if unknown:
            raise ValueError(
                f"y contains labels the net does not know: {unknown}. The net's "
                f"classes are {self.classes_.tolist()}."
            )
        return np.array([index[label] for label in y.tolist()], dtype=np.int64)

    def _module(self, net=None):
        return logit_module(self.net_ if net is None else net, self.net_output)

    def _attack(self, X, rank=0, remember=True):
        """The attack's results on validated X: from the cache, else from the last inputs'.

        ``remember=False`` attacks without the memory of the last inputs: fit's
        attacks on parts of X, by nets other than the final one, would only
        crowd it.
        """
        attack, module = self._attack_settings(), self._module()
        if self.cache is not None:
            return self.cache.attack(attack, module, X, rank=rank)
        if not remember:
            return attack(module, X, rank=rank)
        key = ResultStore.key(X, rank, settings_key(attack), module)
        result = self._last_results.get(key)
        if result is None:
            result = attack(module, X, rank=rank)
            self._last_results.put(key, result)
        return result

    def _attack_settings(self):
        return ResistanceAttack() if self.attack is None else self.attack

    def _logits(self, X, net=None):
        """The net's logits for X, as a float32 CPU tensor, computed where the attack runs."""
        attack = self._attack_settings()
        module = attack.preprocessed(self._module(net), X.shape[1:])
        # Plain forward passes need far less memory than the attack's steps.
        batch_size = 256 if attack.batch_size == "auto" else attack.batch_size
        device = resolve_device(attack.device, module)
        images, dtype = ImageReader(X), module_dtype(module)
        with on_device(module, device), eval_mode(module), torch.no_grad():
            return torch.cat([
                forward(module, images.read(i, i + batch_size).to(device, dtype)).float().cpu()
                for i in range(0, len(X), batch_size)
            ])

    def _n_outputs(self, X, net=None):
        return self._logits(X, net).shape[1]

    def _error_proba(self, results):
        return _error_probability(self.detector_, results, self.features)


class _LastResults:
    """The attack results of the last ``LAST_RESULTS`` inputs, by key; copies in and out."""

    def __init__(self):
        self._results = OrderedDict()

    def get(self, key):
        if key not in self._results:
            return None
        self._results.move_to_end(key)
        return _copied(self._results[key])

    def put(self, key, result):
        self._results[key] = _copied(result)
        while len(self._results) > LAST_RESULTS:
            self._results.popitem(last=False)


def _copied(result):
    """A copy of an AttackResult whose arrays the caller may change."""
    return type(result)(**{f.name: None if getattr(result, f.name) is None
                           else getattr(result, f.name).copy() for f in fields(result)})


def _check_splits(cv, X, y_idx, groups, cross_fitted):
    """The (train, test) index pairs of ``cv``, through check_cv, each checked."""
    if not hasattr(cv, "split"):  # an iterable: check its items before check_cv unpacks them
        cv = [_check_split(i, split, len(X)) for i, split in enumerate(cv)]
    splitter = check_cv(cv, y_idx, classifier=True)
    splits = [_check_split(i, split, len(X))
              for i, split in enumerate(splitter.split(X, y_idx, groups))]
    if not splits:
        raise ValueError("cv gave no (train, test) splits.")
    held_out = np.bincount(np.concatenate([test for _, test in splits]), minlength=len(X))
    if cross_fitted and held_out.max() > 1:
        raise ValueError(
            f"cv holds sample {int(np.argmax(held_out > 1))} out {held_out.max()} times, so "
            "fit_transform has no single out-of-sample value to return for it. Use a "
            "splitter whose test sets do not overlap (KFold, GroupKFold, PredefinedSplit), "
            "or fit then transform."
        )
    return splits


def _check_split(i, split, n):
    """Split ``i``, as a pair of index arrays into ``n`` samples; raise if it is not one."""
    pair = tuple(np.asarray(part) for part in split) if isinstance(split, (tuple, list)) else ()
    if len(pair) != 2 or any(
            part.ndim != 1 or not part.size or part.dtype.kind not in "iu"
            or part.min() < 0 or part.max() >= n for part in pair):
        raise ValueError(
            f"cv must give (train, test) pairs of non-empty arrays of indices into X's "
            f"{n} samples; split {i} is not one."
        )
    if np.intersect1d(*pair).size:
        raise ValueError(f"cv's split {i} trains on samples that it holds out.")
    return pair


def _check_images(X):
    """Raise for integer images, as the attack does; 2-D integer features convert to floats.

    scikit-learn converts integer features silently, and its estimator checks
    expect that, but 0-255 pixels would meet a step size made for [0, 1].
    """
    if len(getattr(X, "shape", ())) > 2 and hasattr(X, "dtype"):
        check_float(X.dtype)


def _channels(n):
    return f"{n} channel" if n == 1 else f"{n} channels"


def _describe(cv):
    """``cv`` for a message: its value, unless it is a splitter or a list of splits."""
    return f"cv={cv!r}" if isinstance(cv, (str, Real)) else "the cv splitter"


def _warn(message):
    """A UserWarning that points at the caller's code, past resistclf and scikit-learn.

    ``fit`` and ``fit_transform`` reach the checks through scikit-learn's
    wrappers, so no fixed ``stacklevel`` would do.
    """
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] \
            in ("resistclf", "sklearn"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _to_tensor(X):
    """A float32 tensor holding a copy of X, whatever X's strides and flags."""
    return torch.from_numpy(np.array(X, dtype=np.float32))


def _best_threshold(proba, gain):
    """The threshold on P(error) that maximises the number of correct predictions.

    Correcting sample ``i`` changes the number of correct predictions by
    ``gain[i]``. Returns the midpoint between the lowest corrected and the
    highest uncorrected probability, or ``inf`` if no correction helps.
    """
    order = np.argsort(-proba, kind="stable")
    proba, total = proba[order], np.cumsum(gain[order])
    # Samples with equal probability are corrected together.
    cuts = np.flatnonzero(np.r_[proba[1:] != proba[:-1], True])
    best = cuts[np.argmax(total[cuts])]
    if total[best] <= 0:
        return np.inf
    below = proba[best + 1] if best + 1 < len(proba) else 0.0
    return float((proba[best] + below) / 2)


def _check_k(k, n_classes):
    if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= n_classes:
        raise ValueError(f"k must be an integer from 1 to n_classes={n_classes}; got {k!r}.")


def _ranks_needed(k, n_classes):
    """The ranks attacked for lists of ``k`` labels: none for 1, one for 2, else three."""
    return 0 if k == 1 else 1 if k == 2 else min(3, n_classes - 1)


def topk_indices(attacks, logits, k):
    """:meth:`ResistanceClassifier.predict_topk`'s lists from attack results, as indices.

    ``attacks`` holds the results at ranks 0, 1, ... on the same samples, ``logits``
    their logits. The list is ``c1, a1, c2, a2, c3, a3`` with repeats dropped, filled up
    from the net's own ranking (ties to the lower class index) and cut to ``k``.
    """
    n_classes = logits.shape[1]
    _check_k(k, n_classes)
    n_ranks = _ranks_needed(k, n_classes)
    if len(attacks) < n_ranks:
        raise ValueError(f"Lists of {k} labels need the attack at {n_ranks} ranks; got "
                         f"{len(attacks)}.")
    ranking = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    columns = [column for result in attacks[:n_ranks]
               for column in (result.c0, result.adversarial_class)]
    candidates = np.column_stack([*columns, ranking])
    seen_before = np.zeros(candidates.shape, dtype=bool)
    for j in range(1, candidates.shape[1]):
        seen_before[:, j] = (candidates[:, :j] == candidates[:, j : j + 1]).any(axis=1)
    first_unique = np.argsort(seen_before, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, first_unique, axis=1)


def _fit_corrector(results, y_idx, *, features, detector, threshold, rng):
    """The fitted detector and the threshold on P(error) that :meth:`ResistanceClassifier.fit`
    learns from the attack results ``results`` of samples of class ``y_idx``.

    ``detector`` None means :func:`make_detector`; it is cloned. Where the samples are all
    right or all wrong, the detector predicts that rate.
    """
    error = results.c0 != y_idx
    X = results.feature_matrix(features)
    n_minority = min(error.sum(), (~error).sum())
    detector = make_detector() if detector is None else clone(detector)
    if n_minority == 0:
        detector = DummyClassifier(strategy="prior")
    with warnings.catch_warnings():
        # The default detector's quantiles: fewer samples than quantiles is expected here.
        warnings.filterwarnings("ignore", "n_quantiles .* is greater than the total number",
                                UserWarning)
        fitted = clone(detector).fit(X, error)
        if threshold != "auto":
            return fitted, float(threshold)
        if n_minority < 2:
            return fitted, np.inf
        folds = StratifiedKFold(n_splits=min(THRESHOLD_FOLDS, n_minority), shuffle=True,
                                random_state=rng)
        proba = cross_val_predict(clone(detector), X, error, cv=folds,
                                  method="predict_proba")[:, 1]
    gain = (results.adversarial_class == y_idx).astype(int) - (~error).astype(int)
    return fitted, _best_threshold(proba, gain)


def _error_probability(detector, results, features):
    """P(error) that the fitted ``detector`` gives each sample of ``results``."""
    proba = detector.predict_proba(results.feature_matrix(features))
    # Sums to 0 (or 1) if the detector only ever saw correct (or wrong) predictions.
    return proba[:, detector.classes_ == 1].sum(axis=1)


def detect_then_correct(train, y_train, held, *, features=FEATURE_NAMES, detector=None,
             threshold="auto", random_state=None):
    """Detect-then-correct on attack results: fit on ``train``, correct ``held``.

    The detector and threshold are those :meth:`ResistanceClassifier.fit` gives with
    the same settings on a fixed net whose attack results on its samples are ``train``
    (``y_train`` the class indices); returns the class indices it predicts for ``held``.
    """
    fitted, cut = _fit_corrector(train, y_train, features=features, detector=detector,
                                 threshold=threshold, rng=check_random_state(random_state))
    corrected = _error_probability(fitted, held, features) >= cut
    return np.where(corrected, held.adversarial_class, held.c0)
