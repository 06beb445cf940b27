"""``resistclf reproduce``: the write-up's claims on MNIST or FashionMNIST, beside baselines.

Every figure is measured on one network, the reference CNN, by the study engine
(:mod:`resistclf.study`); this command only chooses the data and the net, and adds the
write-up's own numbers and the attack traces of its figure.
"""

from functools import partial
from pathlib import Path

import numpy as np

from .. import ResistanceAttack, ResultStore
from ..study import analyse, markdown_table, measure, metric_cell, percent_cell, \
    verdict_markdown
from ._reference import CLASS_NAMES, NAMES, attack_mode, load_dataset, mode_sentence, \
    reference_net
from ._report import FOLDS, header_markdown, parallel_backend, phase, settings_markdown, \
    reanalyse_study, rewrite_study, study_results, traces_figure, write_report

#: The write-up's own figures (its networks, trained on the full training sets).
WRITEUP = {
    "mnist": {"errors": 62, "res_n_q10_correct": 0.97, "res_n_q90_incorrect": 0.57,
              "corrected": 53, "top2_error": 0.0009},
    "fashion-mnist": {"errors": 876, "corrected": 613, "top2_error": 0.026},
}

_phase = partial(phase, "reproduce")


def run_reproduce(dataset, root, *, out, cache=None, download=False, seed=0, limit=None,
                  max_iter=500, n_resamples=1000, fast=False, n_jobs=None, scheduler=None,
                  verbose=True):
    """Run the study on ``dataset`` and write the report to ``out``.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder of the report.
    cache : path or None, default=None
        The :class:`~resistclf.ResultStore` folder, where the trained net and every
        per-image result are kept, so that a rerun (or another command on the same
        images) reuses them and an interrupted run resumes; None means ``out/cache``.
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
    store = ResultStore(out / "cache" if cache is None else cache)
    timings = {}
    with _phase("load the data and the reference net", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        net, net_info = reference_net(X_train, y_train, store=store, seed=seed,
                                      verbose=verbose)
    if limit is not None and limit < len(X_test):
        keep = np.sort(np.random.RandomState(seed).choice(len(X_test), limit, replace=False))
        X_test, y_test = X_test[keep], y_test[keep]

    mode, settings = attack_mode(fast, dataset, net.module_, X_test, store)
    attack = ResistanceAttack(max_iter=max_iter, **settings)
    with _phase("measure: logits, the attack at ranks 0-2, the competitors", timings,
                verbose), parallel_backend(n_jobs, scheduler):
        measured = measure(net, X_test, y_test, attack=attack, ranks=3, store=store,
                           verbose=verbose)
    with _phase("analyse: detectors, metrics, bootstrap intervals", timings, verbose):
        study = analyse(measured, folds=FOLDS, n_resamples=n_resamples, random_state=seed)
    with _phase("traces of a hard and an easy image", timings, verbose):
        traces, traced = traces_figure(net.module_, attack, measured, X_test)
    results = study_results(study, {
        "command": "reproduce",
        "dataset": dataset, "seed": seed, "limit": limit, "n_train": int(len(X_train)),
        "n_test": int(len(X_test)), "net": net_info, "attack": attack.get_params(),
        "mode": mode, "fast": fast, "traced_images": traced})
    with _phase("figures and report", timings, verbose):
        figures = {**study.figures(X_test, class_names=CLASS_NAMES.get(dataset)),
                   "traces": traces}
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
    writeup = WRITEUP[r["dataset"]]
    det, sep, cor, topk = r["detection"], r["separation"], r["correction"], r["topk_error"]
    count = lambda d: f"{d['count']} of {d['of']}"  # noqa: E731
    def cell(name, key):
        return "n/a" if det is None else metric_cell(det[name], key)

    lines = [
        header_markdown(f"Reproducing the write-up on {NAMES[r['dataset']]}", r,
                        f"Reference CNN ({r['net']['architecture']}, {r['net']['optimizer']}, "
                        f"{r['net']['epochs']} epochs, seed {r['seed']}) trained on "
                        f"**{r['n_train']:,} training images**; attacked on **{r['n_test']:,} "
                        "test images**" + (f" (a random subset, `--limit {r['limit']}`)"
                                           if r["limit"] else "") + ". "
                        + _attack_sentence(r), opening=verdict_markdown(r)),
        "## Summary: the write-up, ours, and the baseline on the same net",
        "",
        markdown_table(["", "write-up", "ours (resistance)", "baseline (softmax, same net)"], [
            ["test errors", writeup["errors"], f"{count(r['errors'])} "
                                               f"({percent_cell(r['errors'])})", ""],
            ["90% of correct have Res_N above", writeup.get("res_n_q10_correct", "not given"),
             f"{sep['Res_N']['q10_correct']:.3f}",
             f"max-softmax above {sep['max-softmax']['q10_correct']:.4f}"],
            ["90% of incorrect have Res_N below", writeup.get("res_n_q90_incorrect",
                                                               "not given"),
             _maybe(sep["Res_N"]["q90_incorrect"]),
             f"max-softmax below {_maybe(sep['max-softmax']['q90_incorrect'], 4)}"],
            ["error-detection AUROC", "not given", f"Res_N {cell('Res_N', 'auroc')}",
             f"max-softmax {cell('max-softmax', 'auroc')}"],
            ["AURC ×1000 (lower is better)", "not given", f"Res_N {cell('Res_N', 'aurc')}",
             f"max-softmax {cell('max-softmax', 'aurc')}"],
            ["errors whose true label is recovered", f"{writeup['corrected']} of "
             f"{writeup['errors']}", f"{count(cor['adversarial_class_is_true'])} (adversarial "
             "class)", f"{count(cor['second_choice_is_true'])} (softmax second choice)"],
            ["top-2 error", f"{100 * writeup['top2_error']:.2f}%",
             percent_cell(topk["top2_predict_topk"]), percent_cell(topk["top2_softmax"])],
            ["top-5 error", "not given", percent_cell(topk["top5_predict_topk"]),
             percent_cell(topk["top5_softmax"])],
            ["top-1 accuracy, detect then correct", "\"not as well as intended\"",
             *(["n/a", "n/a"] if r["detect_then_correct"] is None else [
                 percent_cell(r["detect_then_correct"]["accuracy_resistance_classifier"]),
                 percent_cell(r["detect_then_correct"]["accuracy_net"]) + " (net)"])],
        ]),
        "",
        "## Separation, in the write-up's form",
        "",
        "\"90% of correctly classified images have a value above q; 90% of misclassified images "
        "have a value below q'\" (q is the 10% quantile among correct predictions, q' the 90% "
        "quantile among errors). The two groups' central 90% do not overlap when q > q'.",
        "",
        markdown_table(["score", "q (correct, 10%)", "q' (incorrect, 90%)", "q > q'"],
                       [[name, _maybe(v["q10_correct"], 4), _maybe(v["q90_incorrect"], 4),
                         "yes" if None not in v.values() and v["q10_correct"]
                         > v["q90_incorrect"] else "no"] for name, v in sep.items()]),
        "",
    ]
    if "res_n_q10_correct" in writeup:
        result, is_error = study.measurements.attacks[0], study.measurements.is_error
        lines += [f"At the write-up's own thresholds: "
                  f"{100 * np.mean(result.res_n[~is_error] > writeup['res_n_q10_correct']):.1f}% "
                  f"of correct predictions have Res_N above {writeup['res_n_q10_correct']} and "
                  f"{100 * np.mean(result.res_n[is_error] < writeup['res_n_q90_incorrect']):.1f}%"
                  f" of errors have Res_N below {writeup['res_n_q90_incorrect']}. (Res_N's scale "
                  "depends on the step size and on how images are scaled, so the quantiles "
                  "above are the fairer comparison.)", ""]
    lines += [
        study.to_markdown(level=2),
        "![Misclassified images: true label, prediction, adversarial class, softmax second "
        "choice](errors.png)",
        "",
        "## An image hard to attack and one easy to attack",
        "",
        "Conf of the original class (blue) and |r| (red) over the attack, as in the write-up's "
        "figure.",
        "",
        "![Attack traces](traces.png)",
        "",
        settings_markdown(r),
    ]
    return "\n".join(lines)


def _attack_sentence(r):
    a = r["attack"]
    return (f"Attack: {a['max_iter']} steps of size {a['step_size']}, {a['norm'].upper()} norm, "
            f"thresholds {tuple(a['thresholds'])}; "
            f"{mode_sentence(r['mode'], r['dataset'], r['fast'])}.")


def _maybe(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}g}"


def main(args):
    """Entry point of ``resistclf reproduce``."""
    out = args.out or f"results/reproduce-{args.dataset}"
    run_reproduce(args.dataset, args.root, out=out, cache=args.cache, download=args.download,
                  seed=args.seed, limit=args.limit, max_iter=args.max_iter,
                  n_resamples=args.n_resamples, fast=args.fast, n_jobs=args.n_jobs,
                  scheduler=args.scheduler, verbose=not args.quiet)
