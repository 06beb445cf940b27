"""``resistclf shift``: failure detection under distribution shift, beside the softmax and the
minimum-norm attacks.

On i.i.d. test images resistance adds nothing to the softmax. FD-Shifts (Jaeger et al., ICLR
2023) judges failure detection where the softmax is least trustworthy: under corruption and
new-class shift. The reference CNN is studied by the engine (:mod:`resistclf.study`) on

- i.i.d. test images;
- the same images under each of MNIST-C's 15 corruptions (:func:`resistclf.datasets.corrupt`,
  made locally from a seed), and all of them pooled;
- test images of the other data set (FashionMNIST for the MNIST net and the reverse): every
  prediction on them is a failure, FD-Shifts' convention for new-class shift.

Each shifted set is scored mixed with the i.i.d. images, as FD-Shifts scores a test set that
holds both; accuracy and the correction claim are measured on the shifted images alone.
"""

from functools import partial
from pathlib import Path

import numpy as np

from .. import ResistanceAttack, ResultStore
from ..datasets import CORRUPTIONS, corrupt
from ..study import COMPETITORS, DEFAULT_COMPETITORS, Measurements, analyse, \
    complementarity_table, cost_cell, count_cell, detection_table, distance_name, \
    markdown_table, measure, metric_cell, percent_cell, proportion
from ._reference import DATASETS, NAMES, attack_mode, load_dataset, mode_sentence, \
    reference_net
from ._report import environment, header_markdown, parallel_backend, phase, \
    settings_markdown, write_report

#: The data set each net sees as new-class shift.
NEW_CLASS = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
#: The competitors of a shift study: each at its own default budget, and at 500 steps, the
#: budget of the resistance attack.
SHIFT_COMPETITORS = (*DEFAULT_COMPETITORS, "FMN-L2, 500 steps", "FMN-Linf, 500 steps",
                     "DDN, 500 steps")
#: The scores of the overview tables, where measured.
KEY_SCORES = ["max-softmax", "Res_N", "Res_mean", "LR(resistance)", "DeepFool distance",
              "FMN-L2 distance", "FMN-Linf distance", "DDN distance",
              "FMN-L2, 500 steps distance", "DDN, 500 steps distance",
              "LR(softmax + resistance)"]
FOLDS = 5

_phase = partial(phase, "shift")


def run_shift(dataset, root, *, out, cache=None, download=False, seed=0, limit=1000,
              max_iter=500, n_resamples=1000, fast=False, corruptions=CORRUPTIONS,
              competitors=SHIFT_COMPETITORS, n_jobs=None, scheduler=None, verbose=True):
    """Study the reference net on i.i.d., corrupted and new-class images; write the report.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files of both MNIST and FashionMNIST.
    out : path
        Output folder of the report.
    cache : path or None, default=None
        The :class:`~resistclf.ResultStore` folder for the trained net and every
        per-image result; None means ``out/cache``.
    download : bool, default=False
        Let torchvision fetch missing files.
    seed : int, default=0
        Seeds the net's training, the test images drawn, the corruptions, the folds
        and the bootstrap.
    limit : int, default=1000
        Test images drawn at random; each corruption corrupts the same ones, and as
        many images of the other data set make the new-class shift.
    max_iter : int, default=500
        Steps of the resistance attack.
    n_resamples : int, default=1000
        Bootstrap resamples for the 95% intervals.
    fast : bool, default=False
        Attack in the fastest mode the benchmark found equivalent to exact mode.
    corruptions : sequence of str, default=CORRUPTIONS
        Names from :data:`resistclf.datasets.CORRUPTIONS`.
    competitors : sequence of str, default=SHIFT_COMPETITORS
        Names from :data:`resistclf.study.COMPETITORS`.
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
    unknown = [name for name in corruptions if name not in CORRUPTIONS]
    if isinstance(corruptions, str) or unknown or not corruptions:
        raise ValueError(f"corruptions must be names from {list(CORRUPTIONS)}; got "
                         f"{corruptions!r}.")
    out = Path(out)
    store = ResultStore(out / "cache" if cache is None else cache)
    timings = {}
    with _phase("load the data and the reference net", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        net, net_info = reference_net(X_train, y_train, store=store, seed=seed,
                                      verbose=verbose)
        rng = np.random.RandomState(seed)
        keep = np.sort(rng.choice(len(X_test), min(limit, len(X_test)), replace=False))
        X, y = X_test[keep], y_test[keep]
        X_new, _ = DATASETS[NEW_CLASS[dataset]](root, train=False, download=download)
        X_new = X_new[np.sort(rng.choice(len(X_new), min(limit, len(X_new)), replace=False))]
    with _phase("corrupt the test images", timings, verbose):
        shifted = {name: store.arrays("corrupted", (name, X, keep, seed),
                                      lambda name=name: {"X": corrupt(X, name, seed=seed,
                                                                      index=keep)})["X"]
                   for name in corruptions}

    mode, settings = attack_mode(fast, dataset)
    attack = ResistanceAttack(max_iter=max_iter, **settings)
    sets = {"i.i.d.": (X, y), **{name: (images, y) for name, images in shifted.items()},
            "new class": (X_new, None)}
    measured = {}
    for name, (images, labels) in sets.items():
        with _phase(f"measure: {name}", timings, verbose), parallel_backend(n_jobs, scheduler):
            measured[name] = measure(net, images, labels, attack=attack,
                                     competitors=competitors, store=store, verbose=verbose)

    with _phase("analyse every set, mixed with the i.i.d. images", timings, verbose):
        iid = measured["i.i.d."]
        pooled = Measurements.concatenate([measured[name] for name in corruptions])
        run = partial(analyse, folds=FOLDS, n_resamples=n_resamples, random_state=seed)
        studies = {"i.i.d.": run(iid)}
        for name in [*corruptions, "new class"]:
            studies[name] = run(Measurements.concatenate([iid, measured[name]]))
        studies["all corruptions"] = run(Measurements.concatenate([iid, pooled]))
        alone = {name: run(measured[name]) for name in corruptions}
        alone["all corruptions"] = run(pooled)
    results = {
        "dataset": dataset, "new_class_dataset": NEW_CLASS[dataset], "seed": seed,
        "limit": limit, "n_train": int(len(X_train)), "n_test": int(len(X_test)),
        "n_images": int(len(X)), "corruptions": list(corruptions),
        "competitors": {name: COMPETITORS[name] for name in competitors},
        "net": net_info, "attack": attack.get_params(), "mode": mode, "fast": fast,
        "folds": FOLDS, "n_resamples": n_resamples, "environment": environment(),
        "sets": {name: _set_summary(study, alone.get(name),
                                    pooled if name == "all corruptions" else measured[name],
                                    n_resamples, seed)
                 for name, study in studies.items()},
    }
    with _phase("figures and report", timings, verbose):
        figures = {f"{key}_{figure}": fig
                   for key, name in (("pooled", "all corruptions"), ("new_class", "new class"))
                   for figure, fig in studies[name].figures().items()
                   if figure == "risk_coverage"}
        figures["corrupted_images"] = _examples_figure(X, y, shifted)
    results["seconds"] = timings
    write_report(out, _markdown(results, studies), results, figures)
    return results


def _set_summary(mixed, alone, shifted, n_resamples, seed):
    """What the report shows of one set: accuracy on its images, detection on the mixed set,
    and the correction claim and costs on its images alone (``alone``; None for the i.i.d.
    and new-class sets, whose mixed study holds what they need)."""
    r = mixed.to_dict()
    own = r if alone is None else alone.to_dict()
    return {
        "accuracy": proportion(~shifted.is_error, n_resamples=n_resamples, random_state=seed),
        "n_shifted": len(shifted), "n_mixed": r["n_samples"], "errors_mixed": r["errors"],
        "detection": r["detection"], "complementarity": r["complementarity"],
        "correction": own["correction"], "competitors": own["competitors"],
        "cost": own["cost"],
    }


def _examples_figure(X, y, shifted):
    from ..plotting import plot_image_grid

    shown = np.arange(min(3, len(X)))
    images, titles = [], []
    for i in shown:
        images.append(X[i])
        titles.append(f"i.i.d.: {y[i]}")
        for name, corrupted in shifted.items():
            images.append(corrupted[i])
            titles.append(name.replace("_", " "))
    return plot_image_grid(np.array(images), titles, columns=len(shifted) + 1)


def _markdown(r, studies):
    sets = r["sets"]
    shown = [name for name in KEY_SCORES
             if any(s["detection"] and name in s["detection"] for s in sets.values())]

    def metric(name, score, key):
        d = sets[name]["detection"]
        return "n/a" if d is None or score not in d else metric_cell(d[score], key)

    def complement(name):
        c = sets[name]["complementarity"]
        if c is None:
            return "n/a"
        row = c["resistance beyond the softmax"]["auroc"]
        low, high = row["ci"]
        return f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}]: {row['verdict']}"

    def correction(name, key):
        cor = sets[name]["correction"]
        return count_cell(cor[key]) if key in cor else "n/a"

    a = r["attack"]
    order = ["i.i.d.", *r["corruptions"], "all corruptions", "new class"]
    lines = [
        header_markdown(
            f"Failure detection under distribution shift, on {NAMES[r['dataset']]}", r,
            f"Reference CNN ({r['net']['architecture']}, {r['net']['optimizer']}, "
            f"{r['net']['epochs']} epochs, seed {r['seed']}) trained on **{r['n_train']:,} "
            f"training images**. **{r['n_images']:,} test images** drawn at random (seed "
            f"{r['seed']}); each of MNIST-C's corruptions applied to the same images "
            "(`resistclf.datasets.corrupt`, made locally, seed "
            f"{r['seed']}); as many {NAMES[r['new_class_dataset']]} test images for "
            f"new-class shift. Attack: {a['max_iter']} steps of size {a['step_size']}, "
            f"{a['norm'].upper()} norm; {mode_sentence(r['mode'], r['dataset'], r['fast'])}."),
        "Following FD-Shifts (Jaeger et al., ICLR 2023), a *failure* is a wrong prediction; "
        "on new-class images every prediction is one. Each shifted set is scored **mixed with "
        "the i.i.d. images** (the i.i.d. row alone), so AUGRC, FD-Shifts' recommended metric, "
        "is computed on the mixed set. Accuracy and the correction claim are measured on the "
        "shifted images alone. Every score is oriented so that higher means more likely a "
        "failure; AURC and AUGRC are ×1000, lower is better. LR is `make_detector()`, scored "
        f"{r['folds']}-fold out of fold.",
        "",
        "## Accuracy",
        "",
        markdown_table(["set", "images", "accuracy", "failures in the mixed set"],
                       [[name, sets[name]["n_shifted"],
                         percent_cell(sets[name]["accuracy"]),
                         count_cell(sets[name]["errors_mixed"])] for name in order]),
        "",
        "![Each corruption on the same images](corrupted_images.png)",
        "",
        "## Failure detection per set: AUROC",
        "",
        markdown_table(["set", *shown], [[name, *(metric(name, s, "auroc") for s in shown)]
                                         for name in order]),
        "",
        "## Failure detection per set: AURC ×1000 (lower is better)",
        "",
        markdown_table(["set", *shown], [[name, *(metric(name, s, "aurc") for s in shown)]
                                         for name in order]),
        "",
        "## Does resistance add anything beyond the softmax?",
        "",
        "Δ AUROC of `make_detector()` on the eight softmax-derived scores with the resistance "
        "features added, against without, out of fold on the same folds, with its paired "
        "bootstrap 95% interval.",
        "",
        markdown_table(["set", "Δ AUROC, resistance beyond the softmax"],
                       [[name, complement(name)] for name in order]),
        "",
        "## The correction claim under shift",
        "",
        "Among the shifted images' errors (those with a true label among the net's classes): "
        "how often the class each method lands in is the true label.",
        "",
        markdown_table(["set", "resistance's adversarial class", "softmax second choice",
                        "DeepFool's class", "FMN-L2's class", "DDN's class"],
                       [[name, *(correction(name, key) for key in (
                           "adversarial_class_is_true", "second_choice_is_true",
                           "DeepFool_class_is_true", "FMN-L2_class_is_true",
                           "DDN_class_is_true"))] for name in order[:-1]]),
        "",
    ]
    for name, title in (("all corruptions", "All corruptions pooled, mixed with i.i.d."),
                        ("new class", "New-class shift, mixed with i.i.d.")):
        s = sets[name]
        if s["detection"] is None:
            continue
        key = "pooled" if name == "all corruptions" else "new_class"
        lines += [f"## {title}: every score", "",
                  detection_table(s["detection"], studies[name].groups, s["cost"]), "",
                  complementarity_table(s["complementarity"]), "",
                  f"![Risk against coverage]({key}_risk_coverage.png)", ""]
    pooled = sets["all corruptions"]
    lines += ["## Resistance and the minimum-norm attacks, on the pooled corrupted images", "",
              markdown_table(["competitor", "ρ with Res_N", "ρ with Res_max", "ρ with Res_min",
                              "ρ with Res_mean", "same class as the resistance attack",
                              "cost per image"],
                             [[name, *("n/a" if rho is None else f"{rho:.3f}"
                                       for rho in row["spearman"].values()),
                               count_cell(row["same_class_as_resistance"])
                               if "same_class_as_resistance" in row else "no class",
                               cost_cell(pooled["cost"].get(distance_name(name)))]
                              for name, row in pooled["competitors"].items()]), "",
              f"Resistance costs {cost_cell(pooled['cost']['Res_N'])} per image.", "",
              settings_markdown(r)]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf shift``."""
    out = args.out or f"results/shift-{args.dataset}"
    run_shift(args.dataset, args.root, out=out, cache=args.cache, download=args.download,
              seed=args.seed, limit=args.limit, max_iter=args.max_iter,
              n_resamples=args.n_resamples, fast=args.fast,
              corruptions=args.corruptions or CORRUPTIONS, n_jobs=args.n_jobs,
              scheduler=args.scheduler, verbose=not args.quiet)
