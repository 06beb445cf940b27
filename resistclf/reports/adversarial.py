"""``resistclf adversarial``: do resistance features tell adversarial examples from clean ones?

The write-up ends with the hypothesis that resistance also detects adversarial examples.
Adversarial examples are crafted with torchattacks (the optional extra
``resistclf[adversarial]``) from correctly classified test images, against the reference
CNN; the resistance attack then runs on clean and adversarial images alike. Res_min, the
number of steps the attack needs to change the prediction, is the detector of "Attack as
Defense" (Zhao et al., ISSTA 2021). Every detector sits beside max-softmax on the same net.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .. import ResistanceAttack, ResultStore, make_detector
from .._nets import eval_mode
from ..metrics import MetricDifference, holm_family, paired_difference, verdict
from ..plotting import plot_boxplots, plot_image_grid, plot_roc_curves
from ..study import Measurements, markdown_table, measure, p_cell, score_metrics, \
    with_interval
from ._reference import NAMES, attack_mode, load_dataset, mode_sentence, reference_net
from ._report import FOLDS, call_repr, environment, header_markdown, parallel_backend, \
    phase, settings_markdown, write_report

#: The attacks crafted: name -> (torchattacks class, its parameters, options).
#: FGSM and PGD-Linf at the customary MNIST budgets; PGD takes 40 steps of 2.5 * eps / 40
#: (Madry et al.). CW-L2 is torchattacks' Carlini-Wagner without the binary search over c,
#: keeping the smallest successful perturbation it finds. The adaptive attack is a targeted
#: PGD towards the net's runner-up class that counts only if the net ends up at least
#: ``min_confidence`` sure of the wrong class: the evasion of a confidence-based detector.
ATTACKS = {
    **{f"FGSM eps={eps}": ("FGSM", {"eps": eps}, {}) for eps in (0.1, 0.2, 0.3)},
    **{f"PGD eps={eps}": ("PGD", {"eps": eps, "alpha": 2.5 * eps / 40, "steps": 40,
                                  "random_start": True}, {}) for eps in (0.1, 0.2, 0.3)},
    "CW-L2": ("CW", {"c": 10.0, "kappa": 0.0, "steps": 100, "lr": 0.1}, {}),
    "high-confidence PGD eps=0.3": (
        "PGD", {"eps": 0.3, "alpha": 0.01, "steps": 100, "random_start": True},
        {"target": "runner-up", "min_confidence": 0.9}),
}
ADAPTIVE, NON_ADAPTIVE = "high-confidence PGD eps=0.3", "PGD eps=0.3"
DETECTORS = ["Res_N", "Res_max", "Res_min (Attack as Defense)", "LR(resistance), out-of-fold",
             "max-softmax (baseline)", "max-softmax reversed (baseline)",
             "LR(max-softmax), out-of-fold (baseline)"]
#: The report's one primary test, fixed before the run: the learned resistance detector
#: against the strongest softmax baseline on the customary PGD attack. Every other
#: detector-attack pair is secondary, Holm-adjusted as one family.
PRIMARY_ATTACK, PRIMARY_DETECTOR = NON_ADAPTIVE, "LR(resistance), out-of-fold"
PRIMARY_QUESTION = (f"Does {PRIMARY_DETECTOR.split(',')[0]} tell {PRIMARY_ATTACK} adversarial "
                    "examples from clean images better than the strongest of max-softmax, "
                    "max-softmax reversed and LR(max-softmax)? (Δ AUROC, paired cluster "
                    "bootstrap by clean image)")
#: The panels of the features figure. Heavy tails (never-flipped images reach |r| = 70) and
#: 1 - max-softmax spanning many decades: every panel has a log axis.
BOXES = ["Res_N", "Res_max", "Res_min (steps)", "1 - max-softmax (baseline)"]
#: The medians in the table of attacks.
MEDIANS = ("Res_N", "Res_min", "1 - max-softmax")

_phase = partial(phase, "adversarial")


def import_torchattacks():
    """torchattacks, or an ImportError that says what to install."""
    try:
        import torchattacks
    except ImportError as exc:
        raise ImportError(
            "resistclf adversarial crafts adversarial examples with torchattacks, which is "
            "not installed. Install the optional extra: pip install 'resistclf[adversarial]' "
            "(or: pip install torchattacks==3.5.1)."
        ) from exc
    return torchattacks


def run_adversarial(dataset, root, *, out, cache=None, download=False, seed=0, limit=1000,
                    max_iter=500, n_resamples=1000, fast=False, n_jobs=None, scheduler=None,
                    verbose=True):
    """Craft adversarial examples, measure resistance, and score the detectors.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder of the report.
    cache : path or None, default=None
        The :class:`~resistclf.ResultStore` folder for the trained net, the adversarial
        examples and the resistance results; None means ``out/cache``.
    download : bool, default=False
        Let torchvision fetch missing files.
    seed : int, default=0
        Seeds the net's training, the choice of clean images, the attacks'
        random starts, the folds and the bootstrap.
    limit : int, default=1000
        Number of correctly classified test images to craft adversarial
        examples from, drawn at random (all of them if fewer).
    max_iter : int, default=500
        Steps of the resistance attack.
    n_resamples : int, default=1000
        Bootstrap resamples for the 95% intervals.
    fast : bool, default=False
        Attack in the fastest mode the benchmark found equivalent to exact mode.
    n_jobs : int or None, default=None
        Worker processes for the resistance attack (see ``parallel_backend``).
    scheduler : str or None, default=None
        Address of a dask scheduler to run the attack's jobs on.
    verbose : bool, default=True
        Progress on standard error.

    Returns
    -------
    results : dict
        What ``results.json`` holds.
    """
    torchattacks = import_torchattacks()
    out = Path(out)
    store = ResultStore(out / "cache" if cache is None else cache)
    timings = {}
    with _phase("load the data and the reference net", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        net, net_info = reference_net(X_train, y_train, store=store, seed=seed,
                                      verbose=verbose)
        module = net.module_
        correct = np.flatnonzero(net.predict(X_test) == y_test)
        rng = np.random.RandomState(seed)
        chosen = np.sort(rng.choice(correct, min(limit, len(correct)), replace=False))
        X, y = X_test[chosen], y_test[chosen]

    with _phase("craft adversarial examples", timings, verbose):
        crafted = store.arrays(
            "adversarial-examples", (module, X, y, ATTACKS, seed, torchattacks.__version__),
            lambda: _craft(torchattacks, module, X, y, seed, verbose))
        success = {name: _successful(module, crafted[name], y, name) for name in ATTACKS}
        adversarial = {name: crafted[name][success[name]] for name in ATTACKS}

    mode, settings = attack_mode(fast, dataset, module, X, store)
    attack = ResistanceAttack(max_iter=max_iter, **settings)
    with _phase("resistance of clean and adversarial images", timings, verbose), \
            parallel_backend(n_jobs, scheduler):
        # Labels do not matter here: only the attack's features and the logits are used.
        measured = measure(net, np.concatenate([X, *adversarial.values()]), attack=attack,
                           competitors=(), store=store, verbose=verbose)
    # Which set each row belongs to (0 clean, i + 1 the i-th attack), the clean image it
    # comes from, and the size of its perturbation: with the measurements, all the
    # analysis needs (and what per_image.npz keeps).
    arrays = {
        "set": np.repeat(np.arange(len(ATTACKS) + 1),
                         [len(X), *(len(a) for a in adversarial.values())]),
        "source": np.concatenate([np.arange(len(X)),
                                  *(np.flatnonzero(success[name]) for name in ATTACKS)]),
        **{norm: np.concatenate([np.zeros(len(X)), *(
            _norms(adversarial[name] - X[success[name]])[norm] for name in ATTACKS)])
           for norm in ("l2", "linf")},
        **{f"measured/{key}": value for key, value in measured.to_arrays().items()},
    }
    with _phase("detection metrics and bootstrap intervals", timings, verbose):
        analysis, scores = _analyse_all(measured, arrays, seed, n_resamples)
    results = {
        "command": "adversarial", "dataset": dataset, "seed": seed, "limit": limit,
        "n_train": int(len(X_train)),
        "n_test": int(len(X_test)), "test_accuracy": float(len(correct) / len(X_test)),
        "n_clean": int(len(X)), "net": net_info, "attack": attack.get_params(), "mode": mode,
        "fast": fast,
        "adversarial_attacks": {name: {"torchattacks": cls, "params": params, **options}
                                for name, (cls, params, options) in ATTACKS.items()},
        "torchattacks": torchattacks.__version__, "folds": FOLDS,
        "n_resamples": n_resamples, "environment": environment(),
        **analysis,
    }
    with _phase("figures and report", timings, verbose):
        figures = _figures(X, y, _split(measured, arrays["set"]), crafted, module, scores)
    results["seconds"] = timings
    write_report(out, _markdown(results), results, figures, arrays=arrays)
    return results


def recompute(results, arrays):
    """Every number of an adversarial report's ``results.json`` that its per-image arrays
    give: the ``clean`` and ``attacks`` entries."""
    measured = Measurements.from_arrays(
        {key.split("/", 1)[1]: value for key, value in arrays.items()
         if key.startswith("measured/")}, attack=ResistanceAttack(**results["attack"]))
    return _analyse_all(measured, arrays, results["seed"], results["n_resamples"])[0]


def _split(measured, set_ids):
    """The clean images' measurements, then each attack's."""
    return [measured[np.flatnonzero(set_ids == i)] for i in range(len(ATTACKS) + 1)]


def _norms(delta):
    flat = delta.reshape(len(delta), -1)
    return {"l2": np.linalg.norm(flat, axis=1), "linf": np.abs(flat).max(axis=1)}


def _analyse_all(measured, arrays, seed, n_resamples):
    """The clean images' summary and every attack's analysis, from the measurements and
    the per-image arrays; also each attack's per-image scores, for the figures."""
    clean, *per_attack = _split(measured, arrays["set"])
    analysis, scores = {}, {}
    # The detectors' small fits wait on BLAS threads far longer than they compute.
    with threadpool_limits(limits=1, user_api="blas"):
        for i, (name, adv) in enumerate(zip(ATTACKS, per_attack), start=1):
            rows = arrays["set"] == i
            analysis[name], scores[name] = _analyse(
                clean, adv, arrays["l2"][rows], arrays["linf"][rows], arrays["source"][rows],
                seed, n_resamples)
    return {"clean": {"flip_rate": float(clean.attacks[0].flipped.mean()),
                      "median": _medians(clean)},
            "attacks": analysis, "tests": _family(analysis)}, scores


def _family(analysis):
    """The primary test, and every other paired test Holm-adjusted as one family (each
    test also gets its ``p_holm`` and ``verdict`` in place)."""
    tests = {(attack, detector): test for attack, a in analysis.items()
             for detector, test in (a.get("tests") or {}).items()}
    primary = tests.pop((PRIMARY_ATTACK, PRIMARY_DETECTOR), None)
    holm_family(tests)
    if primary is not None:
        primary["p_holm"] = primary["p_value"]  # the one primary test needs no adjustment
        primary["verdict"] = verdict(primary["difference"], primary["p_value"])
    return {"primary_question": PRIMARY_QUESTION,
            "primary": None if primary is None else {
                "attack": PRIMARY_ATTACK, "detector": PRIMARY_DETECTOR, **primary},
            "secondary_family": len(tests)}


def _craft(torchattacks, module, X, y, seed, verbose):
    """Each attack's adversarial version of every image in X."""
    images, labels = torch.from_numpy(np.array(X)), torch.from_numpy(np.array(y))
    examples = {}
    with eval_mode(module):
        for name in tqdm(ATTACKS, desc="crafting", disable=not verbose):
            cls, params, options = ATTACKS[name]
            crafter = getattr(torchattacks, cls)(module, **params)
            if options.get("target") == "runner-up":
                crafter.set_mode_targeted_by_function(partial(_runner_up, module), quiet=True)
            with torch.random.fork_rng():  # PGD's random start
                torch.manual_seed(seed)
                examples[name] = crafter(images, labels).detach().numpy()
    return examples


def _runner_up(module, images, labels):
    with torch.no_grad():
        return module(images).topk(2, dim=1).indices[:, 1]


def _softmax(module, images):
    with eval_mode(module), torch.no_grad():
        return module(torch.from_numpy(np.array(images))).softmax(dim=1).numpy()


def _successful(module, adversarial, y, name):
    """Which adversarial images change the prediction (with the attack's minimum confidence)."""
    proba = _softmax(module, adversarial)
    ok = proba.argmax(axis=1) != y
    min_confidence = ATTACKS[name][2].get("min_confidence")
    return ok & (proba.max(axis=1) >= min_confidence) if min_confidence else ok


METRICS = ("auroc", "tpr_at_5_fpr")


def _medians(measured):
    result, scores = measured.attacks[0], measured.error_scores()
    return {"Res_N": float(np.median(result.res_n)), "Res_max": float(np.median(result.res_max)),
            "Res_min": float(np.median(result.res_min)),
            "1 - max-softmax": float(np.median(scores["max-softmax"]))}


def _analyse(clean, adv, l2, linf, source, seed, n_resamples):
    """One attack's success, and each detector's clean-versus-adversarial scores.

    An adversarial example and the clean image it was crafted from share a source: the
    folds keep them together and the bootstrap resamples clean images, each with its
    adversarial version (``source`` holds each example's clean image).

    Returns the summary for ``results.json`` and the per-image scores (None if the
    attack succeeded fewer than twice).
    """
    n_pos = len(adv)
    summary = {
        "success": {"count": n_pos, "of": len(clean), "value": n_pos / len(clean)},
        "median_l2": float(np.median(l2)) if n_pos else np.nan,
        "median_linf": float(np.median(linf)) if n_pos else np.nan,
        "resistance_flip_rate": float(adv.attacks[0].flipped.mean()) if n_pos else np.nan,
        "median": _medians(adv) if n_pos else None,
        "detection": None,
    }
    if n_pos < 2:
        return summary, None
    both = Measurements.concatenate([clean, adv])
    is_adv = np.r_[np.zeros(len(clean), bool), np.ones(n_pos, bool)]
    groups = np.r_[np.arange(len(clean)), source]
    error_scores = both.error_scores()
    folds = list(StratifiedGroupKFold(min(FOLDS, n_pos), shuffle=True, random_state=seed)
                 .split(np.zeros(len(is_adv)), is_adv, groups))

    def out_of_fold(X):
        return cross_val_predict(make_detector(), X,
                                 is_adv, cv=folds, method="predict_proba")[:, 1]

    # Adversarial examples are expected near a decision boundary: low resistance and low
    # confidence point to them, as to errors. The learned detectors pick their own direction;
    # strong attacks make the net *more* confident, so the raw baseline is also taken the
    # other way round (high confidence flags the image), lest the baseline be weakened.
    scores = dict(zip(DETECTORS, [
        error_scores["Res_N"], error_scores["Res_max"], error_scores["Res_min"],
        out_of_fold(both.attacks[0].features), error_scores["max-softmax"],
        -error_scores["max-softmax"], out_of_fold(error_scores["max-softmax"][:, None])]))
    boot = {"groups": groups, "n_resamples": n_resamples, "random_state": seed}
    summary["detection"] = score_metrics(is_adv, scores, metrics=METRICS, **boot)
    summary["tests"] = _paired_tests(is_adv, scores, summary["detection"], boot)
    return summary, (is_adv, scores)


def _paired_tests(is_adv, scores, detection, boot):
    """Each resistance detector against the strongest max-softmax baseline, paired.

    The baseline is whichever of max-softmax (low confidence flags the image), max-softmax
    reversed (high confidence does) and LR(max-softmax) scores the highest AUROC on these
    images, so that a learned baseline never stands in for a raw score that does better.
    Choosing the raw score's direction on the test images favours the baseline, never
    resistance. :func:`_family` adjusts them.
    """
    baselines = DETECTORS[4:]
    baseline = max(baselines, key=lambda name: detection[name]["auroc"]["value"])
    return {name: {"against": baseline, **paired_difference(
        MetricDifference("auroc"), is_adv, scores[name], scores[baseline],
        **boot)} for name in DETECTORS if name not in baselines}


def _figures(X, y, split, crafted, module, scores):
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(ATTACKS) // columns)
    roc, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, ATTACKS):
        if scores[name] is None:
            ax.set_title(name)
            ax.text(0.5, 0.5, "fewer than 2 successful examples", ha="center")
        else:
            plot_roc_curves(*scores[name], ax=ax, title=f"clean vs {name}")
            ax.legend(fontsize=6, loc="lower right")
    for ax in axes.flat[len(ATTACKS):]:
        ax.axis("off")
    roc.tight_layout()

    def values(measured):
        result = measured.attacks[0]
        return [result.res_n, result.res_max, result.res_min.astype(float),
                measured.error_scores()["max-softmax"]]

    clean, *per_attack = split
    groups = {"clean": values(clean),
              **{name: values(measured) for name, measured in zip(ATTACKS, per_attack)
                 if len(measured)}}
    shown = np.arange(min(4, len(X)))
    images, titles = [], []
    for i in shown:
        images.append(X[i])
        titles.append(f"clean: {y[i]}")
        for name in ATTACKS:
            proba = _softmax(module, crafted[name][i: i + 1])[0]
            images.append(crafted[name][i])
            titles.append(f"{name.replace('high-confidence', 'HC')}\n"
                          f"-> {proba.argmax()} ({proba.max():.2f})")
    return {
        "roc": roc,
        "features": plot_boxplots(groups, BOXES, log_panels=BOXES),
        "examples": plot_image_grid(np.array(images), titles, columns=len(ATTACKS) + 1),
    }


def _test_cell(test, label="Holm p"):
    low, high = test["ci"]
    return (f"{test['difference']:+.3f} [{low:+.3f}, {high:+.3f}], {label} "
            f"{p_cell(test['p_holm'], test['resamples'])}: {test['verdict']}")


def _markdown(r):
    dataset = NAMES[r["dataset"]]
    attacks = r["attacks"]

    def metric_row(name, key):
        a = attacks[name]
        cells = ["n/a"] * len(DETECTORS) if a["detection"] is None else [
            with_interval(a["detection"][d][key]["value"], a["detection"][d][key]["ci"],
                          percent=key != "auroc") for d in DETECTORS]
        return [name, f"{a['success']['count']} of {a['success']['of']}", *cells]

    header = ["attack", "successful", *DETECTORS]
    primary = r["tests"]["primary"]
    verdict = ("too few successful examples to test" if primary is None else
               f"Δ AUROC {_test_cell(primary, 'p')} (against {primary['against']})")
    opening = (f"**Primary question.** {r['tests']['primary_question']}\n\n**Verdict:** "
               f"{verdict}. The other {r['tests']['secondary_family']} detector-attack "
               "comparisons below are secondary, Holm-adjusted as one family.")
    lines = [header_markdown(
        f"Detecting adversarial examples by their resistance, on {dataset}", r,
        f"Reference CNN ({r['net']['architecture']}, {r['net']['optimizer']}, "
        f"{r['net']['epochs']} epochs, seed {r['seed']}) trained on **{r['n_train']:,} training "
        f"images**; test accuracy {100 * r['test_accuracy']:.2f}% on {r['n_test']:,} test "
        f"images. Adversarial examples were crafted with torchattacks {r['torchattacks']} from "
        f"**{r['n_clean']:,} correctly classified test images** (a random subset, seed "
        f"{r['seed']}), in [0, 1]. Detection is clean (negative, all {r['n_clean']:,}) against "
        "the successful adversarial examples of one attack (positive). Resistance attack: "
        f"{r['attack']['max_iter']} steps of size {r['attack']['step_size']}, "
        f"{r['attack']['norm'].upper()} norm, the same as for error detection; "
        f"{mode_sentence(r['mode'], r['dataset'], r['fast'])}.", opening=opening)]
    lines += [
        "Res_min, the number of steps until the prediction first changes, is the detector of "
        "\"Attack as Defense\" (Zhao et al., ISSTA 2021), the published anchor. A single feature "
        "flags an image as adversarial when its value is low. LR(resistance) is "
        "`make_detector()`, a logistic regression on normal scores (quantile-transformed) of "
        "Res_N, Res_max and Res_min, trained on each "
        f"attack's own examples and scored {r['folds']}-fold out-of-fold: it knows the attack "
        "and picks its own direction. Each adversarial example and its clean image share a "
        "source: the folds keep them together and the intervals resample clean images, each "
        "with its adversarial version (a cluster bootstrap).",
        "",
        "## Does resistance beat the softmax? Paired tests against the strongest baseline",
        "",
        "Δ AUROC of each resistance detector minus the strongest of max-softmax, max-softmax "
        "reversed (high confidence flags the image: strong attacks make the net more sure) "
        "and LR(max-softmax) on the same images (a learned baseline never stands in for a "
        "raw score that does better; the baseline's direction is chosen on these images, "
        "which can only favour it), paired cluster-bootstrap 95% interval; p-values are "
        "Holm-adjusted over every detector and attack but the primary test's.",
        "",
        markdown_table(["attack", "baseline", *[d for d in DETECTORS[:4]]],
                       [[name, a["tests"][DETECTORS[0]]["against"],
                         *(_test_cell(a["tests"][d]) for d in DETECTORS[:4])]
                        for name, a in attacks.items() if a.get("tests")]),
        "",
        "## AUROC, clean vs adversarial",
        "",
        markdown_table(header, [metric_row(name, "auroc") for name in attacks]),
        "",
        "## True-positive rate at 5% false-positive rate",
        "",
        markdown_table(header, [metric_row(name, "tpr_at_5_fpr") for name in attacks]),
        "",
        "![ROC curves](roc.png)",
        "",
    ]
    adaptive, plain = attacks[ADAPTIVE], attacks[NON_ADAPTIVE]
    lines += ["## The adaptive check: a high-confidence attack", "",
              f"The \"{ADAPTIVE}\" attack is a targeted PGD towards the net's runner-up class "
              f"({call_repr('PGD', r['adversarial_attacks'][ADAPTIVE]['params'])}); an example "
              "counts only if the net is at least 90% sure of the wrong class, which is the "
              "obvious way to evade a confidence-based detector. Its AUROC beside the plain "
              f"{NON_ADAPTIVE}:", ""]
    if adaptive["detection"] and plain["detection"]:
        lines += [markdown_table(["detector", NON_ADAPTIVE, ADAPTIVE], [
            [d, *(with_interval(a["detection"][d]["auroc"]["value"],
                                a["detection"][d]["auroc"]["ci"]) for a in (plain, adaptive))]
            for d in DETECTORS]), ""]
    else:
        lines += ["Too few successful examples to compare.", ""]
    lines += [
        "## The attacks",
        "",
        f"The resistance attack itself changed the prediction of "
        f"{100 * r['clean']['flip_rate']:.1f}% of the clean images.",
        "",
        markdown_table(["attack", "torchattacks", "successful", "median L2", "median Linf",
                        "resistance attack flipped", "median Res_N", "median Res_min",
                        "median 1 - max-softmax"],
                       [["clean", "", "", "", "", f"{100 * r['clean']['flip_rate']:.1f}%",
                *(f"{r['clean']['median'][k]:.3g}" for k in MEDIANS)]]
              + [[name, call_repr(spec["torchattacks"], spec["params"]),
                  with_interval(a["success"]["value"], None, percent=True),
                  f"{a['median_l2']:.3g}", f"{a['median_linf']:.3g}",
                  with_interval(a["resistance_flip_rate"], None, percent=True),
                  *(("n/a",) * 3 if a["median"] is None else
                    (f"{a['median'][k]:.3g}" for k in MEDIANS))]
                 for (name, a), spec in zip(attacks.items(),
                                             r["adversarial_attacks"].values())]),
        "",
        "![Resistance and max-softmax of clean and adversarial images](features.png)",
        "",
        "![Clean images and their adversarial versions (prediction and confidence)]"
        "(examples.png)",
        "",
        settings_markdown({**r, "environment": {
            "torchattacks": r["torchattacks"], **r["environment"]}}),
    ]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf adversarial``."""
    out = args.out or f"results/adversarial-{args.dataset}"
    try:
        import_torchattacks()
    except ImportError as exc:
        sys.exit(f"resistclf adversarial: error: {exc}")
    run_adversarial(args.dataset, args.root, out=out, cache=args.cache, download=args.download,
                    seed=args.seed,
                    limit=args.limit, max_iter=args.max_iter, n_resamples=args.n_resamples,
                    fast=args.fast, n_jobs=args.n_jobs, scheduler=args.scheduler,
                    verbose=not args.quiet)
