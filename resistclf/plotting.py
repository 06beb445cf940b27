"""Figures of the study, and the risk-coverage curve in scikit-learn's Display style.

Each ``plot_*`` function draws on new or given axes and returns the figure.
matplotlib is imported only when something is drawn, as scikit-learn does.
"""

import numpy as np
from sklearn.metrics import roc_curve

from .metrics import aurc as _aurc
from .metrics import auroc, risk_coverage_curve
from .scores import one_minus_confidence


def _image(ax, image, title):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:  # RGB, channels first
        low, high = image.min(), image.max()
        if low < 0 or high > 1:  # normalised inputs: stretched to [0, 1] to be shown
            image = (image - low) / max(high - low, np.finfo(np.float32).tiny)
        ax.imshow(np.moveaxis(image, 0, -1))
    else:
        ax.imshow(image.reshape(image.shape[-2:]), cmap="gray_r")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def distinct_line_styles(ax, n_lines):
    """Give each of ``n_lines`` curves about to be drawn on ``ax`` its own look.

    Past the colour cycle's length, colours repeat dashed, then dotted, instead
    of repeating unchanged; with no more curves than colours, ``ax`` is left as
    it is.

    Parameters
    ----------
    ax : matplotlib Axes
        The axes whose property cycle is set.
    n_lines : int
        How many curves will be drawn on ``ax``.

    Returns
    -------
    ax : matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib import cycler

    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", [])
    if colors and n_lines > len(colors):
        ax.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=colors))
    return ax


def plot_attack_traces(conf_traces, norm_traces, images, titles):
    """The write-up's figure: Conf and ``|r|`` over the attack, beside each image.

    Parameters
    ----------
    conf_traces, norm_traces : ndarray of shape (n_images, n_steps)
        From ``AttackResult.conf_trace`` and ``AttackResult.norm_trace``.
    images : ndarray of shape (n_images, ..., H, W)
    titles : list of str

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 6), gridspec_kw={"height_ratios": [1, 1.4]},
                             squeeze=False)
    for i in range(n):
        _image(axes[0, i], images[i], titles[i])
        ax = axes[1, i]
        ax.plot(conf_traces[i], color="tab:blue", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("Conf of the original class", color="tab:blue")
        ax.set_ylim(-0.02, 1.02)
        twin = ax.twinx()
        twin.plot(norm_traces[i], color="tab:red", lw=0.8)
        twin.set_ylabel("|r|", color="tab:red")
    fig.tight_layout()
    return fig


def plot_histograms(values, is_error, names, *, log_panels=()):
    """Histograms of each score for correct and incorrect predictions.

    Parameters
    ----------
    values : list of ndarray of shape (n_samples,)
    is_error : ndarray of bool, shape (n_samples,)
    names : list of str
        Axis labels, one per array in ``values``.
    log_panels : collection of str, default=()
        Names of the panels drawn with a logarithmic x axis and log-spaced
        bins, for heavy-tailed scores (such as ``|r|`` or ``1 - max_softmax``)
        that would otherwise fill one bin; their y axis is the density of
        ``log10`` of the score. Values <= 0 cannot be placed on such an axis:
        they are left out, and the axis label says how many.

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    unknown = set(log_panels) - set(names)
    if unknown:
        raise ValueError(f"log_panels names panels that do not exist: {sorted(unknown)}; "
                         f"the panels are {list(names)}.")
    is_error = np.asarray(is_error, dtype=bool)
    fig, axes = plt.subplots(1, len(values), figsize=(4 * len(values), 3.2), squeeze=False)
    for ax, v, name in zip(axes[0], values, names):
        v = np.asarray(v, dtype=float)
        label = name
        if name in log_panels:
            shown = v > 0
            if not shown.any():
                raise ValueError(f"Panel {name!r} has no positive value to draw on a log axis.")
            if not shown.all():
                label = f"{name} ({int((~shown).sum())} values <= 0 not shown)"
            low, high = v[shown].min(), v[shown].max()
            bins = np.geomspace(low, high, 41) if high > low else np.geomspace(low / 2, low * 2, 41)
            ax.set_xscale("log")
        else:
            shown = np.ones(len(v), dtype=bool)
            bins = np.histogram_bin_edges(v, bins=40)
        # On a log axis, a density in x would shrink the wide bins on the right:
        # show the density of log10(x) instead, which equal-looking bins share.
        scale = 1 / np.log10(bins[1] / bins[0]) if name in log_panels else None
        for group, group_label in ((shown & ~is_error, "correct"), (shown & is_error, "incorrect")):
            weights = None if scale is None else np.full(group.sum(), scale / max(group.sum(), 1))
            ax.hist(v[group], bins=bins, weights=weights, density=scale is None, alpha=0.6,
                    label=group_label)
        ax.set_xlabel(label)
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def legend_outside(ax, **kwargs):
    """Put ``ax``'s legend to the right of the axes, where it covers no curve.

    Parameters
    ----------
    ax : matplotlib Axes
    **kwargs : dict
        Keyword arguments for ``ax.legend``.

    Returns
    -------
    legend : matplotlib Legend
    """
    return ax.legend(**{"loc": "upper left", "bbox_to_anchor": (1.02, 1), "borderaxespad": 0,
                        "fontsize": 8, **kwargs})


def plot_roc_curves(is_error, scores, *, ax=None, title="Detecting the net's errors"):
    """ROC curves of detectors (errors, or adversarial examples, are the positive class).

    Each curve's legend gives its AUROC to three decimals, as the reports' tables do; the
    legend sits outside the axes.

    Parameters
    ----------
    is_error : ndarray of bool, shape (n_samples,)
    scores : dict of str to ndarray
        Detector name to score; higher means more likely positive.
    ax : matplotlib Axes or None, default=None
        Where to draw; None makes a new figure.
    title : str, default="Detecting the net's errors"

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    is_error = np.asarray(is_error, dtype=bool)
    zoom = ax is None
    fig, ax = plt.subplots(figsize=(10, 5)) if ax is None else (ax.figure, ax)
    # A new figure gets an inset of the low false-positive corner, where good detectors'
    # curves crowd together.
    axes = [ax, ax.inset_axes([0.38, 0.06, 0.58, 0.55])] if zoom else [ax]
    curves = {name: roc_curve(is_error, score)[:2] for name, score in scores.items()}
    for where in axes:
        distinct_line_styles(where, len(scores))
        for name, (fpr, tpr) in curves.items():
            where.plot(fpr, tpr, label=f"{name} (AUROC {auroc(is_error, scores[name]):.3f})")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1,
            label="chance (AUROC 0.500)")
    ax.set(xlabel="False positive rate (negatives flagged)",
           ylabel="True positive rate (positives caught)", xlim=(0, 1), ylim=(0, 1.01),
           title=title, aspect="equal")
    if zoom:
        corner = 0.2
        lowest = min(np.interp(corner / 10, fpr, tpr) for fpr, tpr in curves.values())
        axes[1].set(xlim=(0, corner), ylim=(max(0.0, lowest - 0.05), 1.005))
        axes[1].tick_params(labelsize=7)
        axes[1].set_title(f"false positive rate up to {corner}", fontsize=8)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles, columns=8):
    """A grid of images with a title each (for example misclassified images).

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    # Room above each image for its title's lines.
    lines = max((str(title).count("\n") + 1 for title in titles), default=1)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, (1.75 + 0.2 * lines) * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.axis("on")
        _image(ax, image, title)
    fig.tight_layout()
    return fig


def plot_boxplots(groups, names, *, log_panels=()):
    """Box plots of several scores, one panel per score, one box per group of samples.

    Parameters
    ----------
    groups : dict of str to list of ndarray
        Group name (for example "clean" or an attack) to one array per score.
    names : list of str
        The scores' names, one panel each.
    log_panels : collection of str, default=()
        Names of the panels drawn with a logarithmic y axis, for heavy-tailed
        scores; values <= 0 are masked there.

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(max(3.6, 0.45 * len(groups) + 1.2)
                                                     * len(names), 4.8), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], names)):
        ax.boxplot([values[j] for values in groups.values()], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), list(groups), rotation=40, ha="right",
                      fontsize=7)
        ax.set_ylabel(name)
        if name in log_panels:
            ax.set_yscale("log", nonpositive="mask")
    fig.tight_layout()
    return fig


def plot_curves(x, panels, *, xlabel="epoch", log_panels=()):
    """Line plots sharing an x axis, one panel per quantity group (for example over epochs).

    Parameters
    ----------
    x : array-like of shape (n_points,)
    panels : dict of str to dict of str to array-like
        Panel title to {line label: values of shape (n_points,)}. A label
        ``"<line> band"`` is drawn as a band, in the colour of ``<line>``,
        between the two rows of its values, of shape (2, n_points).
    xlabel : str, default="epoch"
    log_panels : collection of str, default=()
        Titles of the panels drawn with a logarithmic y axis.

    Returns
    -------
    fig : matplotlib Figure
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items()):
        colours = {}
        for label, values in lines.items():
            values = np.asarray(values, dtype=float)
            if label.endswith(" band"):
                ax.fill_between(x, values[0], values[1], alpha=0.2, label=label,
                                color=colours.get(label.removesuffix(" band")))
            else:
                (line,) = ax.plot(x, values, marker="o", ms=3, label=label)
                colours[label] = line.get_color()
        if title in log_panels:
            ax.set_yscale("log", nonpositive="mask")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


class RiskCoverageDisplay:
    """Risk-coverage curve of an error score, in the style of scikit-learn's Displays.

    Create it with :meth:`from_predictions` or :meth:`from_estimator`; the
    constructor only stores its arguments. Errors are the positive class and a
    higher score means more likely an error (see :mod:`resistclf.metrics`).

    Parameters
    ----------
    coverage : ndarray of shape (n_thresholds,)
        Fraction of samples accepted, from :func:`~resistclf.metrics.risk_coverage_curve`.
    selective_risk : ndarray of shape (n_thresholds,)
        Fraction of errors among the accepted samples.
    aurc : float or None, default=None
        Area under the curve, shown in the legend ×1000, as the reports' tables show
        it; None shows no area.
    name : str or None, default=None
        Name of the score, for the legend.

    Attributes
    ----------
    line_ : matplotlib Line2D
        The risk-coverage curve.
    optimal_ : matplotlib Line2D or None
        The curve of a score that ranks every error last, if drawn.
    ax_ : matplotlib Axes
        Axes with the curve.
    figure_ : matplotlib Figure
        Figure containing the curve.

    See Also
    --------
    resistclf.metrics.risk_coverage_curve : The curve's points.
    resistclf.metrics.aurc : The area under it.

    Examples
    --------
    >>> import numpy as np
    >>> from resistclf.plotting import RiskCoverageDisplay
    >>> is_error = np.array([False, False, True, False, True])
    >>> error_score = np.array([0.1, 0.2, 0.9, 0.3, 0.4])
    >>> display = RiskCoverageDisplay.from_predictions(is_error, error_score, name="score")
    >>> display.line_.get_xdata()
    array([0.2, 0.4, 0.6, 0.8, 1. ])
    """

    def __init__(self, *, coverage, selective_risk, aurc=None, name=None):
        self.coverage = coverage
        self.selective_risk = selective_risk
        self.aurc = aurc
        self.name = name

    def plot(self, ax=None, *, name=None, plot_optimal=False, optimal_kw=None, **kwargs):
        """Draw the curve.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Where to draw; None makes a new figure.
        name : str or None, default=None
            Name for the legend; None uses the ``name`` given at construction.
        plot_optimal : bool, default=False
            Also draw the curve of a score that ranks every error last on the
            same samples: risk ``max(0, 1 - (1 - r) / coverage)``, with ``r``
            the error rate (the risk at coverage 1).
        optimal_kw : dict or None, default=None
            Keyword arguments for matplotlib's ``plot`` of the optimal curve.
        **kwargs : dict
            Keyword arguments for matplotlib's ``plot`` of the curve.

        Returns
        -------
        display : RiskCoverageDisplay
            With ``line_``, ``optimal_``, ``ax_`` and ``figure_`` set.
        """
        import matplotlib.pyplot as plt

        if len(self.coverage) != len(self.selective_risk) or len(self.coverage) == 0:
            raise ValueError(
                f"coverage and selective_risk must be non-empty and of one length; got "
                f"{len(self.coverage)} and {len(self.selective_risk)}."
            )
        name = self.name if name is None else name
        if ax is None:
            _, ax = plt.subplots()
        # In the tables' unit, so that a legend and its table read alike.
        area = None if self.aurc is None else f"AURC ×1000 = {1000 * self.aurc:.1f}"
        label = f"{name} ({area})" if name and area else name or area
        self.line_ = ax.plot(self.coverage, self.selective_risk, label=label or None,
                             **kwargs)[0]
        self.optimal_ = None
        if plot_optimal:
            error_rate = self.selective_risk[np.argmax(self.coverage)]
            coverage = np.linspace(0, 1, 201)[1:]
            optimal = np.maximum(0, 1 - (1 - error_rate) / coverage)
            self.optimal_ = ax.plot(coverage, optimal, **{
                "color": "black", "linestyle": "--", "linewidth": 1, "label": "optimal",
                **(optimal_kw or {})})[0]
        ax.set(xlabel="Coverage (fraction accepted)", ylabel="Selective risk (error rate)",
               xlim=(0, 1.01))
        if label or plot_optimal:
            ax.legend(loc="upper left")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(cls, is_error, error_score, *, name=None, ax=None, plot_optimal=False,
                         optimal_kw=None, **kwargs):
        """Plot the risk-coverage curve of an error score.

        Parameters
        ----------
        is_error : array-like of bool, shape (n_samples,)
            Whether the net's prediction is wrong.
        error_score : array-like of shape (n_samples,)
            Higher means more likely an error.
        name : str or None, default=None
            Name of the score, for the legend.
        ax : matplotlib Axes or None, default=None
            Where to draw; None makes a new figure.
        plot_optimal : bool, default=False
            Also draw the curve of a score that ranks every error last.
        optimal_kw : dict or None, default=None
            Keyword arguments for matplotlib's ``plot`` of the optimal curve.
        **kwargs : dict
            Keyword arguments for matplotlib's ``plot`` of the curve.

        Returns
        -------
        display : RiskCoverageDisplay
        """
        coverage, selective_risk, _ = risk_coverage_curve(is_error, error_score)
        display = cls(coverage=coverage, selective_risk=selective_risk,
                      aurc=_aurc(is_error, error_score), name=name)
        return display.plot(ax, plot_optimal=plot_optimal, optimal_kw=optimal_kw, **kwargs)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, name=None, ax=None, plot_optimal=False,
                       optimal_kw=None, **kwargs):
        """Plot the risk-coverage curve of a fitted classifier's own error score.

        For an estimator with ``predict_error_proba`` (such as
        :class:`~resistclf.ResistanceClassifier`), the error score is
        ``predict_error_proba(X)`` and the prediction judged is the net's own,
        ``classes_[argmax(predict_proba(X))]``, not the corrected one. For any
        other classifier, the prediction is ``predict(X)`` and the error score
        is ``1 - max(predict_proba(X))``.

        Parameters
        ----------
        estimator : fitted classifier
            With ``predict_error_proba`` and ``predict_proba``, or with
            ``predict`` and ``predict_proba``.
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,)
            True labels.
        name : str or None, default=None
            Name for the legend; None uses the estimator's class name.
        ax : matplotlib Axes or None, default=None
            Where to draw; None makes a new figure.
        plot_optimal : bool, default=False
            Also draw the curve of a score that ranks every error last.
        optimal_kw : dict or None, default=None
            Keyword arguments for matplotlib's ``plot`` of the optimal curve.
        **kwargs : dict
            Keyword arguments for matplotlib's ``plot`` of the curve.

        Returns
        -------
        display : RiskCoverageDisplay
        """
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(
                f"{type(estimator).__name__} has no predict_proba: RiskCoverageDisplay "
                f"needs predict_error_proba or predict_proba for an error score."
            )
        if hasattr(estimator, "predict_error_proba"):
            error_score = estimator.predict_error_proba(X)
            prediction = estimator.classes_[np.argmax(estimator.predict_proba(X), axis=1)]
        else:
            prediction = estimator.predict(X)
            error_score = one_minus_confidence(np.max(estimator.predict_proba(X), axis=1))
        is_error = prediction != np.asarray(y)
        name = type(estimator).__name__ if name is None else name
        return cls.from_predictions(is_error, error_score, name=name, ax=ax,
                                    plot_optimal=plot_optimal, optimal_kw=optimal_kw, **kwargs)
