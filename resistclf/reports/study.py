"""``resistclf study``: the write-up's claims on your own network and data, beside baselines.

The network is built by a Python callable named ``package.module:function`` (the way timm
and torchvision name model builders) and given the weights of a ``state_dict`` file; the data
is an ``.npz`` file, a torchvision ``ImageFolder`` directory, or a torchvision dataset by name.
Everything else is the study engine's (:mod:`resistclf.study`): this command only builds the
net, reads the data and writes what the engine finds, as ``reproduce`` does.

Files from elsewhere are never unpickled: weights are read with
``torch.load(weights_only=True)`` and arrays with ``np.load(allow_pickle=False)``.
"""

import hashlib
import importlib
import os
import sys
from contextlib import contextmanager
from functools import partial
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import ResistanceAttack, ResultStore, fastest_mode
from ..study import COMPETITORS, DEFAULT_COMPETITORS, analyse, label_indices, measure, \
    verdict_markdown
from ._reference import ATTACK_MODES, FAST_MODES
from ._report import (
    FOLDS,
    header_markdown,
    parallel_backend,
    phase,
    settings_markdown,
    reanalyse_study, rewrite_study,
    study_results,
    traces_figure,
    write_report,
)

#: torchvision's datasets by name: the splits each has, its default split, and whether
#: torchvision can download it.
DATASETS = {
    "MNIST": (("train", "test"), "test", True),
    "FashionMNIST": (("train", "test"), "test", True),
    "CIFAR10": (("train", "test"), "test", True),
    "CIFAR100": (("train", "test"), "test", True),
    "SVHN": (("train", "test", "extra"), "test", True),
    "ImageNet": (("train", "val"), "val", False),
}
#: Datasets whose images torchvision holds in memory: read into one array. ImageNet's and an
#: image folder's files are read from disk only when the study needs them.
IN_MEMORY = {"MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN"}
#: Attack ranks per ``--topk``: the top-2 list needs the attack at rank 0, top-5 at ranks 0-2.
TOPK_RANKS = {1: 1, 2: 1, 5: 3}

_phase = partial(phase, "study")


# ------------------------------------------------------------------------ the network

def load_net(model, model_args=None, weights=None):
    """The network built by the callable ``model``, with the weights in ``weights``.

    Parameters
    ----------
    model : str
        ``package.module:function``, such as ``"torchvision.models:resnet18"``;
        the part after the colon may be dotted (``module:Class.builder``). The
        module is imported from the installed packages or the current folder.
    model_args : dict or None, default=None
        Keyword arguments of the callable.
    weights : str, path-like or None, default=None
        A file written by ``torch.save``: a state dict (a dict of tensors), or
        a checkpoint dict holding one under ``"state_dict"`` or ``"model"``.
        Read with ``torch.load(weights_only=True)``: it is never unpickled.
        None keeps the weights the callable gave the network.

    Returns
    -------
    module : torch.nn.Module
        On the CPU, in eval mode.
    info : dict
        What was built: ``builder``, ``arguments``, ``weights``,
        ``weights_sha256`` and ``parameters``.

    Raises
    ------
    ValueError
        If ``model`` is not found or cannot be called with ``model_args``, or
        if the weights cannot be read or do not fit the module (the message
        lists missing and unexpected keys and shape mismatches).
    TypeError
        If ``model`` is not callable or does not return a torch module.
    FileNotFoundError
        If ``weights`` does not exist.
    """
    model_args = model_args or {}
    module_name, colon, attribute = model.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"--model must name a callable as package.module:function, such as "
                         f"torchvision.models:resnet18; got {model!r}.")
    try:
        with _current_folder_importable():
            builder = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {model}: cannot import the module {module_name!r} ({exc}).") \
            from exc
    for part in attribute.split("."):
        if not hasattr(builder, part):
            raise ValueError(f"--model {model}: {module_name} has no attribute {attribute!r}.")
        builder = getattr(builder, part)
    if not callable(builder):
        raise TypeError(f"--model {model}: {attribute} is not callable (it is a "
                        f"{type(builder).__name__}); name the function that builds the network.")
    try:
        module = builder(**model_args)
    except TypeError as exc:
        raise ValueError(f"--model {model} could not be called with the arguments "
                         f"{model_args}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise TypeError(f"--model {model} returned a {type(module).__name__}, not a "
                        "torch.nn.Module.")
    info = {"builder": model, "arguments": model_args,
            "weights": None if weights is None else os.fspath(weights), "weights_sha256": None}
    if weights is not None:
        state = _read_state_dict(weights)
        _check_fit(module, state, model, weights)
        module.load_state_dict(state)
        info["weights_sha256"] = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    info["parameters"] = sum(p.numel() for p in module.parameters())
    return module.eval(), info


@contextmanager
def _current_folder_importable():
    """Let ``import`` find modules in the current folder, as ``python -m`` does."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _read_state_dict(path):
    """The state dict in the file ``path``, read without unpickling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file.")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for objects; RuntimeError for a corrupt file
        raise ValueError(f"--weights {path} cannot be read with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Files are never "
                         "unpickled: save the weights with torch.save(module.state_dict(), "
                         "path).") from exc

    def tensors(candidate):
        return isinstance(candidate, dict) and candidate and all(
            isinstance(v, torch.Tensor) for v in candidate.values())

    if tensors(value):
        return value
    for key in ("state_dict", "model"):
        if isinstance(value, dict) and tensors(value.get(key)):
            return value[key]
    raise ValueError(f"--weights {path} holds neither a state dict (a dict of tensors) nor a "
                     "checkpoint dict with one under 'state_dict' or 'model'.")


def _check_fit(module, state, model, path):
    """Raise a ValueError that lists how ``state`` does not fit ``module``."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [f"{key} {_shape(state[key])} in the file, {_shape(own[key])} in the module"
                  for key in own if key in state and state[key].shape != own[key].shape]

    def listed(what, keys):
        more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
        return f"{len(keys)} {what} ({', '.join(keys[:5])}{more})"

    problems = [listed(what, keys) for what, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches", mismatched)) if keys]
    if problems:
        raise ValueError(f"--weights {path} do not fit the module built by {model}: "
                         + "; ".join(problems) + ".")


def _shape(tensor):
    return "x".join(map(str, tensor.shape)) or "scalar"


# ------------------------------------------------------------------------ the data

class DatasetRows:
    """A map-style Dataset of ``(image, label)`` pairs, as rows of a float32 array.

    Images are read only when indexed, so an ImageNet-size folder is never
    loaded whole: the study engine reads a batch of rows at a time. Indexing
    takes what NumPy takes along the first axis of an array: an integer (one
    image), a slice, an integer array or a boolean mask (a new float32 array);
    ``np.asarray(rows)`` raises a TypeError rather than read every image.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Returns ``(image, label)``, the image a tensor or array of one fixed
        shape, such as a torchvision dataset with a ``ToTensor`` transform.
    index : array-like of int or None, default=None
        The dataset's items to keep, in order; None keeps all.

    Attributes
    ----------
    shape : tuple of int
        ``(n_samples, *image_shape)``, the image shape read from the first
        image.
    dtype : numpy.dtype
        float32.
    ndim : int
    """

    dtype = np.dtype(np.float32)

    def __init__(self, dataset, index=None):
        self.dataset = dataset
        self.index = np.arange(len(dataset)) if index is None else np.asarray(index, np.int64)
        self.shape = (len(self.index),)
        if len(self.index):
            self.shape += self._read(0).shape
        self.ndim = len(self.shape)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, Integral):
            return self._read(key)
        positions = np.arange(len(self))[key]
        rows = np.empty((len(positions), *self.shape[1:]), dtype=np.float32)
        for i, position in enumerate(positions):
            rows[i] = self._read(position)
        return rows

    def __array__(self, dtype=None, copy=None):
        # Converting every image at once is what this class is there to avoid.
        raise TypeError("DatasetRows is read by index (rows[:] reads every image); it is "
                        "never converted to an array whole.")

    def _read(self, position):
        item = int(self.index[position])
        samples = getattr(self.dataset, "samples", None)
        name = samples[item][0] if samples else f"item {item}"
        try:
            image = np.asarray(self.dataset[item][0], dtype=np.float32)
        except OSError as exc:  # PIL's errors for a damaged or truncated file
            raise ValueError(f"Cannot read the image {name}: {exc}. Remove or replace "
                             "it.") from exc
        if len(self.shape) > 1 and image.shape != self.shape[1:]:
            raise ValueError(f"The images differ in size: {name} is {image.shape}, the first "
                             f"{self.shape[1:]}. Give --image-size to resize and crop them "
                             "all to one size.")
        return image


def load_data(data=None, *, dataset=None, root=None, split=None, download=False,
              image_size=None, resize=None, limit=None, seed=0):
    """The inputs and labels of a study, and what they are.

    Parameters
    ----------
    data : str, path-like or None, default=None
        An ``.npz`` file with a float array ``X`` of shape (n_samples, ...) and
        labels ``y``, or an image folder laid out for
        :class:`torchvision.datasets.ImageFolder` (one subfolder per class).
    dataset : str or None, default=None
        Instead of ``data``, a torchvision dataset: a key of :data:`DATASETS`.
    root : str, path-like or None, default=None
        The torchvision dataset's folder.
    split : str or None, default=None
        Its split; None means ``"test"`` (``"val"`` for ImageNet).
    download : bool, default=False
        Let torchvision fetch the dataset if it is missing.
    image_size : int or None, default=None
        For image folders and torchvision datasets: resize each image's
        shorter side to ``resize`` and crop the centre ``image_size`` square.
    resize : int or None, default=None
        The shorter side before cropping; None means ``image_size``.
    limit : int or None, default=None
        Keep only this many samples, drawn at random (the same draw as
        ``reproduce --limit``).
    seed : int, default=0
        Seeds the draw.

    Returns
    -------
    X : ndarray or DatasetRows of shape (n_samples, ...)
        Float32 images in [0, 1] (an ``.npz``'s own floats as they are).
        Image folders and ImageNet are read from disk when indexed.
    y : ndarray of shape (n_samples,)
    info : dict
        ``source``, ``n_total`` (samples before ``limit``), ``sample_shape``
        and ``classes`` (class names, where the data has them).

    Raises
    ------
    FileNotFoundError
        If the file, folder or dataset is missing.
    ValueError
        If the ``.npz`` lacks ``X`` or ``y``, or holds non-float ``X``; for
        an unknown dataset or split; and for options that do not apply.
    """
    if (data is None) == (dataset is None):
        raise ValueError("Give the data either as --data (an .npz file or an image folder) "
                         "or as --dataset with --root.")
    if resize is not None and image_size is None:
        raise ValueError("--resize needs --image-size, the size of the centre crop.")
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"--data {path}: no such file or folder.")
        if path.is_dir():
            from torchvision.datasets import ImageFolder

            try:
                folder = ImageFolder(path, transform=_transform(image_size, resize))
            except (FileNotFoundError, OSError) as exc:
                raise FileNotFoundError(f"--data {path} is not an image folder (one subfolder "
                                        f"of images per class): {exc}") from exc
            if image_size is None:
                _check_one_size(folder.samples)
            return _subset(folder, _labels(folder), limit, seed, lazy=True,
                           source=f"image folder {path}", classes=folder.classes)
        if image_size is not None:
            raise ValueError("--image-size applies to image folders and torchvision "
                             "datasets; resize an .npz's images before saving them.")
        X, y = _read_npz(path)
        keep = _draw(len(X), limit, seed)
        info = {"source": f".npz file {path}", "n_total": len(X),
                "sample_shape": list(X.shape[1:]), "classes": None}
        return (X, y, info) if keep is None else (X[keep], y[keep], info)
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {list(DATASETS)}; got {dataset!r}.")
    splits, default, downloadable = DATASETS[dataset]
    split = default if split is None else split
    if split not in splits:
        raise ValueError(f"{dataset} has the splits {list(splits)}; got --split {split!r}.")
    if root is None:
        raise ValueError(f"--dataset {dataset} needs --root, the folder that holds it.")
    if download and not downloadable:
        raise ValueError(f"torchvision cannot download {dataset}; put its archives in --root.")
    from torchvision import datasets

    kwargs = {"transform": _transform(image_size, resize)}
    if dataset in ("SVHN", "ImageNet"):
        kwargs["split"] = split
    else:
        kwargs["train"] = split == "train"
    if downloadable:
        kwargs["download"] = download
    try:
        data = getattr(datasets, dataset)(root, **kwargs)
    except (RuntimeError, FileNotFoundError) as exc:
        hint = (" Give --download to let torchvision fetch it." if downloadable else
                " ImageNet needs ILSVRC2012_devkit_t12.tar.gz and the archive (or folder) of "
                "its split in --root.")
        raise FileNotFoundError(f"{dataset} ({split}) was not found under --root {root}: "
                                f"{exc}{hint}") from exc
    if image_size is None and dataset not in IN_MEMORY:
        _check_one_size(data.samples)
    return _subset(data, _labels(data), limit, seed, lazy=dataset not in IN_MEMORY,
                   source=f"torchvision {dataset}, {split} split, under {root}",
                   classes=getattr(data, "classes", None))


def _transform(image_size, resize):
    from torchvision import transforms

    steps = [] if image_size is None else [transforms.Resize(resize or image_size),
                                           transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.ToTensor()])


def _check_one_size(samples):
    """Raise a ValueError if the image files ``samples`` (path, label) differ in size.

    Only the files' headers are read, so that a folder of mixed sizes is refused before
    the study starts rather than midway.
    """
    from PIL import Image

    first = None
    for path, _ in samples:
        with Image.open(path) as image:
            size = image.size
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise ValueError(f"The images differ in size: {path} is {size[0]}x{size[1]}, "
                             f"{first[0]} {first[1][0]}x{first[1][1]}. Give --image-size "
                             "to resize and crop them all to one size.")


def _labels(dataset):
    """A torchvision dataset's labels, read without reading its images."""
    labels = getattr(dataset, "targets", None)
    labels = getattr(dataset, "labels", None) if labels is None else labels
    return np.asarray(labels, dtype=np.int64)


def _draw(n, limit, seed):
    """The sorted positions of ``limit`` of ``n`` samples drawn at random, as ``reproduce``
    draws them; None to keep all."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.RandomState(seed).choice(n, limit, replace=False))


def _subset(dataset, labels, limit, seed, *, lazy, source, classes):
    keep = _draw(len(labels), limit, seed)
    X = DatasetRows(dataset, keep)
    if not len(X):
        raise ValueError(f"{source} holds no images.")
    info = {"source": source, "n_total": len(labels), "sample_shape": list(X.shape[1:]),
            "classes": None if classes is None else list(classes)}
    return (X if lazy else X[:]), labels if keep is None else labels[keep], info


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ("X", "y") if name not in data.files]
            if missing:
                raise KeyError(f"it has no array {' or '.join(missing)} (it has "
                               f"{data.files})")
            X, y = data["X"], data["y"]
    except KeyError as exc:
        raise ValueError(f"--data {path}: {exc.args[0]}; an .npz needs the inputs as X and the "
                         "labels as y.") from exc
    except (ValueError, OSError, AttributeError) as exc:
        # AttributeError: a single .npy array has no .files
        raise ValueError(f"--data {path} is not an .npz archive of numeric arrays X and y "
                         f"readable without pickle: {exc}") from exc
    if X.dtype.kind != "f":
        raise ValueError(f"--data {path}: X holds {X.dtype}, not floats; scale images to "
                         "floats first (for example X / 255 for 0-255 pixels).")
    if X.ndim < 2 or y.shape != (len(X),):
        raise ValueError(f"--data {path}: X must have shape (n_samples, ...) and y one label "
                         f"per sample; got X {X.shape} and y {y.shape}.")
    return X, y


# ------------------------------------------------------------------------ the study

def check_inputs(module, X, y, attack):
    """Run the network on one sample and check its labels; return its number of outputs.

    Parameters
    ----------
    module : torch.nn.Module
    X : array-like of shape (n_samples, ...)
    y : ndarray of shape (n_samples,)
    attack : ResistanceAttack
        Its ``clip``, ``preprocessing`` and ``device`` are checked.

    Returns
    -------
    n_classes : int

    Raises
    ------
    ValueError
        If a sample cannot be read or holds NaN or infinite values (every
        sample is read once, before any attack), the network rejects the
        data's shape (the message gives it), the attack's settings do not fit
        the data, or ``y`` holds labels outside the network's classes.
    """
    _check_every_sample(X)
    shape = tuple(X.shape[1:])
    probe = ResistanceAttack(**{**attack.get_params(), "max_iter": 1, "n_jobs": None,
                                "verbose": False})
    try:  # one step on one sample: the shape, the device, clip and preprocessing
        n_classes = measure(module, X[:1], attack=probe, competitors=()).logits.shape[1]
    except ValueError as exc:
        raise ValueError(f"The network rejects the data: its samples have shape {shape}. "
                         f"{exc}") from exc
    label_indices(y, np.arange(n_classes))
    return n_classes


def _check_every_sample(X, chunk=256):
    """Read every sample once, in chunks, so that a damaged file or a NaN is reported
    before the study starts rather than midway."""
    for start in range(0, len(X), chunk):
        rows = np.asarray(X[start:start + chunk], dtype=np.float32)
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            raise ValueError(f"Sample {start + int(np.argmin(finite))} of the data holds NaN "
                             "or infinite values; every input must be finite.")


def write_study(module, X, y, *, out, net_info, data_info, attack, n_classes, topk=2,
                mode="exact", fast=False, competitors=DEFAULT_COMPETITORS, net_output="logits",
                store=None, per_image=None,
                batch_size=256, n_jobs=None, scheduler=None, seed=0, limit=None,
                n_resamples=1000, timings=None, verbose=True):
    """Study ``module`` on ``X`` and ``y`` and write the report to ``out``.

    Parameters
    ----------
    module : torch.nn.Module
        The trained network, on the attack's device.
    X : array-like of shape (n_samples, ...)
        Float inputs (see :func:`~resistclf.study.measure`).
    y : ndarray of shape (n_samples,)
    out : path
        Output folder: ``report.md``, ``results.json`` and the figures.
    net_info, data_info : dict
        What :func:`load_net` and :func:`load_data` say of them.
    attack : ResistanceAttack
    n_classes : int
        The network's outputs (from :func:`check_inputs`).
    topk : {1, 2, 5}, default=2
        The top-k lists to score: 1 and 2 attack rank 0 (the top-2 list is the
        prediction and the adversarial class), 5 ranks 0 to 2 (fewer where
        the network has fewer than four classes).
    mode : str, default="exact"
        The key of :data:`~resistclf.reports._reference.ATTACK_MODES` that
        ``attack`` runs.
    fast : bool, default=False
        Whether ``--fast`` was given (it runs exact mode while no fast mode
        is shown equivalent).
    per_image : path or None, default=None
        Also write every sample's raw measurements to this CSV file
        (:meth:`~resistclf.study.Measurements.to_csv`).
    competitors : sequence of str, default=DEFAULT_COMPETITORS
    net_output : {"logits", "proba"}, default="logits"
    store : ResultStore or None, default=None
        None means ``ResultStore(out / "cache")``.
    batch_size : int, default=256
    n_jobs : int or None, default=None
    scheduler : str or None, default=None
    seed : int, default=0
        Seeds the folds and the bootstrap.
    limit : int or None, default=None
        Recorded: the ``--limit`` the data was drawn with.
    n_resamples : int, default=1000
    timings : dict or None, default=None
        Seconds of phases already run; this function's phases are added.
    verbose : bool, default=True

    Returns
    -------
    results : dict
        What ``results.json`` holds.
    """
    out = Path(out)
    store = ResultStore(out / "cache") if store is None else store
    timings = {} if timings is None else timings
    ranks = min(TOPK_RANKS[topk], n_classes - 1)
    with _phase(f"measure: logits, the attack at {ranks} rank{'s' * (ranks > 1)}, the "
                "competitors", timings, verbose), parallel_backend(n_jobs, scheduler):
        measured = measure(module, X, y, attack=attack, ranks=ranks, competitors=competitors,
                           net_output=net_output, store=store, batch_size=batch_size,
                           verbose=verbose)
    if per_image is not None:
        measured.to_csv(per_image)
    with _phase("analyse: detectors, metrics, bootstrap intervals", timings, verbose):
        study = analyse(measured, folds=FOLDS, n_resamples=n_resamples, random_state=seed)
    figures, traced_images = {}, None
    with _phase("figures", timings, verbose):
        figures.update(study.figures(X, class_names=data_info.get("classes")))
        if (~measured.is_error).any():
            figures["traces"], traced_images = traces_figure(module, attack, measured, X)
    results = study_results(study, {
        "command": "study",
        "net": {**net_info, "n_classes": n_classes}, "data": data_info, "seed": seed,
        "limit": limit, "n_test": len(measured), "attack": attack.get_params(), "mode": mode,
        "fast": fast, "topk": topk, "ranks": ranks,
        "competitors_run": list(competitors), "traced_images": traced_images})
    results["seconds"] = timings
    write_report(out, _markdown(results, study), results, figures,
                 arrays=measured.to_arrays())
    return results


def recompute(results, arrays):
    """Every number of this command's ``results.json`` from its ``per_image.npz`` (for
    ``resistclf verify``)."""
    return reanalyse_study(results, arrays).to_dict()


def rewrite(results, arrays):
    """The numbers, the Markdown and the array-drawn figures of this command's report, from
    its ``per_image.npz`` (for ``resistclf verify --rewrite``)."""
    return rewrite_study(results, arrays, _markdown)


def _markdown(r, study):
    net, data, a = r["net"], r["data"], r["attack"]
    arguments = ", ".join(f"{k}={v!r}" for k, v in net["arguments"].items())
    weights = ("the weights its builder gave it (no `--weights`)" if net["weights"] is None
               else f"the weights in `{net['weights']}` (SHA-256 {net['weights_sha256'][:12]}…)")
    classes = data["classes"]
    ranks = f"ranks 0 to {r['ranks'] - 1}" if r["ranks"] > 1 else "rank 0"
    description = (
        f"Network `{net['builder']}({arguments})` with {weights}, {net['parameters']:,} "
        f"parameters. Data: **{r['n_test']:,} samples** of shape "
        f"{tuple(data['sample_shape'])} from {data['source']}"
        + (f" (a random subset of {data['n_total']:,}, `--limit {r['limit']}`)"
           if r["n_test"] < data["n_total"] else "")
        + (f", {len(classes)} classes" if classes else "") + ". "
        f"Attack: {a['max_iter']} steps of size {a['step_size']}, {a['norm'].upper()} norm, "
        f"thresholds {tuple(a['thresholds'])}, clip {a['clip']}, preprocessing "
        f"{a['preprocessing']}, at {ranks} (`--topk {r['topk']}`); "
        f"{_mode_sentence(r['mode'], r.get('fast', False))}.")
    return "\n".join([
        header_markdown(f"The study on `{net['builder']}`", r, description,
                        opening=verdict_markdown(r)),
        study.to_markdown(level=2),
        *([("![Misclassified images: true label, prediction, adversarial class, softmax "
            "second choice](errors.png)"), ""] if r["errors"]["count"] else []),
        *(["## An image hard to attack and one easy to attack", "",
           "Conf of the original class (blue) and |r| (red) over the attack.", "",
           "![Attack traces](traces.png)", ""] if r["traced_images"] else []),
        settings_markdown(r),
    ])


def _mode_sentence(mode, fast):
    if mode == "exact":
        return "exact mode (float32, the default)" + (
            "; `--fast` was given, but no fast mode both was shown equivalent to exact mode "
            "by two one-sided tests (docs/results/bench) and ran faster than exact mode on "
            "this machine and net, so exact mode ran"
            if fast else "")
    settings = ", ".join(f"{k}={v!r}" for k, v in ATTACK_MODES[mode].items())
    return (f"**fast mode** (`--fast`: {mode}, `{settings}`). **No benchmark has judged this "
            "mode on this network and data**: `resistclf bench` found it reaches exact mode's "
            "conclusions only for the reference CNN on the full MNIST test set, and no fast "
            "mode did on FashionMNIST (docs/results/bench). Rerun a subset without `--fast` "
            "to check that the conclusions hold here")


def check_competitors(names):
    """The command line's ``--competitors``, checked before any work."""
    unknown = [name for name in names if name not in COMPETITORS]
    if unknown:
        raise ValueError(f"--competitors: unknown {unknown}; the names are "
                         f"{list(COMPETITORS)}.")


def main(args):
    """Entry point of ``resistclf study``."""
    out = Path(args.out or "results/study")
    timings = {}
    verbose = not args.quiet
    # The mode the benchmark showed equivalent on MNIST, the nearest thing to a user's net
    # that it judges, where it is faster on this machine and net; exact mode otherwise.
    mode = FAST_MODES["mnist"] if args.fast else "exact"
    attack = ResistanceAttack(max_iter=args.max_iter, step_size=args.step_size,
                              clip=None if args.clip is None else tuple(args.clip),
                              preprocessing=args.preprocessing, batch_size=args.batch_size,
                              device=args.device)
    try:
        with _phase("load the network and the data", timings, verbose):
            module, net_info = load_net(args.model, dict(args.model_arg or []), args.weights)
            X, y, data_info = load_data(args.data, dataset=args.dataset, root=args.root,
                                        split=args.split, download=args.download,
                                        image_size=args.image_size, resize=args.resize,
                                        limit=args.limit, seed=args.seed)
            n_classes = check_inputs(module, X, y, attack)
            competitors = DEFAULT_COMPETITORS if args.competitors is None else args.competitors
            check_competitors(competitors)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"resistclf study: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if mode != "exact":
        mode = fastest_mode(module, X, {mode: ATTACK_MODES[mode]}, attack=attack)["mode"]
    attack.set_params(**ATTACK_MODES[mode])
    write_study(module, X, y, out=out, net_info=net_info, data_info=data_info, attack=attack,
                n_classes=n_classes, topk=args.topk, mode=mode, fast=args.fast,
                per_image=args.per_image,
                competitors=competitors, net_output=args.net_output,
                store=ResultStore(out / "cache" if args.cache is None else args.cache),
                batch_size=args.batch_size, n_jobs=args.n_jobs, scheduler=args.scheduler,
                seed=args.seed, limit=args.limit, n_resamples=args.n_resamples,
                timings=timings, verbose=verbose)

