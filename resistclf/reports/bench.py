"""``resistclf bench``: the attack's speed against the hardware and the obvious alternatives.

Every ratio is measured in one run, on one machine: throughput against the peak of a
large matrix product in the same dtype, against a per-image loop, and against a plain
PGD loop. With ``--root``, the reference MNIST CNN is used and the whole test set is
attacked in each fast mode and compared with exact float32 mode.
"""

import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import ResistanceAttack
from .._nets import eval_mode
from ..models import SimpleCNN
from ._reference import load_dataset, reference_net
from ._report import environment, read_arrays, table, write_arrays, write_text

PRECISIONS = ("float32", "bfloat16")
#: Memory formats timed: the default, and ``channels_last=True``.
LAYOUTS = {"contiguous": False, "channels last": True}


def matmul_peak(dtype, device, size=4096, repeats=5):
    """FLOP/s of a ``size`` x ``size`` matrix product: the hardware's practical peak."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def flops_per_image_step(module, x, precision):
    """FLOPs of one attack step per image: the forward pass and the input-gradient pass."""
    x = x.clone().requires_grad_(True)
    with eval_mode(module), torch.enable_grad(), FlopCounterMode(display=False) as counter, \
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
    with eval_mode(module), torch.enable_grad():
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


def agreement(fast, exact):
    """Share of images on which a fast mode gives the exact mode's results."""
    def within(a, b, tolerance):
        return float(np.mean(np.abs(a - b) <= tolerance * np.abs(b)))

    return {
        "res_n_within_1pct": within(fast["res_n"], exact["res_n"], 0.01),
        "res_n_within_2pct": within(fast["res_n"], exact["res_n"], 0.02),
        "res_max_within_1pct": within(fast["res_max"], exact["res_max"], 0.01),
        "res_max_within_2pct": within(fast["res_max"], exact["res_max"], 0.02),
        "res_min_identical": float(np.mean(fast["res_min"] == exact["res_min"])),
        "adversarial_class_identical": float(np.mean(fast["adversarial_class"]
                                                     == exact["adversarial_class"])),
        "res_n_spearman": float(_spearman(fast["res_n"], exact["res_n"])),
    }


def _spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


def full_test_set(module, X, out, name, **settings):
    """Attack all of X once with these settings; cached in ``out`` with its wall time.

    A cached run is reused only if it was made with the same settings (the best
    batch size can change from one benchmark run to the next).
    """
    path = Path(out) / f"full-{name}.npz"
    recorded = json.dumps(settings, sort_keys=True)
    fields = ("res_n", "res_max", "res_min", "adversarial_class")
    cached = read_arrays(path, ["seconds", "settings", *fields])
    if cached is not None and str(cached.pop("settings")) == recorded:
        return cached
    start = time.perf_counter()
    result = ResistanceAttack(verbose=True, **settings)(module, X)
    seconds = time.perf_counter() - start
    values = {k: getattr(result, k) for k in fields}
    write_arrays(path, seconds=seconds, settings=recorded, **values)
    return {"seconds": np.array(seconds), **values}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(*, root=None, out="results/bench", device="cpu", batch_sizes=(32, 64, 128, 256,
              512), steps=20, early_exit=50, seed=0, verbose=True):
    """Measure the attack's speed; with ``root``, also the fast modes on the MNIST test set.

    Returns the results, also written to ``out/bench.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    def log(text):
        if verbose:
            print(f"[bench] {text}", file=sys.stderr)

    if root is not None:
        X_train, y_train, X_test, _ = load_dataset("mnist", root)
        net, _ = reference_net(X_train, y_train, cache=out / "mnist-net.pt", seed=seed,
                               verbose=verbose)
        module, net_name = net.module_, "reference MNIST CNN (trained)"
    else:
        torch.manual_seed(seed)
        X_test = torch.rand(1024, 1, 28, 28).numpy()
        module, net_name = SimpleCNN(), "reference CNN architecture, random weights"
    module = module.to(device)
    X = torch.from_numpy(np.array(X_test[:2048], dtype=np.float32)).to(device)
    results = {"environment": environment(), "net": net_name, "device": str(device),
               "steps": steps}

    log("peak of a 4096 x 4096 matrix product")
    peak = {p: matmul_peak(getattr(torch, p), device) for p in PRECISIONS}
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
    fast_batch = best["bfloat16", "channels last"]["batch_size"]

    log("per-image loop and plain PGD loop")
    naive = attack_throughput(module, X, 1, "float32", steps)
    pgd = pgd_throughput(module, X, best_batch, steps)
    ours = attack_throughput(module, X, best_batch, "float32", steps)
    results["alternatives"] = {
        "naive_per_image_image_steps_per_s": naive, "pgd_image_steps_per_s": pgd,
        "ours_image_steps_per_s": ours, "speedup_over_naive": ours / naive,
        "slowdown_vs_pgd": pgd / ours - 1,
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
            module, X, best_batch, "float32", steps, n_jobs=2) / ours

    # channels_last in float32 changes only which kernels run, as another batch size
    # would: its agreement with exact mode is the floor set by Res_N's chaos.
    full = {"exact": {"batch_size": best_batch},
            "float32, channels last": {"batch_size": best_batch, "channels_last": True},
            "bfloat16, channels last": {"batch_size": fast_batch, "precision": "bfloat16",
                                        "channels_last": True},
            "early exit": {"batch_size": best_batch, "early_exit": early_exit},
            "bfloat16, channels last, early exit": {
                "batch_size": fast_batch, "precision": "bfloat16", "channels_last": True,
                "early_exit": early_exit}}
    if root is not None:
        full_X = torch.from_numpy(X_test).to(device)
        runs = {}
        for name, settings in full.items():
            log(f"whole test set ({len(full_X)} images, 500 steps): {name}")
            runs[name] = full_test_set(module, full_X, out, name.replace(", ", "-").replace(
                " ", "_"), **settings)
        exact = runs["exact"]
        results["full_test_set"] = {
            name: {"settings": full[name], "seconds": float(run["seconds"]),
                   "projected_seconds_exact": len(full_X) * 500
                   / best["float32", "contiguous"]["image_steps_per_s"],
                   "speedup": float(exact["seconds"] / run["seconds"]),
                   **agreement(run, exact)}
            for name, run in runs.items()
        }
    write_text(out / "bench.json", json.dumps(results, indent=2, default=float))
    return results


def format_tables(results):
    """The benchmark's results as Markdown tables."""
    lines = [f"Net: {results['net']}; device {results['device']}; "
             f"{results['environment']['machine']}; {results['steps']} steps per timing.", "",
             "Peak (4096 x 4096 matrix product): " + ", ".join(
                 f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in results["peak_flops"].items())
             + "; FLOPs per image-step (forward + input gradient): " + ", ".join(
                 f"{p} {v / 1e6:.1f} M" for p, v in results["flops_per_image_step"].items()), ""]
    lines.append(table(
        ["precision", "layout", "batch size", "image-steps/s", "share of peak",
         "peak memory (MiB)"],
        [[r["precision"], r["layout"], r["batch_size"], f"{r['image_steps_per_s']:,.0f}",
          f"{100 * r['share_of_peak']:.1f}%", f"{r['peak_memory_bytes'] / 2**20:,.0f}"]
         for r in results["throughput"]]))
    alt = results["alternatives"]
    lines += ["", table(["loop", "image-steps/s", "ratio"], [
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
    if "full_test_set" in results:
        full = results["full_test_set"]
        lines += ["", table(
            ["mode (whole MNIST test set, 500 steps)", "wall time", "speedup",
             "Res_N within 2% / 1%", "Res_max within 2% / 1%", "Res_min identical",
             "adv. class identical"],
            [[name, f"{r['seconds'] / 60:.1f} min", f"{r['speedup']:.2f}x",
              f"{100 * r['res_n_within_2pct']:.1f}% / {100 * r['res_n_within_1pct']:.1f}%",
              f"{100 * r['res_max_within_2pct']:.1f}% / {100 * r['res_max_within_1pct']:.1f}%",
              f"{100 * r['res_min_identical']:.1f}%",
              f"{100 * r['adversarial_class_identical']:.1f}%"] for name, r in full.items()])]
    return "\n".join(lines)


def main(args):
    """Entry point of ``resistclf bench``."""
    results = run_bench(root=args.root, out=args.out, device=args.device, steps=args.steps,
                        batch_sizes=args.batch_sizes, verbose=not args.quiet)
    report = format_tables(results)
    write_text(Path(args.out, "bench.md"), report + "\n")
    print(report)
