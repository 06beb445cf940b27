"""``resistclf reproduce``: the write-up's claims on MNIST or FashionMNIST, beside baselines.

Every figure is measured on one network, the reference CNN, and sits next to what the
network's own softmax gives: max-softmax for detection, the softmax second choice for
correction, softmax top-k for top-k.
"""

from functools import partial
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedKFold

from .. import ResistanceAttack, ResistanceClassifier
from ..metrics import bootstrap_interval, softmax_topk
from ..plotting import plot_attack_traces, plot_histograms, plot_image_grid, plot_roc_curves
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
from ._report import (
    call_repr,
    environment,
    keep_first_timings,
    load_attack_cache,
    parallel_backend,
    phase,
    table,
    with_interval,
    write_report,
)

#: The write-up's own figures (its networks, trained on the full training sets).
WRITEUP = {
    "mnist": {"errors": 62, "res_n_q10_correct": 0.97, "res_n_q90_incorrect": 0.57,
              "corrected": 53, "top2_error": 0.0009},
    "fashion-mnist": {"errors": 876, "corrected": 613, "top2_error": 0.026},
}
FOLDS = 5


_phase = partial(phase, "reproduce")


def run_reproduce(dataset, root, *, out, download=False, seed=0, limit=None, max_iter=500,
                  n_resamples=1000, fast=False, n_jobs=None, scheduler=None, verbose=True):
    """Run the study on ``dataset`` and write the report to ``out``.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder. The trained net, the attack results and the competitors'
        scores are cached there, so a rerun reuses them.
    download : bool, default=False
        Let torchvision fetch missing files.
    seed : int, default=0
        Seeds the net's training, the ``limit`` subset, folds and bootstrap.
    limit : int or None, default=None
        Attack only this many test images, drawn at random (a quick run).
    max_iter : int, default=500
        Attack steps.
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
    timings, cached = {}, []
    if (out / "net.pt").exists():
        cached.append("load the data and the reference net")
    with _phase("load the data and the reference net", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        net, net_info = reference_net(X_train, y_train, cache=out / "net.pt", seed=seed,
                                      verbose=verbose)
    if limit is not None and limit < len(X_test):
        keep = np.sort(np.random.RandomState(seed).choice(len(X_test), limit, replace=False))
        X_test, y_test = X_test[keep], y_test[keep]

    mode, settings = attack_mode(fast, dataset)
    cache_path = out / "attack-cache.npz"
    cache = load_attack_cache(cache_path)
    attack = ResistanceAttack(max_iter=max_iter, verbose=verbose, **settings)
    clf = ResistanceClassifier(FrozenEstimator(net), attack=attack, cache=cache,
                               random_state=seed)
    with parallel_backend(n_jobs, scheduler):
        n_cached = len(cache)
        with _phase("attack the test set", timings, verbose):
            # Fitting on the test set only gives access to its attack results;
            # everything evaluated below is out-of-fold.
            clf.fit(X_test, y_test)
            result = clf.attack_results(X_test)
            cache.save(cache_path)
        if len(cache) == n_cached:
            cached.append("attack the test set")
        n_cached = len(cache)
        with _phase("attack away from the runner-ups (top-5)", timings, verbose):
            top5 = clf.predict_topk(X_test, k=5)
            cache.save(cache_path)
        if len(cache) == n_cached:
            cached.append("attack away from the runner-ups (top-5)")

    is_error = clf.classes_[result.c0] != y_test
    with _phase("the competitors: softmax-derived scores, input-space margin, DeepFool",
                timings, verbose):
        logits = net.forward(X_test, training=False).numpy()
        competitors, cost, fooled = cached_competitor_scores(
            out / "competitors", net_info, net.module_, logits, X_test)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    with _phase(f"{FOLDS}-fold cross-validation of detect-then-correct", timings, verbose):
        corrected_pred = np.empty_like(y_test)
        for train, held in folds.split(X_test, y_test):
            corrected_pred[held] = clone(clf).fit(X_test[train], y_test[train]).predict(
                X_test[held])
    with _phase("learned detectors, out-of-fold", timings, verbose):
        scores = _scores(result, competitors, is_error, folds, seed)
    with _phase("metrics and bootstrap intervals", timings, verbose):
        results = _analyse(dataset, clf, y_test, logits, result, top5, corrected_pred, fooled,
                           is_error, scores, seed, n_resamples)
    with _phase("traces of a hard and an easy image", timings, verbose):
        hard, easy = _hard_and_easy(result, is_error)
        traced = clone(attack).set_params(verbose=False, n_jobs=None, early_exit=None)(
            net.module_, _tensor(X_test[[hard, easy]]), return_trace=True)
    results.update({
        "dataset": dataset, "seed": seed, "limit": limit, "n_train": int(len(X_train)),
        "n_test": int(len(X_test)), "net": net_info, "attack": attack.get_params(),
        "mode": mode, "fast": fast, "threshold_folds": FOLDS, "n_resamples": n_resamples,
        "environment": environment(), "traced_images": {"hard": int(hard), "easy": int(easy)},
    })
    with _phase("figures and report", timings, verbose):
        figures = _figures(is_error, scores, X_test, y_test, clf.classes_, logits, result,
                           traced, hard, easy)
    keep_first_timings(out, timings, cached)
    results["seconds"] = timings
    results["cost"] = {**cost, **_resistance_cost(attack, timings)}
    write_report(out, _markdown(results), results, figures)
    return results


def _tensor(X):
    import torch

    return torch.from_numpy(np.array(X, dtype=np.float32))


def _scores(result, competitors, is_error, folds, seed):
    """Every error score of the report, resistance first."""
    resistance = resistance_scores(result)
    softmax = {name: competitors[name] for name in SOFTMAX_SCORES}
    distances = {name: competitors[name] for name in ATTACK_DISTANCES}
    learned = learned_scores(is_error, resistance, softmax, distances, folds)
    return {**resistance, "LR(resistance)": learned.pop("LR(resistance)"), **softmax,
            **distances, **learned}


def _resistance_cost(attack, timings):
    """Passes per image of the resistance attack, and its measured time on the test set.

    With ``early_exit`` an image stops early, so its passes are an upper bound.
    """
    passes = {"forward": attack.max_iter + 1, "backward": attack.max_iter,
              "seconds": timings.get("attack the test set"),
              "at_most": attack.early_exit is not None}
    return {name: passes for name in (*RESISTANCE, "LR(resistance)")}


def _analyse(dataset, clf, y, logits, result, top5, corrected_pred, fooled, is_error, scores,
             seed, n_resamples):
    classes = clf.classes_
    proba = softmax(logits, axis=1)
    pred = classes[result.c0]
    adversarial = classes[result.adversarial_class]
    second = softmax_topk(proba, classes, 2)[:, 1]
    deepfool_class = classes[fooled.adversarial_class]

    def ci(statistic, *arrays):
        return bootstrap_interval(statistic, *arrays, n_resamples=n_resamples,
                                  random_state=seed)

    def rate(mask):
        return {"value": float(np.mean(mask)), "ci": ci(np.mean, mask), "count": int(np.sum(mask)),
                "of": int(len(mask))}

    max_softmax = proba.max(axis=1)
    separation = {}
    for name, values in [("Res_N", result.res_n), ("Res_max", result.res_max),
                         ("Res_min", result.res_min.astype(float)), ("Res_mean", result.res_mean),
                         ("max-softmax", max_softmax)]:
        separation[name] = {
            "q10_correct": float(np.quantile(values[~is_error], 0.1)),
            "q90_incorrect": float(np.quantile(values[is_error], 0.9)) if is_error.any() else None,
        }
    writeup = WRITEUP[dataset]
    if "res_n_q10_correct" in writeup:
        separation["Res_N"]["at_writeup_thresholds"] = {
            "correct_above": float(np.mean(result.res_n[~is_error] > writeup["res_n_q10_correct"])),
            "incorrect_below": float(np.mean(result.res_n[is_error]
                                             < writeup["res_n_q90_incorrect"])),
        }

    errors = is_error.nonzero()[0]
    softmax5 = softmax_topk(proba, classes, 5)
    return {
        "errors": rate(is_error),
        "flip_rate": {"correct": rate(result.flipped[~is_error]),
                      "incorrect": rate(result.flipped[is_error])},
        "separation": separation,
        "detection": score_metrics(is_error, scores, n_resamples=n_resamples, seed=seed),
        "complementarity": complementarity(is_error, scores, n_resamples=n_resamples,
                                           seed=seed),
        "correction": {
            "adversarial_class_is_true": rate(adversarial[errors] == y[errors]),
            "second_choice_is_true": rate(second[errors] == y[errors]),
            "deepfool_class_is_true": rate(deepfool_class[errors] == y[errors]),
            "adversarial_is_second_choice_errors": rate(adversarial[errors] == second[errors]),
            "adversarial_is_second_choice_all_flipped": rate(
                adversarial[result.flipped] == second[result.flipped]),
        },
        "topk_error": {
            "top2_predict_topk": rate(~(top5[:, :2] == y[:, None]).any(axis=1)),
            "top2_softmax": rate(~(softmax5[:, :2] == y[:, None]).any(axis=1)),
            "top5_predict_topk": rate(~(top5 == y[:, None]).any(axis=1)),
            "top5_softmax": rate(~(softmax5 == y[:, None]).any(axis=1)),
        },
        "detect_then_correct": {
            "accuracy_net": rate(pred == y),
            "accuracy_resistance_classifier": rate(corrected_pred == y),
            "difference": {
                "value": float(np.mean(corrected_pred == y) - np.mean(pred == y)),
                "ci": ci(lambda c, p, t: np.mean(c == t) - np.mean(p == t), corrected_pred, pred,
                         y),
            },
            "changed": int(np.sum(corrected_pred != pred)),
            "changed_to_true": int(np.sum((corrected_pred != pred) & (corrected_pred == y))),
            "changed_from_true": int(np.sum((corrected_pred != pred) & (pred == y))),
        },
    }


def _hard_and_easy(result, is_error):
    """A correctly classified image at the 90th percentile of Res_N among correct ones
    (hard to attack) and a misclassified one at the median of Res_N among errors (easy)."""
    def at_quantile(mask, q):
        candidates = np.flatnonzero(mask)
        values = result.res_n[candidates]
        return candidates[np.argmin(np.abs(values - np.quantile(values, q)))]

    easy_pool = is_error if is_error.any() else ~is_error
    return at_quantile(~is_error, 0.9), at_quantile(easy_pool, 0.5)


#: The panels of the histograms figure, every one on a log axis.
HISTOGRAMS = ["Res_N", "Res_max", "Res_min (steps)", "Res_mean", "1 - max-softmax (baseline)"]
#: The scores drawn in the ROC and risk-coverage figures.
SHOWN = ["Res_N", "Res_max", "Res_min", "Res_mean", "LR(resistance)", "max-softmax",
         "input-space margin", "DeepFool distance", "LR(softmax + resistance)"]


def _figures(is_error, scores, X, y, classes, logits, result, traced, hard, easy):
    errors = np.flatnonzero(is_error)[:40]
    label = lambda i: f"{'correct' if not is_error[i] else 'misclassified'} {y[i]}"  # noqa
    second = classes[np.argsort(-logits, axis=1, kind="stable")[:, 1]]
    return {
        "traces": plot_attack_traces(
            traced.conf_trace, traced.norm_trace, X[[hard, easy]],
            [f"hard: {label(hard)}, Res_min {result.res_min[hard]}, Res_N "
             f"{result.res_n[hard]:.2f}",
             f"easy: {label(easy)}, Res_min {result.res_min[easy]}, Res_N "
             f"{result.res_n[easy]:.2f}"]),
        # Heavy tails (images that never flip reach |r| = 70; 1 - max-softmax spans ten
        # decades), so every panel has a log axis.
        "histograms": plot_histograms(
            [result.res_n, result.res_max, result.res_min.astype(float), result.res_mean,
             scores["max-softmax"]],
            is_error, HISTOGRAMS, log_panels=HISTOGRAMS),
        "roc": plot_roc_curves(is_error, {name: scores[name] for name in SHOWN}),
        "risk_coverage": risk_coverage_figure(is_error, scores, SHOWN,
                                              title="Risk against coverage"),
        "errors": plot_image_grid(
            X[errors],
            [f"true {y[i]} pred {classes[result.c0[i]]}\nadv "
             f"{classes[result.adversarial_class[i]]} 2nd {second[i]}"
             for i in errors]),
    }


def _markdown(r):
    dataset = NAMES[r["dataset"]]
    writeup = WRITEUP[r["dataset"]]
    pct = lambda d: with_interval(d["value"], d["ci"], percent=True)  # noqa: E731
    count = lambda d: f"{d['count']} of {d['of']}"  # noqa: E731
    sep, det, cor, topk, dtc, comp = (r["separation"], r["detection"], r["correction"],
                                      r["topk_error"], r["detect_then_correct"],
                                      r["complementarity"])
    auroc = lambda name: metric_cell(det[name], "auroc")  # noqa: E731
    lines = [
        f"# Reproducing the write-up on {dataset}",
        "",
        f"Reference CNN ({r['net']['architecture']}, {r['net']['optimizer']}, "
        f"{r['net']['epochs']} epochs, seed {r['seed']}) trained on **{r['n_train']:,} training "
        f"images**; attacked on **{r['n_test']:,} test images**"
        + (f" (a random subset, `--limit {r['limit']}`)" if r["limit"] else "") + ". "
        f"Attack: {r['attack']['max_iter']} steps of size {r['attack']['step_size']}, "
        f"{r['attack']['norm'].upper()} norm, thresholds {tuple(r['attack']['thresholds'])}; "
        f"{mode_sentence(r['mode'], r['dataset'], r['fast'])}. Brackets hold bootstrap 95% intervals "
        f"({r['n_resamples']} resamples of the test images).",
        "",
    ]
    if r["dataset"] == "mnist" and r["n_train"] < 60000:
        lines += [f"MNIST's training split here holds only the first {r['n_train']:,} of the "
                  "official 60,000 images, so this net makes more errors than one trained on "
                  "all of them, and than the write-up's.", ""]
    best_softmax = min(SOFTMAX_SCORES, key=lambda name: det[name]["aurc"]["value"])
    lines += [
        "## Summary: the write-up, ours, and the baseline on the same net",
        "",
        table(["", "write-up", "ours (resistance)", "baseline (softmax, same net)"], [
            ["test errors", writeup["errors"], count(r["errors"]) + f" ({pct(r['errors'])})",
             ""],
            ["90% of correct have Res_N above", writeup.get("res_n_q10_correct", "not given"),
             f"{sep['Res_N']['q10_correct']:.3f}",
             f"max-softmax above {sep['max-softmax']['q10_correct']:.4f}"],
            ["90% of incorrect have Res_N below", writeup.get("res_n_q90_incorrect",
                                                               "not given"),
             _maybe(sep["Res_N"]["q90_incorrect"]),
             f"max-softmax below {_maybe(sep['max-softmax']['q90_incorrect'], 4)}"],
            ["error-detection AUROC", "not given", f"Res_N {auroc('Res_N')}",
             f"max-softmax {auroc('max-softmax')}"],
            ["AURC ×1000 (lower is better)", "not given",
             f"Res_N {metric_cell(det['Res_N'], 'aurc')}",
             f"max-softmax {metric_cell(det['max-softmax'], 'aurc')}"],
            ["errors whose true label is recovered", f"{writeup['corrected']} of "
             f"{writeup['errors']}", f"{count(cor['adversarial_class_is_true'])} (adversarial "
             "class)", f"{count(cor['second_choice_is_true'])} (softmax second choice)"],
            ["top-2 error", f"{100 * writeup['top2_error']:.2f}%",
             pct(topk["top2_predict_topk"]), pct(topk["top2_softmax"])],
            ["top-5 error", "not given", pct(topk["top5_predict_topk"]),
             pct(topk["top5_softmax"])],
            ["top-1 accuracy, detect then correct", "\"not as well as intended\"",
             pct(dtc["accuracy_resistance_classifier"]), pct(dtc["accuracy_net"]) + " (net)"],
        ]),
        "",
        "## 1. The network",
        "",
        f"{count(r['errors'])} test images misclassified: error rate {pct(r['errors'])}. "
        f"The attack changed the prediction of {pct(r['flip_rate']['correct'])} of the "
        f"correctly classified images and {pct(r['flip_rate']['incorrect'])} of the "
        f"misclassified ones within {r['attack']['max_iter']} steps.",
        "",
        "## 2. Separation, in the write-up's form",
        "",
        "\"90% of correctly classified images have a value above q; 90% of misclassified images "
        "have a value below q'\" (q is the 10% quantile among correct predictions, q' the 90% "
        "quantile among errors). The two groups' central 90% do not overlap when q > q'.",
        "",
        table(["score", "q (correct, 10%)", "q' (incorrect, 90%)", "q > q'"],
              [[name, f"{v['q10_correct']:.4g}", _maybe(v["q90_incorrect"], 4),
                "yes" if v["q90_incorrect"] is not None and v["q10_correct"] > v["q90_incorrect"]
                else "no"] for name, v in sep.items()]),
        "",
    ]
    if "at_writeup_thresholds" in sep["Res_N"]:
        at = sep["Res_N"]["at_writeup_thresholds"]
        lines += [f"At the write-up's own thresholds: {100 * at['correct_above']:.1f}% of correct "
                  f"predictions have Res_N above {writeup['res_n_q10_correct']} and "
                  f"{100 * at['incorrect_below']:.1f}% of errors have Res_N below "
                  f"{writeup['res_n_q90_incorrect']}. (Res_N's scale depends on the step size "
                  "and on how images are scaled, so the quantiles above are the fairer "
                  "comparison.)", ""]
    resistance = [*RESISTANCE, "LR(resistance)"]
    groups = {
        "resistance (this library)": resistance,
        "softmax-derived, from one forward pass": list(SOFTMAX_SCORES),
        "attack-based competitors": list(ATTACK_DISTANCES),
        f"learned combinations ({r['threshold_folds']}-fold out-of-fold)":
            [name for name in det if name not in (*resistance, *SOFTMAX_SCORES,
                                                   *ATTACK_DISTANCES)],
    }
    lines += [
        "## 3. Detecting the net's errors",
        "",
        "Errors are the positive class and every score is oriented so that higher means more "
        "likely an error. AUROC and FPR at 95% TPR rank errors against correct predictions; "
        "AURC, E-AURC and AUGRC (×1000, lower is better) score the selective classifier that "
        "rejects the highest scores first, as FD-Shifts (Jaeger et al., ICLR 2023) and Traub et "
        "al. (2024) do, with tied scores accepted in random order (the expectation, exactly). "
        "Learned detectors are scored on out-of-fold predictions only, all on the same folds: "
        "LR is `make_detector()` (a logistic regression on each input's normal scores, "
        "taken from its quantiles). Cost: "
        "forward (F) and backward (B) passes per image, and the seconds measured for the whole "
        "test set on this machine.",
        "",
        detection_markdown(det, groups, r["cost"]),
        "",
        f"The best softmax-derived score by AURC is {best_softmax}.",
        "",
        "![Risk against coverage](risk_coverage.png)",
        "",
        "![ROC curves](roc.png)",
        "",
        "![Histograms](histograms.png)",
        "",
        "## 4. Does resistance add anything beyond the softmax?",
        "",
        "The same learner, out-of-fold on the same folds, with and without the resistance "
        "features (Res_N, Res_max, Res_min, Res_mean). The detector sees each input through its "
        "quantiles, so no monotone transform of an input changes it: a difference is "
        "information, not scaling. "
        "Δ is (with) − (without) with its paired bootstrap 95% interval; resistance *adds* "
        "information when the interval excludes 0 (AUROC up, AURC down).",
        "",
        complementarity_markdown(comp),
        "",
        "## 5. Adversarial correction",
        "",
        table(["among the net's errors", "count", "rate"], [
            ["adversarial class = true label", count(cor["adversarial_class_is_true"]),
             pct(cor["adversarial_class_is_true"])],
            ["softmax second choice = true label (baseline)", count(cor["second_choice_is_true"]),
             pct(cor["second_choice_is_true"])],
            ["DeepFool's class = true label", count(cor["deepfool_class_is_true"]),
             pct(cor["deepfool_class_is_true"])],
            ["adversarial class = softmax second choice",
             count(cor["adversarial_is_second_choice_errors"]),
             pct(cor["adversarial_is_second_choice_errors"])],
        ]),
        "",
        "Over every image whose prediction flipped, the adversarial class equals the softmax "
        f"second choice for {pct(cor['adversarial_is_second_choice_all_flipped'])}.",
        "",
        "![Misclassified images](errors.png)",
        "",
        "## 6. Top-k",
        "",
        table(["", "resistance (`predict_topk`)", "softmax top-k (baseline)"], [
            ["top-2 error", pct(topk["top2_predict_topk"]), pct(topk["top2_softmax"])],
            ["top-5 error", pct(topk["top5_predict_topk"]), pct(topk["top5_softmax"])],
        ]),
        "",
        "Top-2 is [prediction, adversarial correction]; top-5 merges the net's top three classes "
        "with the classes the attack lands in away from each (see "
        "`ResistanceClassifier.predict_topk`).",
        "",
        "## 7. Detect, then correct",
        "",
        f"`ResistanceClassifier` under {r['threshold_folds']}-fold cross-validation over the test "
        "set, the net kept fixed (`FrozenEstimator`): each fold's detector and threshold are fit "
        "on the other folds.",
        "",
        table(["", "top-1 accuracy"], [
            ["net", pct(dtc["accuracy_net"])],
            ["ResistanceClassifier", pct(dtc["accuracy_resistance_classifier"])],
            ["difference", with_interval(dtc["difference"]["value"], dtc["difference"]["ci"],
                                         percent=True)],
        ]),
        "",
        f"It changed {dtc['changed']} predictions: {dtc['changed_to_true']} to the true label, "
        f"{dtc['changed_from_true']} away from a correct one.",
        "",
        "## 8. An image hard to attack and one easy to attack",
        "",
        "Conf of the original class (blue) and |r| (red) over the attack, as in the write-up's "
        "figure.",
        "",
        "![Attack traces](traces.png)",
        "",
        "## Settings, versions and timings",
        "",
        f"- Attack: `{call_repr('ResistanceAttack', r['attack'])}`",
        f"- Net: {', '.join(f'{k} {v}' for k, v in r['net'].items())}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in r['environment'].items() if k != 'machine')}",
        f"- Machine: {r['environment']['machine']}",
        f"- Seed {r['seed']}; wall time per phase (s), as first computed: "
        + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def _maybe(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}g}"


def main(args):
    """Entry point of ``resistclf reproduce``."""
    out = args.out or f"results/reproduce-{args.dataset}"
    run_reproduce(args.dataset, args.root, out=out, download=args.download, seed=args.seed,
                  limit=args.limit, max_iter=args.max_iter, n_resamples=args.n_resamples,
                  fast=args.fast, n_jobs=args.n_jobs,
                  scheduler=args.scheduler, verbose=not args.quiet)
