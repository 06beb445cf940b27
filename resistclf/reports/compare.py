"""``resistclf compare``: resistance across different trained networks, on the same images.

The write-up's correspondent asked whether the effect holds "when you compare two different
trained models to each other". Three networks are trained the reference way and studied by
the engine (:mod:`resistclf.study`) on the same test images: the reference CNN, an MLP, and
the CNN trained on a quarter of the training images. Each is scored beside its own
max-softmax.
"""

from functools import partial
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.model_selection import train_test_split

from .. import ResistanceAttack, ResultStore
from ..metrics import verdict
from ..models import MLP, SimpleCNN
from ..plotting import RiskCoverageDisplay, distinct_line_styles, plot_boxplots
from ..study import Measurements, analyse, complementarity_table, count_cell, \
    detection_table, markdown_table, measure, metric_cell, p_cell, percent_cell, tests_markdown
from ._reference import NAMES, attack_mode, load_dataset, mode_sentence, reference_net
from ._report import FOLDS, environment, header_markdown, parallel_backend, phase, \
    settings_markdown, write_report

#: The networks: name -> (module, fraction of the training images).
NETS = {
    "CNN": (SimpleCNN, 1.0),
    "MLP": (MLP, 1.0),
    "CNN, quarter of the data": (SimpleCNN, 0.25),
}
#: The panels of the box plots, every one on a log axis.
BOXES = ["Res_N", "Res_max", "Res_min (steps)", "Res_mean", "1 - max-softmax (baseline)"]
#: The scores compared across the networks in the overview table.
OVERVIEW = ["Res_N", "Res_max", "Res_min", "Res_mean", "LR(resistance)", "max-softmax",
            "input-space margin", "DeepFool distance", "FMN-L2 distance", "FMN-Linf distance",
            "DDN distance", "LR(softmax + resistance)"]
#: The report's one primary question, fixed before the run. The claim "on every net" is
#: an intersection-union test: it holds at 5% when each net's own test rejects at 5%, and
#: needs no multiplicity adjustment.
PRIMARY_QUESTION = ("Does resistance add to the softmax in detecting each net's errors, on "
                    "every one of the three nets? (Δ AUROC of LR(softmax + resistance) minus "
                    "LR(softmax), paired, out of fold, on each net; all three must exclude 0)")

_phase = partial(phase, "compare")


def run_compare(dataset, root, *, out, cache=None, download=False, seed=0, limit=1000,
                max_iter=500, n_resamples=1000, fast=False, n_jobs=None, scheduler=None,
                verbose=True):
    """Train (or load) the networks, study each on the same test images, and compare.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder of the report.
    cache : path or None, default=None
        The :class:`~resistclf.ResultStore` folder for the trained nets and every
        per-image result; None means ``out/cache``.
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
    store = ResultStore(out / "cache" if cache is None else cache)
    timings = {}
    with _phase("load the data", timings, verbose):
        X_train, y_train, X_test, y_test = load_dataset(dataset, root, download=download)
        rng = np.random.RandomState(seed)
        keep = np.sort(rng.choice(len(X_test), min(limit, len(X_test)), replace=False))
        X, y = X_test[keep], y_test[keep]

    # Timed on the reference CNN (a step costs the same whatever its weights).
    mode, settings = attack_mode(fast, dataset, SimpleCNN(), X, store)
    attack = ResistanceAttack(max_iter=max_iter, **settings)
    measured, infos = {}, {}
    for name, (module, fraction) in NETS.items():
        with _phase(f"train or load, measure: {name}", timings, verbose):
            train = np.arange(len(X_train)) if fraction == 1 else train_test_split(
                np.arange(len(X_train)), train_size=fraction, stratify=y_train,
                random_state=seed)[0]
            params = {"n_features": int(np.prod(X_train.shape[1:]))} if module is MLP else None
            net, infos[name] = reference_net(X_train[train], y_train[train], store=store,
                                             seed=seed, module=module, module_params=params,
                                             verbose=verbose)
            with parallel_backend(n_jobs, scheduler):
                measured[name] = measure(net, X, y, attack=attack, store=store,
                                         verbose=verbose)
    with _phase("analyse every net", timings, verbose):
        comparison, studies = _compare(measured, seed, n_resamples)
        primary = _primary(comparison)
    results = {
        "command": "compare", "dataset": dataset, "seed": seed, "limit": limit, "n_train": int(len(X_train)),
        "n_test": int(len(X_test)), "n_images": int(len(X)), "nets": infos,
        "attack": attack.get_params(), "mode": mode, "fast": fast, "folds": FOLDS,
        "n_resamples": n_resamples, "environment": environment(),
        "primary": primary, "comparison": comparison,
    }
    with _phase("figures and report", timings, verbose):
        figures = _figures(studies)
    results["seconds"] = timings
    arrays = {f"{name}/{key}": value for name, m in measured.items()
              for key, value in m.to_arrays().items()}
    write_report(out, _markdown(results, studies), results, figures, arrays=arrays)
    return results


def recompute(results, arrays):
    """Every number of a compare report's ``results.json`` that its per-image arrays give:
    the ``comparison`` entry."""
    attack = ResistanceAttack(**results["attack"])
    measured = {name: Measurements.from_arrays(
        {key.split("/", 1)[1]: value for key, value in arrays.items()
         if key.split("/", 1)[0] == name}, attack=attack) for name in results["nets"]}
    comparison = _compare(measured, results["seed"], results["n_resamples"])[0]
    return {"primary": _primary(comparison), "comparison": comparison}


def _primary(comparison):
    """Each net's primary test, and the verdict on all of them together."""
    per_net = {}
    for name, net in comparison.items():
        test = (net.get("tests") or {}).get("primary")
        word = "not testable" if test is None else verdict(
            test["difference"], test["p_value"], words=("adds", "loses"))
        per_net[name] = None if test is None else {
            key: test[key] for key in ("difference", "ci", "p_value", "resamples")}
        per_net[name] = {"word": word, "test": per_net[name],
                         "equivalent": bool(test and test["equivalence"]["equivalent"])}
    words = [net["word"] for net in per_net.values()]
    if all(word == "adds" for word in words):
        overall = "adds on every net"
    elif all(net["equivalent"] for net in per_net.values()):
        overall = "equivalent to the softmax alone on every net (TOST, ±0.005 AUROC)"
    else:
        overall = "not shown on every net: " + "; ".join(
            f"{word} on {' / '.join(n for n in per_net if per_net[n]['word'] == word)}"
            for word in dict.fromkeys(words))
    return {"question": PRIMARY_QUESTION, "per_net": per_net, "verdict": overall}


def _compare(measured, seed, n_resamples):
    """Each net's study (same folds and seed for all), and its summary for results.json."""
    studies = {name: analyse(m, folds=FOLDS, n_resamples=n_resamples, random_state=seed)
               for name, m in measured.items()}
    return {name: {**study.to_dict(), "mean": _means(study)}
            for name, study in studies.items()}, studies


def _means(study):
    """Mean resistance and max-softmax of all, correct and incorrect predictions."""
    m = study.measurements
    result, p_max = m.attacks[0], softmax(m.logits, axis=1).max(axis=1)
    return {group: {"Res_N": float(result.res_n[mask].mean()),
                    "Res_max": float(result.res_max[mask].mean()),
                    "Res_min": float(result.res_min[mask].mean()),
                    "Res_mean": float(result.res_mean[mask].mean()),
                    "max-softmax p": float(p_max[mask].mean())} if mask.any() else None
            for group, mask in [("all", np.ones(len(m), bool)), ("correct", ~m.is_error),
                                ("incorrect", m.is_error)]}


def _figures(studies):
    import matplotlib.pyplot as plt

    curves, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 5), squeeze=False)
    groups = {}
    for ax, (name, study) in zip(axes[0], studies.items()):
        m = study.measurements
        if study.results["detection"] is None:
            ax.set_title(name)
            ax.text(0.5, 0.5, "too few errors or correct predictions", ha="center")
        else:
            shown = study.shown_scores()
            distinct_line_styles(ax, len(shown))
            for score in shown:
                RiskCoverageDisplay.from_predictions(m.is_error, study.scores[score],
                                                     name=score, ax=ax)
            ax.set_title(f"{name}: risk against coverage")
            ax.legend(fontsize=6, loc="upper left")
        result = m.attacks[0]
        for group, mask in [("correct", ~m.is_error), ("incorrect", m.is_error)]:
            if mask.any():
                groups[f"{name}, {group}"] = [
                    result.res_n[mask], result.res_max[mask], result.res_min[mask].astype(float),
                    result.res_mean[mask], study.scores["max-softmax"][mask]]
    curves.tight_layout()
    return {"risk_coverage": curves,
            "features": plot_boxplots(groups, BOXES, log_panels=BOXES)}


def _markdown(r, studies):
    nets = r["comparison"]
    names = list(nets)

    def metric(name, score, key):
        d = nets[name]["detection"]
        return "n/a" if d is None or score not in d else metric_cell(d[score], key)

    def mean_cell(name, group, key, digits=3):
        m = nets[name]["mean"][group]
        return "n/a" if m is None else f"{m[key]:.{digits}f}"

    a = r["attack"]
    p = r["primary"]

    def primary_cell(net):
        if net["test"] is None:
            return f"{net['word']}"
        low, high = net["test"]["ci"]
        return (f"{net['test']['difference']:+.4f} [{low:+.4f}, {high:+.4f}], p "
                f"{p_cell(net['test']['p_value'], net['test']['resamples'])}: {net['word']}")

    opening = (f"**Primary question.** {p['question']}\n\n**Verdict:** resistance "
               f"{p['verdict']}. "
               + "; ".join(f"{name}: {primary_cell(net)}" for name, net in p["per_net"].items())
               + ". Every other comparison in this report is secondary.")
    lines = [
        header_markdown(
            f"Resistance across trained networks, on {NAMES[r['dataset']]}", r,
            f"Three networks, each trained with Adam (lr 1e-3, batches of 128) for "
            f"{r['nets'][names[0]]['epochs']} epochs with seed {r['seed']}, studied on the "
            f"same **{r['n_images']:,} test images** (a random subset of the {r['n_test']:,}, "
            f"seed {r['seed']}). Attack: {a['max_iter']} steps of size {a['step_size']}, "
            f"{a['norm'].upper()} norm; {mode_sentence(r['mode'], r['dataset'], r['fast'])}. "
            "Each net's own errors are the positive class and every score is oriented so that "
            "higher means more likely an error (AURC ×1000: lower is better). Learned detectors "
            f"are scored {r['folds']}-fold out-of-fold on each net's images, on the same folds. "
            "With a few dozen errors per net, the intervals are wide: the reproduce reports, "
            "on 10,000 images, are the firmer test.", opening=opening),
        markdown_table(["", *names], [
            ["architecture", *(r["nets"][n]["architecture"] for n in names)],
            ["training images", *(f"{r['nets'][n]['n_train']:,}" for n in names)],
            ["accuracy", *(percent_cell(nets[n]["accuracy"]) for n in names)],
            ["errors", *(str(nets[n]["errors"]["count"]) for n in names)],
            ["mean Res_N, all / correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_N") for g in ("all", "correct", "incorrect"))
               for n in names)],
            ["mean Res_mean, correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_mean") for g in ("correct", "incorrect"))
               for n in names)],
            ["mean Res_min (steps), correct / incorrect",
             *(" / ".join(mean_cell(n, g, "Res_min", 1) for g in ("correct", "incorrect"))
               for n in names)],
            ["mean max-softmax p, correct / incorrect",
             *(" / ".join(mean_cell(n, g, "max-softmax p") for g in ("correct", "incorrect"))
               for n in names)],
            ["resistance attack flipped the prediction",
             *(f"{100 * np.mean(studies[n].measurements.attacks[0].flipped):.1f}%"
               for n in names)],
            *([f"AUROC, {score}", *(metric(n, score, "auroc") for n in names)]
              for score in OVERVIEW),
            *([f"AURC ×1000, {score}", *(metric(n, score, "aurc") for n in names)]
              for score in OVERVIEW),
            ["errors whose true label is the adversarial class",
             *(count_cell(nets[n]["correction"]["adversarial_class_is_true"]) for n in names)],
            ["errors whose true label is the softmax 2nd choice (baseline)",
             *(count_cell(nets[n]["correction"]["second_choice_is_true"]) for n in names)],
            *([f"errors whose true label is {competitor}'s class",
               *(count_cell(nets[n]["correction"][f"{competitor}_class_is_true"])
                 for n in names)]
              for competitor in ("DeepFool", "FMN-L2", "DDN")
              if f"{competitor}_class_is_true" in nets[names[0]]["correction"]),
        ]),
        "",
        "![Risk against coverage](risk_coverage.png)",
        "",
        "![Resistance and max-softmax, correct and incorrect predictions](features.png)",
        "",
    ]
    for name, study in studies.items():
        net = nets[name]
        lines += [f"## {name}", ""]
        if net["detection"] is None:
            lines += ["Too few errors or correct predictions to score detectors.", ""]
            continue
        lines += [detection_table(net["detection"], study.groups, net["cost"]), "",
                  "Does resistance add anything beyond the softmax? (Δ = with − without, paired "
                  "bootstrap 95% interval; `make_detector()` on the same folds.)", "",
                  complementarity_table(net["complementarity"]), ""]
        if net.get("tests"):
            lines += ["Paired tests on this net: its complementarity test (one part of the "
                      "primary question), then its secondary tests, Holm-adjusted within the "
                      "net (exploratory across the nets).", "", tests_markdown(net["tests"]),
                      ""]
    lines.append(settings_markdown(r, nets=r["nets"]))
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf compare``."""
    out = args.out or f"results/compare-{args.dataset}"
    run_compare(args.dataset, args.root, out=out, cache=args.cache, download=args.download,
                seed=args.seed, limit=args.limit, max_iter=args.max_iter,
                n_resamples=args.n_resamples, fast=args.fast, n_jobs=args.n_jobs,
                scheduler=args.scheduler, verbose=not args.quiet)
