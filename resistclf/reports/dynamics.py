"""``resistclf dynamics``: resistance of one network, early in training and late.

The write-up's correspondent asked whether the link between resistance and correctness holds
"when you compare one model early in training to itself later in training". The reference
CNN trains with :class:`~resistclf.ResistanceMonitor`, which attacks a fixed subset of test
images after every epoch; each quantity is plotted against the epoch, beside max-softmax.
"""

import math
from dataclasses import fields
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .. import AttackResult, ResistanceAttack, ResistanceMonitor, ResultStore
from ..metrics import MetricDifference, holm, paired_difference, verdict
from ..models import SimpleCNN, make_net
from ..plotting import plot_curves
from ..scores import one_minus_confidence, resistance_error_scores
from ..study import markdown_table, p_cell
from ._reference import NAMES, attack_mode, load_dataset, mode_sentence
from ._report import environment, parallel_backend, phase, settings_markdown, write_report

#: History keys shown in skorch's epoch log; the monitor records more.
LOGGED = ["accuracy", "n_errors", "auroc_res_n", "auroc_max_softmax", "seconds"]

RES_N_PANEL = "Res_N: median and 10-90% band (log scale)"
#: The per-image fields of the attack's result kept for every epoch.
FIELDS = [f.name for f in fields(AttackResult) if not f.name.endswith("_trace")]
#: The report's one primary question, fixed before the run.
PRIMARY_QUESTION = ("After the last epoch, does Res_N detect the net's errors better than "
                    "max-softmax on the same images? (Δ AUROC, paired bootstrap)")

_phase = partial(phase, "dynamics")


def run_dynamics(dataset, root, *, out, cache=None, download=False, seed=0, limit=300,
                 epochs=10, max_iter=500, n_resamples=1000, fast=False, n_jobs=None,
                 scheduler=None, verbose=True):
    """Train the reference CNN with a :class:`ResistanceMonitor` and report each epoch.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    root : path
        Folder that holds the torchvision raw files (``MNIST/raw``, ...).
    out : path
        Output folder of the report.
    cache : path or None, default=None
        The :class:`~resistclf.ResultStore` folder where the training history is
        kept, so that a rerun with the same settings only redraws the report;
        None means ``out/cache``.
    download : bool, default=False
        Let torchvision fetch missing files.
    seed : int, default=0
        Seeds the validation subset and the net's training.
    limit : int, default=300
        Size of the fixed validation subset, drawn at random from the test set.
    epochs : int, default=10
        Training epochs.
    max_iter : int, default=500
        Steps of the resistance attack.
    n_resamples : int, default=1000
        Bootstrap resamples for the paired 95% intervals.
    fast : bool, default=False
        Attack in the fastest mode the benchmark found equivalent to exact mode.
    n_jobs : int or None, default=None
        Worker processes for the resistance attack (see ``parallel_backend``).
    scheduler : str or None, default=None
        Address of a dask scheduler to run the attack's jobs on.
    verbose : bool, default=True
        Progress on standard error and skorch's epoch log.

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
        X_val, y_val = X_test[keep], y_test[keep]

    # Even batches (two of 150 for 300 images), as the committed reports were measured: the
    # attack's results depend on the batch size in their last digits.
    batch_size = math.ceil(len(X_val) / math.ceil(len(X_val) / 256))
    # Timed on the CNN the run trains (a step costs the same whatever its weights).
    mode, settings = attack_mode(fast, dataset, SimpleCNN(), X_val, store)
    attack = ResistanceAttack(max_iter=max_iter, batch_size=batch_size, **settings)
    info = {"architecture": "SimpleCNN()", "optimizer": "Adam(lr=1e-3), batch_size=128",
            "epochs": epochs, "seed": seed, "n_train": int(len(X_train)),
            "n_val": int(len(X_val)), "mode": mode, "fast": fast, "attack": attack.get_params()}
    training = f"train {epochs} epochs, attacking {len(X_val)} images after each"
    with _phase(training, timings, verbose), parallel_backend(n_jobs, scheduler):
        trained = store.json("dynamics", (info, X_train, y_train, X_val, y_val),
                             lambda: _history(X_train, y_train, X_val, y_val, attack, info,
                                              verbose))
    arrays = {"y": np.asarray(y_val),
              **{key: np.asarray(value) for key, value in trained["per_image"].items()}}
    results = {"command": "dynamics", "dataset": dataset, **info, "n_test": int(len(X_test)),
               "n_resamples": n_resamples, "history": trained["history"],
               "environment": environment(),
               "analysis": _analyse(arrays, epochs, n_resamples, seed)}
    with _phase("figures and report", timings, verbose):
        figures = {"dynamics": _figure(trained["history"])}
    results["seconds"] = timings
    write_report(out, _markdown(results), results, figures, arrays=arrays)
    return results


def recompute(results, arrays):
    """Every number of a dynamics report's ``results.json`` that its per-image arrays give:
    the ``analysis`` entry (skorch's history, with its losses and times, is read)."""
    return {"analysis": _analyse(arrays, results["epochs"], results["n_resamples"],
                                 results["seed"])}


def _analyse(arrays, epochs, n_resamples, seed):
    """Each epoch's values, recomputed from the per-image arrays, with the paired test of
    Res_N against max-softmax; the last epoch's test is the primary one, the others are
    Holm-adjusted and exploratory."""
    y = arrays["y"]
    monitor = ResistanceMonitor(None, y)  # summarize reads only the labels
    per_epoch = []
    for epoch in range(1, epochs + 1):
        result = AttackResult(**{name: arrays[f"epoch{epoch}.{name}"] for name in FIELDS})
        values = {key.removeprefix("resistance_"): value
                  for key, value in monitor.summarize(result).items()}
        is_error = result.c0 != y
        test = None
        if 0 < is_error.sum() < len(y):
            test = paired_difference(
                MetricDifference("auroc"), is_error,
                resistance_error_scores(result, ["res_n"])["res_n"],
                one_minus_confidence(result.conf0),
                n_resamples=n_resamples, random_state=seed)
        per_epoch.append({"epoch": epoch, **values, "res_n_minus_max_softmax": test})
    *earlier, last = per_epoch
    adjusted = holm({e["epoch"]: e["res_n_minus_max_softmax"]["p_value"] for e in earlier
                     if e["res_n_minus_max_softmax"] is not None})
    for e in earlier:
        if e["res_n_minus_max_softmax"] is not None:
            e["res_n_minus_max_softmax"]["p_holm"] = adjusted[e["epoch"]]
    return {"primary_question": PRIMARY_QUESTION, "primary": last["res_n_minus_max_softmax"],
            "epochs": per_epoch}


def _verdict(test, p_key="p_value"):
    if test is None:
        return "not testable (no errors, or no correct predictions)"
    return verdict(test["difference"], test[p_key], words=("Res_N better", "Res_N worse"))


def _test_cell(test, p_key="p_value"):
    if test is None:
        return "n/a"
    low, high = test["ci"]
    return (f"{test['difference']:+.3f} [{low:+.3f}, {high:+.3f}], p "
            f"{p_cell(test[p_key], test['resamples'])}: {_verdict(test, p_key)}")


def _history(X_train, y_train, X_val, y_val, attack, info, verbose):
    """The per-epoch history of the monitored training; a run cut short stops the command."""
    monitor = ResistanceMonitor(X_val, y_val, attack=attack)
    net = make_net(SimpleCNN, max_epochs=info["epochs"], verbose=int(verbose),
                   n_classes=int(y_train.max()) + 1)
    keys = monitor.initialize().keys_
    net.set_params(callbacks=[("resistance", monitor)],
                   callbacks__print_log__keys_ignored=[
                       k for k in keys if k.removeprefix("resistance_") not in LOGGED])
    with torch.random.fork_rng():
        torch.manual_seed(info["seed"])
        net.fit(X_train, y_train)
    if len(net.history) < info["epochs"]:
        raise KeyboardInterrupt(
            f"Training stopped after {len(net.history)} of {info['epochs']} epochs "
            "(interrupted); its history was not kept. Run the command again.")
    return {"history": [{key: value for key, value in epoch.items() if key != "batches"}
                        for epoch in net.history.to_list()],
            "per_image": {f"epoch{epoch}.{name}": getattr(result, name).tolist()
                          for epoch, result in enumerate(monitor.attack_results_, start=1)
                          for name in FIELDS}}


def _series(history, key):
    return np.array([np.nan if epoch.get(key) is None else epoch[key] for epoch in history],
                    dtype=float)


def _figure(history):
    s = partial(_series, history)
    epochs = s("epoch")
    return plot_curves(epochs, {
        "training loss": {"train loss": s("train_loss")},
        "validation accuracy": {"accuracy": s("resistance_accuracy")},
        RES_N_PANEL: {
            "correct": s("resistance_res_n_q50_correct"),
            "correct band": [s("resistance_res_n_q10_correct"),
                             s("resistance_res_n_q90_correct")],
            "incorrect": s("resistance_res_n_q50_incorrect"),
            "incorrect band": [s("resistance_res_n_q10_incorrect"),
                               s("resistance_res_n_q90_incorrect")]},
        "error-detection AUROC": {"Res_N": s("resistance_auroc_res_n"),
                                  "max-softmax (baseline)": s("resistance_auroc_max_softmax")},
        "attack outcome": {
            "errors whose adversarial class is the true label": s("resistance_correction_rate"),
            "images whose prediction the attack changed": s("resistance_flip_rate")},
    }, log_panels=[RES_N_PANEL])


def _fmt(value, digits=3):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _markdown(r):
    h = r["history"]
    first, last = h[0], h[-1]
    get = lambda epoch, key: epoch.get(f"resistance_{key}")  # noqa: E731
    a = r["analysis"]
    lines = [
        f"# Resistance over training, on {NAMES[r['dataset']]}",
        "",
        f"**Primary question.** {a['primary_question']}",
        "",
        f"**Verdict after epoch {last['epoch']}:** Δ AUROC (Res_N − max-softmax) "
        f"{_test_cell(a['primary'])}.",
        "",
        f"The reference CNN ({r['architecture']}, {r['optimizer']}, seed {r['seed']}) trains "
        f"for {r['epochs']} epochs on **{r['n_train']:,} training images**. After every epoch, "
        f"`ResistanceMonitor` attacks the same **{r['n_val']} test images** (a random subset of "
        f"the {r['n_test']:,}, seed {r['seed']}) with {r['attack']['max_iter']} steps of size "
        f"{r['attack']['step_size']} ({mode_sentence(r['mode'], r['dataset'], r['fast'])}) "
        "and records the values below in the net's history. AUROC treats the net's errors as "
        "positives; max-softmax is the baseline on the same net and images. Intervals are "
        f"paired bootstrap 95% intervals ({r['n_resamples']} resamples of the images); the "
        "earlier epochs' tests are exploratory, Holm-adjusted over the epochs. Every number "
        "of the analysis is recomputed from `per_image.npz` by `resistclf verify`.",
        "",
    ]
    if r["dataset"] == "mnist" and r["n_train"] < 60000:
        lines += [f"MNIST's training split here holds only the first {r['n_train']:,} of the "
                  "official 60,000 images.", ""]
    lines += [
        f"With {first['resistance_n_errors']} errors among the {r['n_val']} images after epoch "
        f"1 and {last['resistance_n_errors']} after epoch {last['epoch']}, each AUROC rests on "
        "few positives: the paired intervals say which differences the data can tell apart.",
        "",
        "## Early in training against late",
        "",
        markdown_table(["", f"epoch {first['epoch']}", f"epoch {last['epoch']}"], [
            ["validation accuracy", _fmt(get(first, "accuracy")), _fmt(get(last, "accuracy"))],
            ["errors", get(first, "n_errors"), get(last, "n_errors")],
            ["mean Res_N, correct", _fmt(get(first, "res_n_mean_correct")),
             _fmt(get(last, "res_n_mean_correct"))],
            ["mean Res_N, incorrect", _fmt(get(first, "res_n_mean_incorrect")),
             _fmt(get(last, "res_n_mean_incorrect"))],
            ["error-detection AUROC, Res_N", _fmt(get(first, "auroc_res_n")),
             _fmt(get(last, "auroc_res_n"))],
            ["error-detection AUROC, max-softmax (baseline)",
             _fmt(get(first, "auroc_max_softmax")), _fmt(get(last, "auroc_max_softmax"))],
            ["adversarial correction rate", _fmt(get(first, "correction_rate")),
             _fmt(get(last, "correction_rate"))],
            ["attack changed the prediction", _fmt(get(first, "flip_rate")),
             _fmt(get(last, "flip_rate"))],
        ]),
        "",
        "![Quantities against the epoch](dynamics.png)",
        "",
        "## Every epoch",
        "",
        markdown_table(["epoch", "train loss", "accuracy", "errors", "Res_N q10/q50/q90, correct",
               "Res_N q10/q50/q90, incorrect", "AUROC Res_N", "AUROC max-softmax",
               "correction rate", "flipped", "monitor s",
               "Δ AUROC Res_N − max-softmax (Holm p)"],
              [[e["epoch"], _fmt(e["train_loss"], 4), _fmt(get(e, "accuracy")),
                get(e, "n_errors"),
                " / ".join(_fmt(get(e, f"res_n_{q}_correct"), 2) for q in ("q10", "q50", "q90")),
                " / ".join(_fmt(get(e, f"res_n_{q}_incorrect"), 2)
                           for q in ("q10", "q50", "q90")),
                _fmt(get(e, "auroc_res_n")), _fmt(get(e, "auroc_max_softmax")),
                _fmt(get(e, "correction_rate")), _fmt(get(e, "flip_rate")),
                _fmt(get(e, "seconds"), 1),
                _test_cell(t["res_n_minus_max_softmax"],
                           "p_value" if t["epoch"] == h[-1]["epoch"] else "p_holm")]
               for e, t in zip(h, a["epochs"])]),
        "",
        f"The training epochs took {sum(e['dur'] for e in h):.0f} s (skorch's `dur`) and the "
        f"monitor {sum(get(e, 'seconds') for e in h):.0f} s, as first computed.",
        "",
        settings_markdown(r, nets={}),
    ]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf dynamics``."""
    out = args.out or f"results/dynamics-{args.dataset}"
    run_dynamics(args.dataset, args.root, out=out, cache=args.cache, download=args.download,
                 seed=args.seed,
                 limit=args.limit, epochs=args.epochs, max_iter=args.max_iter,
                 n_resamples=args.n_resamples, fast=args.fast,
                 n_jobs=args.n_jobs, scheduler=args.scheduler, verbose=not args.quiet)
