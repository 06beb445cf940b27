"""``resistclf bench``: the attack's speed, against the hardware and the peer libraries, and
whether its fast modes reach the study's conclusions.

Every ratio is measured in one run, on one machine: throughput against the peak of a large
matrix product in the same dtype, against torchattacks, Foolbox and ART at the same number of
passes, against a per-image loop and a plain PGD loop. With ``--root``, the reference CNN is
used, and every mode of ``ATTACK_MODES`` attacks the whole MNIST and FashionMNIST test sets;
each fast mode's conclusions are compared with exact mode's, with paired bootstrap intervals.
"""

import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from torch.utils.flop_counter import FlopCounterMode

from .. import ResistanceAttack, ResultStore, make_detector
from ..metrics import auroc, detection_metrics, equivalence_test
from ..models import SimpleCNN
from ..scores import resistance_error_scores, softmax_scores
from ..study import markdown_table, measure, resistance_key
from ._reference import ATTACK_MODES, load_dataset, reference_net
from ._report import FOLDS, environment, write_json, write_text

PRECISIONS = ("float32", "bfloat16")
#: Memory formats timed: the default, and ``channels_last=True``.
LAYOUTS = {"contiguous": False, "channels last": True}


def matmul_peak(dtype, device, budget=1.0, max_size=4096):
    """FLOP/s of a square matrix product: the hardware's practical peak in ``dtype``.

    The size doubles from 256 until one product takes a tenth of ``budget`` seconds (or
    reaches ``max_size``), and the product is then repeated for about ``budget`` seconds:
    the measurement takes a second or two on any machine, also where ``dtype`` has no
    native support (bfloat16 on a CPU without it runs about 10x slower than float32, and
    a fixed 4096 x 4096 product would take minutes).

    Returns
    -------
    flops : float
        Floating-point operations per second.
    size : int
        The side of the matrices measured.
    """
    size = 256
    while True:
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        once = time.perf_counter() - start
        if once >= budget / 10 or size >= max_size:
            break
        size *= 2
    repeats = max(1, min(10, int(budget / max(once, 1e-9))))
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start), size


def flops_per_image_step(module, x, precision):
    """FLOPs of one attack step per image: the forward pass and the input-gradient pass."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter, \
            torch.autocast(x.device.type, dtype=getattr(torch, precision),
                           enabled=precision != "float32"):
        module(x).sum().backward(inputs=[x])
    return counter.get_total_flops() / len(x)


def attack_throughput(module, X, batch_size, precision, steps, **settings):
    """Image-steps per second of the attack over two full batches, after a warm-up."""
    attack = ResistanceAttack(max_iter=steps, batch_size=batch_size, precision=precision,
                              **settings)
    images = X[torch.arange(2 * batch_size) % len(X)]
    attack(module, images[:1])
    start = time.perf_counter()
    attack(module, images)
    return len(images) * steps / (time.perf_counter() - start)


def pgd_throughput(module, X, batch_size, steps):
    """Image-steps per second of a plain PGD loop: forward, input gradient, signed step."""
    x = X[torch.arange(batch_size) % len(X)].clone()
    with torch.enable_grad():
        target = module(x).argmax(dim=1)
        for timed in (False, True):  # warm-up, then timed
            start = time.perf_counter()
            adversarial = x.clone()
            for _ in range(steps):
                adversarial.requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(module(adversarial), target)
                (grad,) = torch.autograd.grad(loss, adversarial)
                adversarial = (adversarial.detach() + 0.01 * grad.sign()).clamp(0, 1)
            _sync(x.device)
    return batch_size * steps / (time.perf_counter() - start)


def _status_bytes(field):
    """A memory field of /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_memory_worker(state, batch_size, precision, channels_last, steps, queue):
    module = SimpleCNN()
    module.load_state_dict(state)
    X = torch.rand(batch_size, 1, 28, 28)
    attack = ResistanceAttack(max_iter=steps, batch_size=batch_size, precision=precision,
                              channels_last=channels_last)
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    attack(module, X)
    queue.put(_status_bytes("VmHWM") - before)


def peak_memory(module, X, batch_size, precision, channels_last=False, steps=3):
    """Peak extra memory of an attack at this batch size, in bytes.

    On CUDA, from the allocator's peak; on CPU (Linux), from the peak resident
    set size of a fresh process, reset just before the attack (so it includes
    one-time set-up such as oneDNN's kernel cache).
    """
    device = next(module.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        ResistanceAttack(max_iter=steps, batch_size=batch_size, precision=precision,
                         channels_last=channels_last)(module, X[:batch_size])
        return torch.cuda.max_memory_allocated(device) - base
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    state = {k: v.cpu() for k, v in module.state_dict().items()}
    worker = context.Process(target=_peak_memory_worker,
                             args=(state, batch_size, precision, channels_last, steps,
                                   queue))
    worker.start()
    value = queue.get()
    worker.join()
    return value


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ peers
# Each peer runs L2 PGD from r = 0 (no random start) with the attack's step size and a
# radius too large to bind, so that it does the same work per step: one forward and one
# backward pass per image (resistclf makes one extra forward pass, at step max_iter).


def _torchattacks_pgd(module, steps, batch_size, sample_shape, n_classes):
    import torchattacks

    return torchattacks.PGDL2(module, eps=1e3, alpha=0.15, steps=steps, random_start=False)


def _foolbox_pgd(module, steps, batch_size, sample_shape, n_classes):
    import foolbox

    model = foolbox.PyTorchModel(module, bounds=(0, 1))
    attack = foolbox.attacks.L2PGD(steps=steps, abs_stepsize=0.15, random_start=False)
    return lambda images, labels: attack(model, images, labels, epsilons=1e3)


def _art_pgd(module, steps, batch_size, sample_shape, n_classes):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    device = next(module.parameters()).device
    classifier = PyTorchClassifier(
        model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(sample_shape),
        nb_classes=n_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu")
    attack = ProjectedGradientDescentPyTorch(
        classifier, norm=2, eps=1e3, eps_step=0.15, max_iter=steps, batch_size=batch_size,
        num_random_init=0, verbose=False)
    return lambda images, labels: attack.generate(images.cpu().numpy(),
                                                  y=labels.cpu().numpy())


#: name -> (factory(module, steps, batch_size, sample_shape, n_classes) -> attack(images,
#: labels), the package to install).
PEERS = {
    "torchattacks PGDL2": (_torchattacks_pgd, "torchattacks"),
    "Foolbox 3 L2PGD": (_foolbox_pgd, "foolbox"),
    "ART ProjectedGradientDescentPyTorch (norm=2)": (_art_pgd, "adversarial-robustness-toolbox"),
}


def peer_throughput(factory, module, X, batch_size, steps):
    """Image-steps per second of a peer's attack, one batch per call, after a warm-up.

    Returns None if the peer's package is not installed.
    """
    module.eval()
    images = X[torch.arange(2 * batch_size) % len(X)]
    with torch.no_grad():
        labels = module(images).argmax(dim=1)
    try:
        attack = factory(module, steps, batch_size, tuple(X.shape[1:]),
                         int(labels.max()) + 1 if len(labels) else 2)
    except ImportError:
        return None
    attack(images[:batch_size], labels[:batch_size])  # warm-up at this shape
    _sync(X.device)
    start = time.perf_counter()
    for i in (0, batch_size):
        attack(images[i: i + batch_size], labels[i: i + batch_size])
    _sync(X.device)
    return len(images) * steps / (time.perf_counter() - start)


# -------------------------------------------------------- fast modes, judged by conclusions

#: The equivalence margins of each kind of conclusion, declared before the runs they judge:
#: a fast mode is equivalent to exact mode when, for every conclusion, the whole 90% paired
#: bootstrap interval of (fast - exact) lies inside its margin (two one-sided tests). AUROC
#: and the complementarity Delta AUROC: 0.005; AURC: 0.0005 (0.5 x1000); rates: 0.2 points;
#: counts (errors recovered): 2% of exact mode's errors.
EQUIVALENCE_MARGINS = {"auroc": 0.005, "aurc": 0.0005, "rate": 0.002, "count": 0.02}
#: Test images on which the agreement of the features across kernels is measured.
STABILITY_IMAGES = 2000
#: Random test images on which every mode is timed in one run.
SPEED_IMAGES = 512
FEATURE_LABELS = {"res_n": "Res_N", "res_max": "Res_max", "res_min": "Res_min",
                  "res_mean": "Res_mean"}


def _complementarity_scores(measured, folds):
    """Out-of-fold P(error) of ``make_detector()`` on the softmax scores with and without the
    resistance features, on the same folds (the study's complementarity test)."""
    softmax = np.column_stack(list(softmax_scores(measured.logits).values()))
    resistance = np.column_stack(list(resistance_error_scores(
        measured.attacks[0], tuple(FEATURE_LABELS)).values()))

    def out_of_fold(features):
        return cross_val_predict(make_detector(), features, measured.is_error, cv=folds,
                                 method="predict_proba")[:, 1]

    return {"softmax_resistance": out_of_fold(np.column_stack([softmax, resistance])),
            "softmax_only": out_of_fold(softmax)}


def attack_every_mode(dataset, root, store, *, max_iter=500, seed=0, verbose=True):
    """Each mode of ``ATTACK_MODES`` on the whole test set, ranks 0 to 2, kept in ``store``.

    Returns
    -------
    runs : dict
        Mode name to the per-image arrays the study's conclusions are drawn from.
    y : ndarray
        The true labels.
    info : dict
        The net's training record and each mode's wall time per rank, as first measured.
    """
    X_train, y_train, X, y = load_dataset(dataset, root)
    net, net_info = reference_net(X_train, y_train, store=store, seed=seed, verbose=verbose)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    runs, timings = {}, {}
    for mode, settings in ATTACK_MODES.items():
        measured = measure(net, X, y, attack=ResistanceAttack(max_iter=max_iter, **settings),
                           ranks=3, competitors=(), store=store, verbose=verbose)
        result, is_error = measured.attacks[0], measured.is_error
        truth = measured.y[:, None]
        top5 = measured.topk_labels(5)
        for rank in range(3):
            timings[f"{mode}, rank {rank}"] = round(float(measured.seconds[
                resistance_key(rank)].sum()), 1)
        runs[mode] = {
            "is_error": is_error,
            # Each feature as an error score (negated), as every report scores it.
            **resistance_error_scores(result, tuple(FEATURE_LABELS)),
            "detector": cross_val_predict(make_detector(), result.features, is_error,
                                          cv=folds, method="predict_proba")[:, 1],
            "recovered": is_error & (result.adversarial_class == measured.y),
            "top2_miss": ~(top5[:, :2] == truth).any(axis=1),
            "top5_miss": ~(top5 == truth).any(axis=1),
            "corrected_right": measured.corrected_predictions(
                folds=FOLDS, random_state=seed) == measured.y,
            **_complementarity_scores(measured, folds),
            "seconds": sum(timings[f"{mode}, rank {rank}"] for rank in range(3)),
        }
    return runs, y, {"net": net_info, "timings": timings}


def _conclusions():
    """The study's conclusions: name -> (kind, statistic of one mode's per-image arrays)."""
    def feature_metric(key, feature):
        return lambda r: detection_metrics(r["is_error"], r[feature])[key]

    quantities = {}
    for feature, label in FEATURE_LABELS.items():
        quantities[f"AUROC, {label}"] = ("auroc", feature_metric("auroc", feature))
        quantities[f"AURC, {label}"] = ("aurc", feature_metric("aurc", feature))
    quantities.update({
        "AUROC, detector on the three features (out-of-fold)": (
            "auroc", lambda r: auroc(r["is_error"], r["detector"])),
        "errors whose true label the adversarial class recovers": (
            "count", lambda r: int(r["recovered"].sum())),
        "top-2 error": ("rate", lambda r: float(r["top2_miss"].mean())),
        "top-5 error": ("rate", lambda r: float(r["top5_miss"].mean())),
        "detect-then-correct accuracy": ("rate", lambda r: float(r["corrected_right"].mean())),
        "resistance beyond the softmax (Δ AUROC, out-of-fold)": (
            "auroc", lambda r: auroc(r["is_error"], r["softmax_resistance"])
            - auroc(r["is_error"], r["softmax_only"])),
    })
    return quantities


PER_IMAGE = ["is_error", *FEATURE_LABELS, "detector", "recovered", "top2_miss", "top5_miss",
             "corrected_right", "softmax_resistance", "softmax_only"]


def judge_modes(runs, *, n_resamples=1000, seed=0):
    """Each fast mode's conclusions beside exact mode's, judged by two one-sided tests.

    The test images are resampled jointly for both modes, so each interval is that of the
    difference on the same images. A conclusion holds when its whole 90% interval lies
    inside the margin of its kind (:data:`EQUIVALENCE_MARGINS`); a noisier mode gets a
    wider interval and so fails more easily, never passes more easily.
    """
    exact = runs["exact"]
    n_errors = int(np.sum(exact["is_error"]))
    judged = {}
    for mode, run in runs.items():
        rows = {}
        for name, (kind, statistic) in _conclusions().items():
            value = statistic(run)
            row = {"kind": kind, "value": value}
            if mode != "exact":
                def difference(*arrays, statistic=statistic):
                    half = len(PER_IMAGE)
                    fast, slow = (dict(zip(PER_IMAGE, part)) for part in (arrays[:half],
                                                                           arrays[half:]))
                    return statistic(fast) - statistic(slow)

                margin = EQUIVALENCE_MARGINS[kind] * (n_errors if kind == "count" else 1)
                tost = equivalence_test(
                    difference, *(run[k] for k in PER_IMAGE), *(exact[k] for k in PER_IMAGE),
                    margin=max(margin, 1e-12), n_resamples=n_resamples, random_state=seed)
                row.update(difference=value - statistic(exact), ci=tost["ci"],
                           margin=tost["margin"], holds=tost["equivalent"])
            rows[name] = row
        verdict = {"seconds": run["seconds"], "speedup": exact["seconds"] / run["seconds"]}
        if mode != "exact":
            verdict["equivalent"] = all(row["holds"] for row in rows.values())
            verdict["failing"] = [name for name, row in rows.items() if not row["holds"]]
        judged[mode] = {"conclusions": rows, **verdict}
    return judged


def mode_speedups(dataset, root, store, *, max_iter=500, n_images=SPEED_IMAGES, seed=0,
                   verbose=True):
    """Each mode's speedup over exact mode, all timed in one run on the same images.

    The whole-test-set attacks are cached and may have been timed while other work ran; these
    ratios are not. ``n_images`` random test images (seed ``seed``) are attacked at ranks 0 to
    2 in each mode, uncached, so that early exit is timed on a representative mix.
    """
    X_train, y_train, X, _ = load_dataset(dataset, root)
    n_images = min(n_images, len(X))
    X = X[np.sort(np.random.RandomState(seed).choice(len(X), n_images, replace=False))]
    net, _ = reference_net(X_train, y_train, store=store, seed=seed, verbose=verbose)
    seconds = {}
    for mode, settings in ATTACK_MODES.items():
        attack = ResistanceAttack(max_iter=max_iter, verbose=verbose, **settings)
        start = time.perf_counter()
        for rank in range(3):
            attack(net.module_, X, rank=rank)
        seconds[mode] = time.perf_counter() - start
    return {"n_images": n_images, "seconds": seconds,
            "speedup": {mode: seconds["exact"] / value for mode, value in seconds.items()}}


def kernel_stability(dataset, root, store, *, max_iter=500, seed=0, verbose=True):
    """How much each feature moves when only the kernels change: exact mode at batch size 256
    against batch size 128 and against channels-last, on the first ``STABILITY_IMAGES`` test
    images, with each feature's error-detection AUROC in every setting."""
    X_train, y_train, X, y = load_dataset(dataset, root)
    X, y = X[:STABILITY_IMAGES], y[:STABILITY_IMAGES]
    net, _ = reference_net(X_train, y_train, store=store, seed=seed, verbose=verbose)
    settings = {"batch size 256 (exact)": {}, "batch size 128": {"batch_size": 128},
                "channels last": {"channels_last": True}}
    results = {name: measure(net, X, y, attack=ResistanceAttack(max_iter=max_iter, **options),
                             competitors=(), store=store, verbose=verbose).attacks[0]
               for name, options in settings.items()}
    reference = results["batch size 256 (exact)"]
    is_error = net.classes_[reference.c0] != y
    table = {}
    for name, result in results.items():
        scores = resistance_error_scores(result, FEATURE_LABELS)
        row = {f"auroc_{f}": detection_metrics(is_error, scores[f])["auroc"]
               for f in FEATURE_LABELS}
        for feature in ("res_n", "res_max", "res_mean"):
            a, b = getattr(result, feature), getattr(reference, feature)
            row[f"{feature}_within_1pct"] = float(np.mean(np.abs(a - b) <= 0.01 * np.abs(b)))
            row[f"{feature}_within_2pct"] = float(np.mean(np.abs(a - b) <= 0.02 * np.abs(b)))
        row["res_min_identical"] = float(np.mean(result.res_min == reference.res_min))
        row["adversarial_class_identical"] = float(np.mean(
            result.adversarial_class == reference.adversarial_class))
        table[name] = row
    return {"n_images": int(len(X)), "n_errors": int(is_error.sum()), "settings": table}


# ------------------------------------------------------------------------------ the command

def run_bench(*, root=None, out="results/bench", cache=None, device="cpu",
              batch_sizes=(32, 64, 128, 256, 512), steps=20, datasets=("mnist", "fashion-mnist"),
              max_iter=500, n_resamples=1000, seed=0, verbose=True):
    """Measure the attack's speed; with ``root``, also judge the fast modes on real test sets.

    The trained nets and the whole-test-set attacks are kept in the
    :class:`~resistclf.ResultStore` ``cache`` (None means ``out/cache``). Returns the
    results, also written to ``out/bench.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)

    def log(text):
        if verbose:
            print(f"[bench] {text}", file=sys.stderr)

    store = ResultStore(out / "cache" if cache is None else cache)
    if root is not None:
        X_train, y_train, X_test, _ = load_dataset("mnist", root)
        net, _ = reference_net(X_train, y_train, store=store, seed=seed, verbose=verbose)
        module, net_name = net.module_, "reference MNIST CNN (trained)"
    else:
        torch.manual_seed(seed)
        X_test = torch.rand(1024, 1, 28, 28).numpy()
        module, net_name = SimpleCNN(), "reference CNN architecture, random weights"
    module = module.to(device).eval().requires_grad_(False)  # as every attack runs it
    X = torch.from_numpy(np.array(X_test[:2048], dtype=np.float32)).to(device)
    results = {"environment": environment(), "net": net_name, "device": str(device),
               "steps": steps}

    log("peak of a matrix product, about a second per precision")
    measured_peak = {p: matmul_peak(getattr(torch, p), device) for p in PRECISIONS}
    peak = {p: flops for p, (flops, _) in measured_peak.items()}
    results["peak_sizes"] = {p: size for p, (_, size) in measured_peak.items()}
    flops = {p: flops_per_image_step(module, X[:8], p) for p in PRECISIONS}
    results.update(peak_flops=peak, flops_per_image_step=flops)

    rows = []
    for precision in PRECISIONS:
        for layout, is_channels_last in LAYOUTS.items():
            for batch_size in batch_sizes:
                log(f"throughput at batch size {batch_size}, {precision}, {layout}")
                rate = attack_throughput(module, X, batch_size, precision, steps,
                                         channels_last=is_channels_last)
                rows.append({"precision": precision, "layout": layout,
                             "batch_size": batch_size, "image_steps_per_s": rate,
                             "share_of_peak": rate * flops[precision] / peak[precision],
                             "peak_memory_bytes": peak_memory(module, X, batch_size, precision,
                                                              is_channels_last)})
    results["throughput"] = rows
    best = {(p, layout): max((r for r in rows if r["precision"] == p and r["layout"] == layout),
                             key=lambda r: r["image_steps_per_s"])
            for p in PRECISIONS for layout in LAYOUTS}
    best_batch = best["float32", "contiguous"]["batch_size"]

    log("the peers, resistclf's modes, a per-image loop and a plain PGD loop")
    peer_batch = ResistanceAttack().batch_size
    ours = {mode: attack_throughput(module, X, peer_batch, settings.get("precision", "float32"),
                                    steps, channels_last=settings.get("channels_last", False))
            for mode, settings in ATTACK_MODES.items() if "early_exit" not in settings}
    peers = {}
    for name, (factory, package) in PEERS.items():
        log(f"peer: {name}")
        rate = peer_throughput(factory, module, X, peer_batch, steps)
        peers[name] = {"package": package, "image_steps_per_s": rate}
    results["peers"] = {"batch_size": peer_batch, "resistclf": ours, "peers": peers}
    naive = attack_throughput(module, X, 1, "float32", steps)
    pgd = pgd_throughput(module, X, best_batch, steps)
    same_batch = attack_throughput(module, X, best_batch, "float32", steps)
    results["alternatives"] = {
        "naive_per_image_image_steps_per_s": naive, "pgd_image_steps_per_s": pgd,
        "ours_image_steps_per_s": same_batch, "speedup_over_naive": same_batch / naive,
        "slowdown_vs_pgd": pgd / same_batch - 1,
    }
    log("batch_size='auto' and n_jobs")
    chosen = ResistanceAttack(max_iter=steps, batch_size="auto")._auto_batch_size(
        module, X, device)
    results["auto_batch_size"] = {
        "chosen": chosen,
        "throughput_vs_best": attack_throughput(module, X, chosen, "float32", steps)
        / best["float32", "contiguous"]["image_steps_per_s"],
    }
    if device.type == "cpu":
        results["n_jobs_2_vs_1"] = attack_throughput(
            module, X, best_batch, "float32", steps, n_jobs=2) / same_batch

    if root is not None:
        results["modes"], results["stability"] = {}, {}
        for dataset in datasets:
            log(f"{dataset}: every mode on the whole test set, ranks 0 to 2")
            runs, _, info = attack_every_mode(dataset, root, store, max_iter=max_iter,
                                              seed=seed, verbose=verbose)
            log(f"{dataset}: paired bootstrap of each conclusion")
            judged = judge_modes(runs, n_resamples=n_resamples, seed=seed)
            log(f"{dataset}: every mode timed in one run on {SPEED_IMAGES} images")
            speed = mode_speedups(dataset, root, store, max_iter=max_iter, seed=seed,
                                  verbose=verbose)
            for mode, verdict in judged.items():
                verdict["speedup"] = speed["speedup"][mode]
            results["modes"][dataset] = {"net": info["net"], "timings": info["timings"],
                                         "speed_images": speed["n_images"],
                                         "speed_seconds": speed["seconds"], **judged}
            log(f"{dataset}: features across kernels")
            results["stability"][dataset] = kernel_stability(
                dataset, root, store, max_iter=max_iter, seed=seed, verbose=verbose)
        results["fast_mode"] = fastest_equivalent_modes(results["modes"])
    write_json(out / "bench.json", results)
    return results


def fastest_equivalent_modes(modes):
    """Per dataset, the fastest mode found equivalent to exact mode there ("exact" if none).

    Only a judgement by two one-sided tests counts (every conclusion carries its margin):
    a benchmark written before them found no difference, which is not equivalence.
    """
    def shown_equivalent(judged):
        return judged["equivalent"] and all("margin" in row
                                            for row in judged["conclusions"].values())

    return {dataset: max([mode for mode in ATTACK_MODES if mode != "exact" and mode in judged
                          and shown_equivalent(judged[mode])], default="exact",
                         key=lambda mode: judged[mode]["speedup"])
            for dataset, judged in modes.items()}


def _cell(row):
    """A conclusion's value (or its difference from exact mode, with the interval)."""
    kind = row["kind"]
    if kind == "rate":
        fmt = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    elif kind == "count":
        fmt = lambda v: f"{v:+d}" if "ci" in row and v == row.get("difference") else f"{v}"  # noqa
    else:
        fmt = lambda v: f"{v:.4f}"  # noqa: E731
    if "difference" not in row:
        return fmt(row["value"])
    low, high = row["ci"]
    if kind == "count":
        text = f"{row['difference']:+d} [{low:+.0f}, {high:+.0f}]"
    elif kind == "rate":
        text = f"{100 * row['difference']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] pts"
    else:
        text = f"{row['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"
    return text if row["holds"] else f"**{text}**"


def format_tables(results):
    """The benchmark's results as Markdown."""
    lines = [f"Net: {results['net']}; device {results['device']}; "
             f"{results['environment']['machine']}; {results['steps']} steps per timing.", "",
             "## Throughput", "",
             "Peak (square matrix product, side in brackets): " + ", ".join(
                 f"{p} {v / 1e9:.0f} GFLOP/s ({results.get('peak_sizes', {}).get(p, 4096)})"
                 for p, v in results["peak_flops"].items())
             + "; FLOPs per image-step (forward + input gradient): " + ", ".join(
                 f"{p} {v / 1e6:.1f} M" for p, v in results["flops_per_image_step"].items()), ""]
    lines.append(markdown_table(
        ["precision", "layout", "batch size", "image-steps/s", "share of peak",
         "peak memory (MiB)"],
        [[r["precision"], r["layout"], r["batch_size"], f"{r['image_steps_per_s']:,.0f}",
          f"{100 * r['share_of_peak']:.1f}%", f"{r['peak_memory_bytes'] / 2**20:,.0f}"]
         for r in results["throughput"]]))
    peers = results["peers"]
    ours = peers["resistclf"]
    lines += ["", "## Against the peer libraries", "",
              f"L2 PGD from r = 0 in each library, on the same net, images and batch size "
              f"({peers['batch_size']}), {results['steps']} steps: one forward and one backward "
              "pass per image and step (resistclf makes one extra forward pass). Ratios above 1 "
              "mean resistclf is faster; all measured in this run.", "",
              markdown_table(["attack", "image-steps/s", *(f"resistclf {m} / it" for m in ours)],
                    [[f"resistclf, {m}", f"{rate:,.0f}",
                      *(f"{other / rate:.2f}" for other in ours.values())]
                     for m, rate in ours.items()]
                    + [[name, "not installed (`pip install 'resistclf[bench]'`)", *[""] * len(ours)]
                       if p["image_steps_per_s"] is None else
                       [name, f"{p['image_steps_per_s']:,.0f}",
                        *(f"{rate / p['image_steps_per_s']:.2f}" for rate in ours.values())]
                       for name, p in peers["peers"].items()])]
    alt = results["alternatives"]
    lines += ["", markdown_table(["loop", "image-steps/s", "ratio"], [
        ["resistclf, best float32 batch", f"{alt['ours_image_steps_per_s']:,.0f}", "1"],
        ["per-image loop", f"{alt['naive_per_image_image_steps_per_s']:,.0f}",
         f"resistclf is {alt['speedup_over_naive']:.1f}x faster"],
        ["plain PGD loop, same batch", f"{alt['pgd_image_steps_per_s']:,.0f}",
         f"resistclf is {100 * alt['slowdown_vs_pgd']:+.1f}% slower per step"],
    ])]
    auto = results["auto_batch_size"]
    lines += ["", f"batch_size='auto' chose {auto['chosen']}: "
              f"{100 * auto['throughput_vs_best']:.0f}% of the best measured throughput."]
    if "n_jobs_2_vs_1" in results:
        lines.append(f"n_jobs=2 (one thread each) vs n_jobs=1 (two threads): "
                     f"{results['n_jobs_2_vs_1']:.2f}x the throughput.")
    for dataset, judged in results.get("modes", {}).items():
        modes = [mode for mode in ATTACK_MODES if mode in judged and mode != "exact"]
        lines += ["", f"## Fast modes judged by the study's conclusions: {dataset}", "",
                  f"Whole test set, reference CNN trained on {judged['net']['n_train']:,} "
                  "images; each mode attacks ranks 0-2 (top-5 needs all three). Each cell "
                  "gives the fast mode's difference from exact mode with its paired bootstrap "
                  "90% interval; bold where that interval is not inside the declared margin "
                  "(two one-sided tests: AUROC and Δ AUROC ±0.005, AURC ±0.0005, rates ±0.2 "
                  "points, errors recovered ±2% of exact mode's errors). Wall time: the three "
                  "attacks of the whole test set, "
                  "as first measured (other work was running on the machine at times); "
                  f"speedup: all modes timed in one run on the same {judged['speed_images']} "
                  "random test images, ranks 0-2.", "",
                  markdown_table(["conclusion", "exact", *modes],
                        [[name, _cell(judged["exact"]["conclusions"][name]),
                          *(_cell(judged[m]["conclusions"][name]) for m in modes)]
                         for name in judged["exact"]["conclusions"]]
                        + [["wall time, whole test set",
                            f"{judged['exact']['seconds'] / 60:.1f} min",
                            *(f"{judged[m]['seconds'] / 60:.1f} min" for m in modes)],
                           ["speedup, measured in one run", "1.0x",
                            *(f"{judged[m]['speedup']:.1f}x" for m in modes)],
                           ["verdict", "", *("equivalent" if judged[m]["equivalent"] else
                                             "not equivalent" for m in modes)]])]
    for dataset, stability in results.get("stability", {}).items():
        settings = stability["settings"]
        lines += ["", f"## The features across kernels: {dataset}", "",
                  f"Exact float32 mode on the first {stability['n_images']:,} test images "
                  f"({stability['n_errors']} errors), at batch size 256 and with only the "
                  "kernels changed. Share of images whose feature is within 2% (1%) of batch "
                  "size 256's, and each feature's error-detection AUROC.", "",
                  markdown_table(["setting", "Res_N", "Res_max", "Res_mean", "Res_min identical",
                         "adv. class identical", *(f"AUROC {v}" for v in FEATURE_LABELS.values())],
                        [[name, *(f"{100 * row[f'{f}_within_2pct']:.1f}% "
                                  f"({100 * row[f'{f}_within_1pct']:.1f}%)"
                                  for f in ("res_n", "res_max", "res_mean")),
                          f"{100 * row['res_min_identical']:.1f}%",
                          f"{100 * row['adversarial_class_identical']:.1f}%",
                          *(f"{row[f'auroc_{f}']:.4f}" for f in FEATURE_LABELS)]
                         for name, row in settings.items()])]
    if "fast_mode" in results:
        lines += ["", "`--fast` uses the fastest mode found equivalent on the dataset at hand: "
                  + "; ".join(f"{dataset}: **{mode}**"
                              for dataset, mode in results["fast_mode"].items())
                  + ". Where none is, it runs exact mode and the report says so."]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf bench``."""
    results = run_bench(root=args.root, out=args.out, cache=args.cache, device=args.device,
                        steps=args.steps,
                        batch_sizes=args.batch_sizes, datasets=args.datasets,
                        max_iter=args.max_iter, n_resamples=args.n_resamples,
                        verbose=not args.quiet)
    report = format_tables(results)
    write_text(Path(args.out, "bench.md"), report + "\n")
    print(report)
