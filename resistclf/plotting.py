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


def plot_roc_curves(is_error, scores):
    """ROC curves of error detectors (errors are the positive class).

    Parameters
    ----------
    is_error : ndarray of bool, shape (n_samples,)
    scores : dict of str to ndarray
        Detector name to score; higher means more likely an error.

    Returns
    -------
    fig : matplotlib Figure
    """
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, score in scores.items():
        last = name == list(scores)[-1]
        RocCurveDisplay.from_predictions(is_error, score, name=name, ax=ax,
                                         plot_chance_level=last)
    ax.set_title("Detecting the net's errors")
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
