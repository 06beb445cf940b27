"""``resistclf shift``: failure detection under distribution shift, beside the softmax and the
minimum-norm attacks.

On i.i.d. test images resistance adds nothing to the softmax. FD-Shifts (Jaeger et al., ICLR
2023) judges failure detection where the softmax is least trustworthy: under corruption and
new-class shift. The reference CNN, or a network of your own (``--model``), is studied by the
engine (:mod:`resistclf.study`) on

- i.i.d. test images;
- the same images under each of MNIST-C's 15 corruptions (:func:`resistclf.datasets.corrupt`,
  made locally from a seed), and all of them pooled;
- test images of the other data set (FashionMNIST for the MNIST net and the reverse): every
  prediction on them is a failure, FD-Shifts' convention for new-class shift.

Each shifted set is scored mixed with the i.i.d. images, as FD-Shifts scores a test set that
holds both; accuracy and the correction claim are measured on the shifted images alone.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from .. import ResistanceAttack, ResultStore
from ..datasets import CORRUPTIONS, corrupt
from ..metrics import MeanDifference, holm_family, paired_difference
from ..study import COMPETITORS, DEFAULT_COMPETITORS, PRIMARY_QUESTION, Measurements, analyse, \
    complementarity_table, cost_cell, count_cell, detection_table, distance_name, \
    markdown_table, measure, metric_cell, p_cell, percent_cell, proportion, tests_markdown, \
    verdict_markdown
from ._reference import DATASETS, NAMES, attack_mode, load_dataset, mode_sentence, \
    reference_net
from ._report import FOLDS, environment, header_markdown, parallel_backend, phase, \
    settings_markdown, write_report
from .study import check_competitors, check_inputs, load_net

#: The data set each net sees as new-class shift.
NEW_CLASS = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
#: The competitors of a shift study: each at its own default budget. (At 200 images per set
#: on both datasets, 500 steps of FMN and DDN gave the same AUROC as Foolbox's 100 to within
#: 0.001 on every pooled and new-class set; a TOST of that on per-image data is still owed.)
SHIFT_COMPETITORS = DEFAULT_COMPETITORS
#: The scores of the overview tables, where measured.
KEY_SCORES = ["max-softmax", "Res_N", "Res_mean", "LR(resistance)", "DeepFool distance",
              "FMN-L2 distance", "FMN-Linf distance", "DDN distance",
              "FMN-L2, 500 steps distance", "DDN, 500 steps distance",
              "LR(softmax + resistance)"]

_phase = partial(phase, "shift")


def run_shift(dataset, root, *, out, net=None, net_info=None, net_output="auto",
              cache=None, download=False, seed=0, limit=1000, max_iter=500, n_resamples=1000,
              fast=False, corruptions=CORRUPTIONS, competitors=SHIFT_COMPETITORS,
              per_image=None, n_jobs=None, scheduler=None, verbose=True):
    """Study a net on i.i.d., corrupted and new-class images; write the report.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files of both MNIST and FashionMNIST.
    out : path
        Output folder of the report.
    net : torch.nn.Module or None, default=None
        Your own trained network: it takes the data set's images, shape
        ``(n, 1, 28, 28)`` with pixels in [0, 1], and returns one output per
        class. None trains the reference CNN on the data set's training
        images first (20 epochs: about ten minutes on two CPU cores), or reuses
        the one ``cache`` holds.
    net_info : dict or None, default=None
        What the report says of ``net`` (such as :func:`~resistclf.reports.study.
        load_net`'s ``info``).
    net_output : {"auto", "logits", "proba"}, default="auto"
        What ``net`` returns (see :func:`resistclf.study.measure`).
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
    per_image : path or None, default=None
        Also write every image's raw measurements in every set to this CSV file,
        with its set and source image (:meth:`~resistclf.study.Measurements.to_csv`).
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
    unknown = [name for name in competitors if name not in COMPETITORS]
    if isinstance(competitors, str) or unknown:
        raise ValueError(f"competitors must be names from {list(COMPETITORS)}; got "
                         f"{competitors!r}.")
    out = Path(out)
    store = ResultStore(out / "cache" if cache is None else cache)
    timings = {}
    with _phase("load the data and the net", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        if net is None:
            net, net_info = reference_net(X_train, y_train, store=store, seed=seed,
                                          verbose=verbose)
        else:
            net_info = {"builder": type(net).__name__, **(net_info or {})}
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

    mode, settings = attack_mode(fast, dataset, getattr(net, "module_", net), X, store)
    attack = ResistanceAttack(max_iter=max_iter, **settings)
    sets = {"i.i.d.": (X, y), **{name: (images, y) for name, images in shifted.items()},
            "new class": (X_new, None)}
    measured = {}
    for name, (images, labels) in sets.items():
        with _phase(f"measure: {name}", timings, verbose), parallel_backend(n_jobs, scheduler):
            measured[name] = measure(net, images, labels, attack=attack,
                                     competitors=competitors, net_output=net_output,
                                     store=store, verbose=verbose)

    if per_image is not None:
        names = list(measured)
        Measurements.concatenate([measured[name] for name in names]).to_csv(
            per_image, sources=np.concatenate([_sources(name, measured) for name in names]),
            leading={"set": np.repeat(names, [len(measured[name]) for name in names])})
    with _phase("analyse every set, mixed with the i.i.d. images", timings, verbose):
        sets, studies = analyse_sets(measured, corruptions, n_resamples=n_resamples, seed=seed)
    results = {
        "command": "shift", "dataset": dataset, "new_class_dataset": NEW_CLASS[dataset],
        "seed": seed,
        "limit": limit, "n_train": int(len(X_train)), "n_test": int(len(X_test)),
        "n_images": int(len(X)), "corruptions": list(corruptions),
        "competitors": {name: COMPETITORS[name] for name in competitors},
        "net": net_info, "attack": attack.get_params(), "mode": mode, "fast": fast,
        "folds": FOLDS, "n_resamples": n_resamples, "environment": environment(),
        **sets,
    }
    with _phase("figures and report", timings, verbose):
        figures = {**_risk_coverage_figures(studies),
                   "corrupted_images": _examples_figure(X, y, shifted)}
    results["seconds"] = timings
    arrays = {f"{name}/{key}": value for name, m in measured.items()
              for key, value in m.to_arrays().items()}
    write_report(out, _markdown(results, studies), results, figures, arrays=arrays)
    return results


def _risk_coverage_figures(studies):
    """The risk-coverage figures of the pooled corruptions and of the new class."""
    return {f"{key}_risk_coverage": studies[name].figures()["risk_coverage"]
            for key, name in (("pooled", "all corruptions"), ("new_class", "new class"))}


def rewrite(results, arrays):
    """The numbers, the Markdown and the array-drawn figures of a shift report, from its
    ``per_image.npz`` (for ``resistclf verify --rewrite``)."""
    sets, studies = _reanalyse(results, arrays)
    return sets, _markdown(results, studies), _risk_coverage_figures(studies)


def recompute(results, arrays):
    """Every number of a shift report's ``results.json`` that its per-image arrays give.

    Parameters
    ----------
    results : dict
        The report's ``results.json``: its settings (corruptions, seed, resamples).
    arrays : mapping of str to ndarray
        Its ``per_image.npz``.

    Returns
    -------
    recomputed : dict
        The entries of ``results`` that the analysis computes.
    """
    return _reanalyse(results, arrays)[0]


def _reanalyse(results, arrays):
    """:func:`analyse_sets` on the measurements a report's arrays hold."""
    names = ["i.i.d.", *results["corruptions"], "new class"]
    attack = ResistanceAttack(**results["attack"])
    measured = {name: Measurements.from_arrays(
        {key.split("/", 1)[1]: value for key, value in arrays.items()
         if key.split("/", 1)[0] == name}, attack=attack) for name in names}
    return analyse_sets(measured, results["corruptions"], n_resamples=results["n_resamples"],
                        seed=results["seed"])


def _sources(name, measured):
    """The source image of each row of a set: a test image's position among the i.i.d.
    images, shared by its corrupted copies; new-class images come after them."""
    n = len(measured["i.i.d."])
    return n + np.arange(len(measured[name])) if name == "new class" else np.arange(n)


def analyse_sets(measured, corruptions, *, n_resamples, seed):
    """Every set's analysis under FD-Shifts' protocol, the primary test and the others.

    Each shifted set is scored mixed with the i.i.d. images. The learned detectors, and
    detect-then-correct, learn from i.i.d. images only (``train``), out of fold by source
    image, so no detector sees the shift it is tested on; the bootstrap resamples source
    images, each with every copy of it (a cluster bootstrap). The pooled set is also
    analysed with detectors trained on labelled shifted images (supervised; secondary).

    Returns
    -------
    sets : dict
        ``primary`` (the test on the pooled set), ``secondary`` (the other sets' tests,
        Holm-adjusted as one family) and ``sets`` (each set's summary).
    studies : dict of str to StudyResult
    """
    source = {name: _sources(name, measured) for name in ["i.i.d.", *corruptions, "new class"]}
    # Each set's shifted images, and whether the detectors learn from i.i.d. images only.
    plans = {"i.i.d.": ([], None), **{name: ([name], True) for name in [*corruptions,
                                                                         "new class"]},
             "all corruptions": (list(corruptions), True),
             "all corruptions, supervised": (list(corruptions), False)}
    # The sets are analysed in parallel (every core): the numbers do not depend on it.
    analysed = Parallel(n_jobs=-1)(
        delayed(_analyse_mixed)({name: measured[name] for name in ["i.i.d.", *names]},
                                source, names, iid_only, n_resamples, seed)
        for names, iid_only in plans.values())
    studies = dict(zip(plans, analysed))
    pooled = Measurements.concatenate([measured[name] for name in corruptions])
    pooled_source = np.concatenate([source[name] for name in corruptions])
    shifted = {**{name: (measured[name], None) for name in ["i.i.d.", *corruptions,
                                                              "new class"]},
               "all corruptions": (pooled, pooled_source)}
    summaries = {name: _set_summary(studies[name], *shifted.get(
        name, shifted["all corruptions"]), n_resamples, seed) for name in studies}
    tests = studies["all corruptions"].results["tests"]
    primary = tests and tests["primary"]
    secondary = {name: {**studies[name].results["tests"]["primary"]}
                 for name in studies if name not in ("all corruptions",)
                 if studies[name].results["tests"]}
    holm_family(secondary, words=("adds", "loses"))
    return {"primary": primary and {"set": "all corruptions", "protocol": "FD-Shifts: "
                                    "detectors trained on i.i.d. images only", **primary},
            "secondary": secondary, "sets": summaries}, studies


def _analyse_mixed(measured, source, names, iid_only, n_resamples, seed):
    """The i.i.d. images with the shifted sets ``names``, analysed by source image; the
    detectors learn from i.i.d. images only where ``iid_only``, from all where False. The
    i.i.d. set alone (``iid_only`` None) is analysed as any i.i.d. sample is."""
    run = partial(analyse, folds=FOLDS, n_resamples=n_resamples, random_state=seed)
    if iid_only is None:
        return run(measured["i.i.d."])
    parts = ["i.i.d.", *names]
    m = Measurements.concatenate([measured[name] for name in parts])
    train = np.arange(len(m)) < len(measured["i.i.d."]) if iid_only else None
    return run(m, groups=np.concatenate([source[name] for name in parts]), train=train)


def _set_summary(mixed, shifted, groups, n_resamples, seed):
    """What the report shows of one set: accuracy on its images, detection on the mixed set,
    and the correction claim, paired, on its images alone (by source where they share one)."""
    r = mixed.to_dict()
    boot = {"groups": groups, "n_resamples": n_resamples, "random_state": seed}
    rate = lambda mask, rows: proportion(  # noqa: E731
        mask, groups=None if groups is None else groups[rows], n_resamples=n_resamples,
        random_state=seed)
    errors = np.flatnonzero(shifted.is_error & (shifted.y >= 0))
    truth = shifted.y[errors]
    second = np.argsort(-shifted.logits, axis=1, kind="stable")[errors, 1]
    adversarial = shifted.attacks[0].adversarial_class[errors] == truth
    correction = {"adversarial_class_is_true": rate(adversarial, errors),
                  "second_choice_is_true": rate(second == truth, errors),
                  **{f"{name}_class_is_true": rate(landing[errors] == truth, errors)
                     for name, landing in shifted.landing.items()}}
    if len(errors):
        correction["adversarial_against_second_choice"] = paired_difference(
            MeanDifference(), adversarial, second == truth,
            **{**boot, "groups": None if groups is None else groups[errors]})
    return {
        "accuracy": rate(~shifted.is_error, np.arange(len(shifted))),
        "n_shifted": len(shifted), "n_mixed": r["n_samples"], "n_sources": r["n_sources"],
        "errors_mixed": r["errors"], "detection": r["detection"],
        "complementarity": r["complementarity"], "tests": r["tests"],
        "trained_on": r["trained_on"], "correction": correction,
        "competitors": r["competitors"], "cost": r["cost"],
    }


def _net_sentence(r):
    net = r["net"]
    if "builder" in net:
        weights = (f"weights `{Path(net['weights']).name}` (SHA-256 "
                   f"{net['weights_sha256'][:12]}…)" if net.get("weights") else
                   "the weights its builder gave it")
        return f"Your network (`{net['builder']}`, {weights})"
    return (f"Reference CNN ({net['architecture']}, {net['optimizer']}, {net['epochs']} "
            f"epochs, seed {r['seed']}) trained on **{r['n_train']:,} training images**")


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
        test = r["primary"] if name == "all corruptions" else r["secondary"].get(name)
        if name == "i.i.d." and test is not None:
            test = {**test, "verdict": test["verdict"] + " (detectors trained on it)"}
        if test is None:
            return ["n/a"] * 4
        low, high = test["ci"]
        holm_p = ("— (primary)" if name == "all corruptions" else
                  p_cell(test["p_holm"], test["resamples"]))
        eq = test["equivalence"]
        return [f"{test['difference']:+.4f} [{low:+.4f}, {high:+.4f}]",
                p_cell(test["p_value"], test["resamples"]),
                holm_p, f"{test['verdict']}; TOST ±{eq['margin']}: "
                        f"{'equivalent' if eq['equivalent'] else 'not shown equivalent'}"]

    def correction(name, key):
        cor = sets[name]["correction"]
        return count_cell(cor[key]) if key in cor else "n/a"

    def paired_correction(name):
        d = sets[name]["correction"].get("adversarial_against_second_choice")
        if d is None:
            return "n/a"
        return (f"{100 * d['difference']:+.1f} [{100 * d['ci'][0]:+.1f}, "
                f"{100 * d['ci'][1]:+.1f}]")

    a = r["attack"]
    order = ["i.i.d.", *r["corruptions"], "all corruptions", "new class"]
    lines = [
        header_markdown(
            f"Failure detection under distribution shift, on {NAMES[r['dataset']]}", r,
            f"{_net_sentence(r)}. **{r['n_images']:,} test images** drawn at random (seed "
            f"{r['seed']}); each of MNIST-C's corruptions applied to the same images "
            "(`resistclf.datasets.corrupt`, made locally, seed "
            f"{r['seed']}); as many {NAMES[r['new_class_dataset']]} test images for "
            f"new-class shift. Attack: {a['max_iter']} steps of size {a['step_size']}, "
            f"{a['norm'].upper()} norm; {mode_sentence(r['mode'], r['dataset'], r['fast'])}.",
            resampled="the source images, each with all its copies",
            opening="\n\n".join([
                verdict_markdown(studies["all corruptions"].to_dict(),
                                 "the net's failures under corruption"),
                f"**Primary question** (fixed in the code before the run): {PRIMARY_QUESTION}, "
                "on all corruptions pooled with the i.i.d. images, under FD-Shifts' protocol: "
                "every learned detector is trained on i.i.d. images only and never sees a "
                "shifted one."])),
        "Following FD-Shifts (Jaeger et al., ICLR 2023), a *failure* is a wrong prediction; "
        "on new-class images every prediction is one. Each shifted set is scored **mixed with "
        "the i.i.d. images** (the i.i.d. row alone), so AUGRC, FD-Shifts' recommended metric, "
        "is computed on the mixed set. Accuracy and the correction claim are measured on the "
        "shifted images alone. Every score is oriented so that higher means more likely a "
        "failure; AURC and AUGRC are ×1000, lower is better. LR is `make_detector()`, scored "
        f"{r['folds']}-fold out of fold with folds by source image, **trained on the i.i.d. "
        "images of the other folds only** (FD-Shifts: the scorer never sees the shift). "
        f"The {r['n_images']:,} source images were drawn at random and every corrupted copy "
        "shares its source: **brackets hold cluster-bootstrap intervals that resample source "
        "images**, each with all its copies.",
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
        "features added, against without, trained on i.i.d. images only, out of fold on the "
        "same folds, with its paired cluster-bootstrap 95% interval. The pooled row is the "
        "primary test; every other row is secondary, Holm-adjusted as one family (a verdict "
        "needs Holm p < 0.05). The last row trains the detectors on labelled shifted images "
        "too (supervised, by source-grouped folds): not FD-Shifts' protocol, shown for "
        "comparison.",
        "",
        markdown_table(["set", "Δ AUROC [95%]", "p", "Holm p", "verdict"],
                       [[name, *complement(name)]
                        for name in [*order, "all corruptions, supervised"]]),
        "",
        "## The correction claim under shift",
        "",
        "Among the shifted images' errors (those with a true label among the net's classes): "
        "how often the class each method lands in is the true label, and the paired "
        "difference between the adversarial class and the softmax second choice on the same "
        "errors (points, 95% interval; by source image on the pooled set). Exploratory: "
        "not adjusted for the 16 sets.",
        "",
        markdown_table(["set", "resistance's adversarial class", "softmax second choice",
                        "paired Δ, points", "DeepFool's class", "FMN-L2's class",
                        "DDN's class"],
                       [[name, correction(name, "adversarial_class_is_true"),
                         correction(name, "second_choice_is_true"), paired_correction(name),
                         *(correction(name, key) for key in (
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
                  *([tests_markdown(s["tests"]), ""] if s["tests"] else []),
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
    net = net_info = None
    try:
        if args.model is not None:
            net, net_info = load_net(args.model, dict(args.model_arg or []), args.weights)
            # Before any work: does it take a 28x28 grey image and score the ten classes?
            n_classes = check_inputs(net, np.zeros((1, 1, 28, 28), np.float32),
                                     np.array([0]), ResistanceAttack())
            if n_classes != 10:
                raise ValueError(f"--model {args.model} scores {n_classes} classes; "
                                 f"{NAMES[args.dataset]} has 10.")
        elif args.weights is not None or args.model_arg:
            raise ValueError("--weights and --model-arg need --model: the callable that "
                             "builds your network.")
        check_competitors(args.competitors or ())
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"resistclf shift: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    run_shift(args.dataset, args.root, out=out, net=net, net_info=net_info,
              net_output="auto" if net is None else args.net_output, cache=args.cache,
              download=args.download,
              seed=args.seed, limit=args.limit, max_iter=args.max_iter,
              n_resamples=args.n_resamples, fast=args.fast,
              corruptions=args.corruptions or CORRUPTIONS,
              competitors=SHIFT_COMPETITORS if args.competitors is None else args.competitors,
              per_image=args.per_image, n_jobs=args.n_jobs, scheduler=args.scheduler,
              verbose=not args.quiet)
