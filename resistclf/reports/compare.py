"""``resistclf compare``: resistance across different trained networks, on the same images.

The write-up's correspondent asked whether the effect holds "when you compare two different
trained models to each other". Three networks are trained the reference way and attacked on
the same test images: the reference CNN, an MLP, and the CNN trained on a quarter of the
training images. Each is scored beside its own max-softmax.
"""

from functools import partial
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from .. import ResistanceAttack
from ..metrics import softmax_topk
from ..models import MLP, SimpleCNN
from ..plotting import plot_boxplots
from ..scores import SOFTMAX_SCORES
from ._detection import (
    ATTACK_DISTANCES,
    RESISTANCE,
    cached_competitor_scores,
    complementarity,
    complementarity_markdown,
    detection_markdown,
    learned_scores,
    metric_cell,
    resistance_scores,
    risk_coverage_figure,
    score_metrics,
)
from ._reference import NAMES, attack_mode, load_dataset, mode_sentence, reference_net
from ._report import call_repr, environment, keep_first_timings, load_attack_cache, \
    parallel_backend, phase, rate, table, with_interval, write_report

#: The networks: name -> (cache file, module, fraction of the training images).
#: "net.pt" is the reference CNN's file in every command's output folder.
NETS = {
    "CNN": ("net.pt", SimpleCNN, 1.0),
    "MLP": ("mlp.pt", MLP, 1.0),
    "CNN, quarter of the data": ("cnn-quarter.pt", SimpleCNN, 0.25),
}
#: The panels of the box plots, every one on a log axis.
BOXES = ["Res_N", "Res_max", "Res_min (steps)", "Res_mean", "1 - max-softmax (baseline)"]
#: The scores compared across the networks in the overview table.
OVERVIEW = ["Res_N", "Res_max", "Res_min", "Res_mean", "LR(resistance)", "max-softmax",
            "input-space margin", "DeepFool distance", "LR(softmax + resistance)"]
FOLDS = 5

_phase = partial(phase, "compare")


def run_compare(dataset, root, *, out, download=False, seed=0, limit=1000, max_iter=500,
                n_resamples=1000, fast=False, n_jobs=None, scheduler=None, verbose=True):
    """Train (or load) the networks, attack the same test images with each, and compare.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder. The trained nets and the attack results are cached there.
    download : bool, default=False
        Let torchvision fetch missing files.
    seed : int, default=0
        Seeds the nets' training, the quarter subset, the test subset, the
        folds and the bootstrap.
    limit : int, default=1000
        Number of test images, drawn at random (all of them if fewer).
    max_iter : int, default=500
        Steps of the resistance attack.
    n_resamples : int, default=1000
        Bootstrap resamples for the 95% intervals.
    fast : bool, default=False
        Attack in the fastest mode the benchmark found equivalent to exact mode.
    n_jobs : int or None, default=None
        Worker processes for the attack (see ``parallel_backend``).
    scheduler : str or None, default=None
        Address of a dask scheduler to run the attack's jobs on.
    verbose : bool, default=True
        Progress on standard error.

    Returns
    -------
    results : dict
        What ``results.json`` holds.
    """
    out = Path(out)
    timings = {}
    with _phase("load the data", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        rng = np.random.RandomState(seed)
        keep = np.sort(rng.choice(len(X_test), min(limit, len(X_test)), replace=False))
        X, y = X_test[keep], y_test[keep]

    nets, infos = {}, {}
    for name, (file, module, fraction) in NETS.items():
        with _phase(f"train or load: {name}", timings, verbose):
            train = np.arange(len(X_train)) if fraction == 1 else train_test_split(
                np.arange(len(X_train)), train_size=fraction, stratify=y_train,
                random_state=seed)[0]
            params = {"n_features": int(np.prod(X_train.shape[1:]))} if module is MLP else None
            nets[name], infos[name] = reference_net(
                X_train[train], y_train[train], cache=out / file, seed=seed, module=module,
                module_params=params, verbose=verbose)

    mode, settings = attack_mode(fast, dataset)
    attack = ResistanceAttack(max_iter=max_iter, verbose=verbose, **settings)
    cache_path = out / "attack-cache.npz"
    cache = load_attack_cache(cache_path)
    attacked, logits, cached = {}, {}, []
    for name, net in nets.items():
        phase_name = f"attack the test images: {name}"
        with _phase(phase_name, timings, verbose), parallel_backend(n_jobs, scheduler):
            before = len(cache)
            attacked[name] = cache.attack(attack, net.module_, X)
            cache.save(cache_path)
            logits[name] = net.forward(X, training=False).numpy()
        cached += [phase_name] if len(cache) == before else []

    analysis, scores = {}, {}
    for (name, net), (file, _, _) in zip(nets.items(), NETS.values()):
        with _phase(f"competitors, learned detectors and metrics: {name}", timings, verbose):
            competitors = cached_competitor_scores(
                out / f"competitors-{Path(file).stem}", infos[name], net.module_, logits[name],
                X)
            analysis[name], scores[name] = _analyse(attacked[name], logits[name], competitors,
                                                    y, seed, n_resamples)
    results = {
        "dataset": dataset, "seed": seed, "limit": limit, "n_train": int(len(X_train)),
        "n_test": int(len(X_test)), "n_images": int(len(X)), "nets": infos,
        "attack": attack.get_params(), "mode": mode, "fast": fast, "folds": FOLDS, "n_resamples": n_resamples,
        "environment": environment(), "comparison": analysis,
    }
    with _phase("figures and report", timings, verbose):
        figures = _figures(attacked, scores)
    keep_first_timings(out, timings, cached)
    results["seconds"] = timings
    write_report(out, _markdown(results), results, figures)
    return results


def _analyse(result, logits, competitors, y, seed, n_resamples):
    """One net's accuracy, resistance and error detection on the test images."""
    is_error = result.c0 != y
    errors = np.flatnonzero(is_error)
    second = softmax_topk(logits, np.arange(logits.shape[1]), 2)[:, 1]
    competitors, cost, fooled = competitors
    n_errors = int(is_error.sum())
    summary = {
        "accuracy": rate(~is_error, n_resamples=n_resamples, seed=seed),
        "flip_rate": float(result.flipped.mean()),
        "mean": {group: {"Res_N": float(result.res_n[mask].mean()),
                         "Res_max": float(result.res_max[mask].mean()),
                         "Res_min": float(result.res_min[mask].mean()),
                         "Res_mean": float(result.res_mean[mask].mean()),
                         "max-softmax": float(result.conf0[mask].mean())} if mask.any() else None
                 for group, mask in [("all", np.ones_like(is_error)), ("correct", ~is_error),
                                     ("incorrect", is_error)]},
        "correction": {
            "adversarial_class_is_true": rate(result.adversarial_class[errors] == y[errors],
                                              n_resamples=n_resamples, seed=seed),
            "second_choice_is_true": rate(second[errors] == y[errors],
                                          n_resamples=n_resamples, seed=seed),
            "deepfool_class_is_true": rate(fooled.adversarial_class[errors] == y[errors],
                                           n_resamples=n_resamples, seed=seed),
        },
        "cost": cost,
        "detection": None,
        "complementarity": None,
    }
    if min(n_errors, len(y) - n_errors) < 2:
        return summary, None
    folds = StratifiedKFold(min(FOLDS, n_errors, len(y) - n_errors), shuffle=True,
                            random_state=seed)
    resistance = resistance_scores(result)
    softmax = {name: competitors[name] for name in SOFTMAX_SCORES}
    distances = {name: competitors[name] for name in ATTACK_DISTANCES}
    learned = learned_scores(is_error, resistance, softmax, distances, folds)
    scores = {**resistance, "LR(resistance)": learned.pop("LR(resistance)"), **softmax,
              **distances, **learned}
    summary["detection"] = score_metrics(is_error, scores, n_resamples=n_resamples, seed=seed)
    summary["complementarity"] = complementarity(is_error, scores, n_resamples=n_resamples,
                                                 seed=seed)
    return summary, (is_error, scores)


def _figures(attacked, scores):
    import matplotlib.pyplot as plt

    curves, axes = plt.subplots(1, len(attacked), figsize=(6 * len(attacked), 5), squeeze=False)
    for ax, name in zip(axes[0], attacked):
        if scores[name] is None:
            ax.set_title(name)
            ax.text(0.5, 0.5, "too few errors or correct predictions", ha="center")
            continue
        risk_coverage_figure(*scores[name], OVERVIEW, title=f"{name}: risk against coverage",
                             ax=ax)
        ax.legend(fontsize=6)
    curves.tight_layout()
    groups = {}
    for name, result in attacked.items():
        is_error = scores[name][0] if scores[name] is not None else np.zeros(len(result), bool)
        for group, mask in [("correct", ~is_error), ("incorrect", is_error)]:
            if mask.any():
                groups[f"{name}, {group}"] = [result.res_n[mask], result.res_max[mask],
                                              result.res_min[mask].astype(float),
                                              result.res_mean[mask], 1 - result.conf0[mask]]
    return {"risk_coverage": curves,
            "features": plot_boxplots(groups, BOXES, log_panels=BOXES)}


def _markdown(r):
    nets = r["comparison"]
    names = list(nets)
    pct = lambda d: with_interval(d["value"], d["ci"], percent=True)  # noqa: E731

    def metric(name, score, key):
        d = nets[name]["detection"]
        return "n/a" if d is None else metric_cell(d[score], key)

    def mean_cell(name, group, key, digits=3):
        m = nets[name]["mean"][group]
        return "n/a" if m is None else f"{m[key]:.{digits}f}"

    def count(d):
        return f"{d['count']} of {d['of']}"

    lines = [
        f"# Resistance across trained networks, on {NAMES[r['dataset']]}",
        "",
        f"Three networks, each trained with Adam (lr 1e-3, batches of 128) for "
        f"{r['nets'][names[0]]['epochs']} epochs with seed {r['seed']}, attacked on the same "
        f"**{r['n_images']:,} test images** (a random subset of the {r['n_test']:,}, seed "
        f"{r['seed']}). Attack: {r['attack']['max_iter']} steps of size "
        f"{r['attack']['step_size']}, {r['attack']['norm'].upper()} norm; "
        f"{mode_sentence(r['mode'], r['dataset'], r['fast'])}. Each net's own errors are the positive class and every "
        "score is oriented so that higher means more likely an error (AURC ×1000: lower is "
        f"better). Learned detectors are scored {r['folds']}-fold out-of-fold on each net's "
        "images, on the same folds. Brackets hold bootstrap 95% intervals "
        f"({r['n_resamples']} resamples of the images). With a few dozen errors per net, the "
        "intervals are wide: the reproduce reports, on 10,000 images, are the firmer test.",
        "",
    ]
    if r["dataset"] == "mnist" and r["n_train"] < 60000:
        lines += [f"MNIST's training split here holds only the first {r['n_train']:,} of the "
                  "official 60,000 images.", ""]
    lines += [
        table(["", *names], [
            ["architecture", *(r["nets"][n]["architecture"] for n in names)],
            ["training images", *(f"{r['nets'][n]['n_train']:,}" for n in names)],
            ["accuracy", *(pct(nets[n]["accuracy"]) for n in names)],
            ["errors", *(str(nets[n]["accuracy"]["of"] - nets[n]["accuracy"]["count"])
                         for n in names)],
            ["mean Res_N, all / correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_N") for g in ("all", "correct", "incorrect"))
               for n in names)],
            ["mean Res_mean, correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_mean") for g in ("correct", "incorrect"))
               for n in names)],
            ["mean Res_min (steps), correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_min", 1) for g in ("correct", "incorrect"))
               for n in names)],
            ["mean max-softmax, correct / incorrect",
             *(" / ".join(mean_cell(n, g, "max-softmax") for g in ("correct", "incorrect"))
               for n in names)],
            ["resistance attack flipped the prediction",
             *(f"{100 * nets[n]['flip_rate']:.1f}%" for n in names)],
            *([f"AUROC, {score}", *(metric(n, score, "auroc") for n in names)]
              for score in OVERVIEW),
            *([f"AURC ×1000, {score}", *(metric(n, score, "aurc") for n in names)]
              for score in OVERVIEW),
            ["errors whose true label is the adversarial class",
             *(count(nets[n]["correction"]["adversarial_class_is_true"]) for n in names)],
            ["errors whose true label is the softmax 2nd choice (baseline)",
             *(count(nets[n]["correction"]["second_choice_is_true"]) for n in names)],
            ["errors whose true label is DeepFool's class",
             *(count(nets[n]["correction"]["deepfool_class_is_true"]) for n in names)],
        ]),
        "",
        "![Risk against coverage](risk_coverage.png)",
        "",
        "![Resistance and max-softmax, correct and incorrect predictions](features.png)",
        "",
    ]
    for name in names:
        net = nets[name]
        lines += [f"## {name}", ""]
        if net["detection"] is None:
            lines += ["Too few errors or correct predictions to score detectors.", ""]
            continue
        resistance = [*RESISTANCE, "LR(resistance)"]
        groups = {
            "resistance (this library)": resistance,
            "softmax-derived, from one forward pass": list(SOFTMAX_SCORES),
            "attack-based competitors": list(ATTACK_DISTANCES),
            "learned combinations (out-of-fold)": [
                s for s in net["detection"] if s not in (*resistance, *SOFTMAX_SCORES,
                                                         *ATTACK_DISTANCES)],
        }
        lines += [detection_markdown(net["detection"], groups, net["cost"]), "",
                  "Does resistance add anything beyond the softmax? (Δ = with − without, paired "
                  "bootstrap 95% interval; `make_detector()` on the same folds.)", "",
                  complementarity_markdown(net["complementarity"]), ""]
    lines += [
        "## Settings, versions and timings",
        "",
        f"- Attack: `{call_repr('ResistanceAttack', r['attack'])}`",
        *(f"- {n}: {', '.join(f'{k} {v}' for k, v in r['nets'][n].items())}" for n in names),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in r["environment"].items()
                                   if k != "machine"),
        f"- Machine: {r['environment']['machine']}",
        f"- Seed {r['seed']}; wall time per phase (s), as first computed: "
        + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf compare``."""
    out = args.out or f"results/compare-{args.dataset}"
    run_compare(args.dataset, args.root, out=out, download=args.download, seed=args.seed,
                limit=args.limit, max_iter=args.max_iter, n_resamples=args.n_resamples,
                fast=args.fast, n_jobs=args.n_jobs, scheduler=args.scheduler,
                verbose=not args.quiet)
