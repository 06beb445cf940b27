"""The demo: every claim of the write-up beside its baseline, on bundled digits.

Needs no download: scikit-learn ships the 1,797 8x8 digits.
"""

import sys
import time

import numpy as np
from sklearn.model_selection import train_test_split

from .. import ResistanceAttack, ResistanceClassifier
from ..datasets import load_digits_images
from ..metrics import detection_metrics, softmax_topk, topk_accuracy
from ..models import SimpleCNN, make_net
from ..scores import one_minus_confidence, resistance_error_scores
from ._report import write_json

#: Fraction of the training split held out to fit the error detector.
HELD_OUT = 0.2


def run_demo(*, seed=0, max_iter=500, test_size=0.3, verbose=True):
    """Train a small CNN on digits, attack a held-out split, compare with baselines.

    Parameters
    ----------
    seed : int, default=0
        Seeds the split, the net's training and the detector.
    max_iter : int, default=500
        Attack steps.
    test_size : float, default=0.3
        Fraction of the digits kept for the final evaluation.
    verbose : bool, default=True
        Show progress bars.

    Returns
    -------
    results : dict
        Every number the demo prints, JSON-serialisable.
    """
    start = time.perf_counter()
    X, y = load_digits_images()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    net = make_net(SimpleCNN, image_size=8, channels=(16, 32), hidden=64, max_epochs=30,
                   lr=3e-3)
    attack = ResistanceAttack(max_iter=max_iter, verbose=verbose)
    if verbose:
        print(f"Training a small CNN on {1 - HELD_OUT:.0%} of {len(X_train)} digits, then "
              "attacking the rest and the test split...", file=sys.stderr)
    clf = ResistanceClassifier(net, attack=attack, cv=HELD_OUT, random_state=seed)
    clf.fit(X_train, y_train)

    attacked = clf.attack_results(X_test)
    proba = clf.predict_proba(X_test)
    net_pred = clf.classes_[attacked.c0]
    is_error = net_pred != y_test
    softmax_ranked = softmax_topk(proba, clf.classes_, 2)
    detector_score = clf.predict_error_proba(X_test)
    scores = {**resistance_error_scores(attacked, ("res_n", "res_max", "res_min")),
              "detector": detector_score, "max_softmax": one_minus_confidence(proba.max(axis=1))}

    def quantiles(values):
        return [float(q) for q in np.quantile(values, [0.1, 0.5, 0.9])] if len(values) else []

    return {
        "seed": seed,
        "max_iter": max_iter,
        "step_size": attack.step_size,
        "n_train": int(len(X_train)),
        "n_test": int(len(X_test)),
        "net_accuracy": float(1 - is_error.mean()),
        "net_errors": int(is_error.sum()),
        "res_n_quantiles_correct": quantiles(attacked.res_n[~is_error]),
        "res_n_quantiles_incorrect": quantiles(attacked.res_n[is_error]),
        "flip_rate_correct": float(attacked.flipped[~is_error].mean()),
        "flip_rate_incorrect": float(attacked.flipped[is_error].mean()) if is_error.any() else None,
        "auroc": {name: detection_metrics(is_error, s)["auroc"] for name, s in scores.items()},
        "errors_fixed_adversarial": int((clf.classes_[attacked.adversarial_class] == y_test)[
            is_error].sum()),
        "errors_fixed_second_choice": int((softmax_ranked[:, 1] == y_test)[is_error].sum()),
        "threshold": float(clf.threshold_),
        "accuracy_resistance_classifier": float(clf.score(X_test, y_test)),
        "top2_predict_topk": topk_accuracy(y_test, clf.predict_topk(X_test, k=2)),
        "top2_softmax": topk_accuracy(y_test, softmax_ranked),
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_table(r):
    """The demo's results as an aligned plain-text table."""
    pct = "{:.1%}".format
    quant = lambda q: " / ".join(f"{v:.2f}" for v in q) if q else "none"  # noqa: E731
    auroc = r["auroc"]
    rows = [
        ("", "resistclf", "baseline, same net"),
        ("Net top-1 accuracy", "", f"{pct(r['net_accuracy'])} ({r['net_errors']} errors "
                                   f"of {r['n_test']})"),
        ("Res_N 10/50/90% quantiles, correct", quant(r["res_n_quantiles_correct"]), ""),
        ("Res_N 10/50/90% quantiles, incorrect", quant(r["res_n_quantiles_incorrect"]), ""),
        ("Prediction flipped, correct / incorrect",
         f"{pct(r['flip_rate_correct'])} / "
         f"{pct(r['flip_rate_incorrect']) if r['flip_rate_incorrect'] is not None else 'n/a'}", ""),
        ("Error-detection AUROC, Res_N", f"{auroc['res_n']:.3f}", f"max-softmax "
                                                                  f"{auroc['max_softmax']:.3f}"),
        ("Error-detection AUROC, Res_max", f"{auroc['res_max']:.3f}", ""),
        ("Error-detection AUROC, Res_min", f"{auroc['res_min']:.3f}", ""),
        ("Error-detection AUROC, detector P(error)", f"{auroc['detector']:.3f}", ""),
        ("Errors whose true label is recovered",
         f"{r['errors_fixed_adversarial']} of {r['net_errors']} (adversarial class)",
         f"{r['errors_fixed_second_choice']} of {r['net_errors']} (softmax 2nd choice)"),
        ("Top-1 accuracy", f"{pct(r['accuracy_resistance_classifier'])} (detect + correct)",
         f"{pct(r['net_accuracy'])} (net)"),
        ("Top-2 accuracy", f"{pct(r['top2_predict_topk'])} (predict_topk)",
         f"{pct(r['top2_softmax'])} (softmax top-2)"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"resistclf demo: scikit-learn digits (8x8), small CNN trained through skorch, "
        f"seed {r['seed']}",
        f"Of {r['n_train']} training images, the net trained on {1 - HELD_OUT:.0%} and the "
        f"error detector on the {HELD_OUT:.0%} held out; evaluated on {r['n_test']} test "
        "images.",
        f"Attack: {r['max_iter']} steps of size {r['step_size']}, L2. AUROC treats errors as "
        f"positives; NaN if there are none.",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", f"Finished in {r['seconds']} s."]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf demo``."""
    results = run_demo(seed=args.seed, max_iter=args.max_iter, verbose=not args.quiet)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
