"""Figures of the study. Each function draws on new or given axes and returns the figure."""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import RocCurveDisplay


def _image(ax, image, title):
    ax.imshow(np.asarray(image).reshape(np.asarray(image).shape[-2:]), cmap="gray_r")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


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


def plot_histograms(values, is_error, names):
    """Histograms of each score for correct and incorrect predictions.

    Parameters
    ----------
    values : list of ndarray of shape (n_samples,)
    is_error : ndarray of bool, shape (n_samples,)
    names : list of str
        Axis labels, one per array in ``values``.

    Returns
    -------
    fig : matplotlib Figure
    """
    fig, axes = plt.subplots(1, len(values), figsize=(4 * len(values), 3.2), squeeze=False)
    for ax, v, name in zip(axes[0], values, names):
        bins = np.histogram_bin_edges(v, bins=40)
        ax.hist(v[~is_error], bins=bins, density=True, alpha=0.6, label="correct")
        ax.hist(v[is_error], bins=bins, density=True, alpha=0.6, label="incorrect")
        ax.set_xlabel(name)
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def plot_roc_curves(is_error, scores, *, ax=None, title="Detecting the net's errors"):
    """ROC curves of detectors (errors, or adversarial examples, are the positive class).

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
    fig, ax = plt.subplots(figsize=(6, 5)) if ax is None else (ax.figure, ax)
    for name, score in scores.items():
        last = name == list(scores)[-1]
        RocCurveDisplay.from_predictions(is_error, score, name=name, ax=ax,
                                         plot_chance_level=last)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_image_grid(images, titles, columns=8):
    """A grid of images with a title each (for example misclassified images).

    Returns
    -------
    fig : matplotlib Figure
    """
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.axis("on")
        _image(ax, image, title)
    fig.tight_layout()
    return fig


def plot_boxplots(groups, names):
    """Box plots of several scores, one panel per score, one box per group of samples.

    Parameters
    ----------
    groups : dict of str to list of ndarray
        Group name (for example "clean" or an attack) to one array per score.
    names : list of str
        The scores' names, one panel each.

    Returns
    -------
    fig : matplotlib Figure
    """
    fig, axes = plt.subplots(1, len(names), figsize=(max(3.6, 0.45 * len(groups) + 1.2)
                                                     * len(names), 4.8), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], names)):
        ax.boxplot([values[j] for values in groups.values()], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), list(groups), rotation=40, ha="right",
                      fontsize=7)
        ax.set_ylabel(name)
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
