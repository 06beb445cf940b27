"""Cost of the minimum-norm competitors (FMN-L2, FMN-Linf, DDN) beside resistance's attack.

On MNIST test images, with the reference CNN (``SimpleCNN``) trained briefly from a fixed seed
(enough for timing, not for the study's accuracy), runs in one process, on the same images:
``minimum_norm`` for each attack at Foolbox's default steps and at 500 steps (resistance's
budget), and ``ResistanceAttack()`` (500 steps). Reports wall-clock and CPU seconds per image,
forward and backward passes per image (counted as they run), each cost's ratio to resistance's,
and, as a check, the success rate and median distance.

    python benchmarks/bench_minimum_norm.py [--root ../shared/data] [--n-images 512]

CPU time (of this process) is the steadier figure on a machine shared with other work; the
script prints the load average before and after.
"""

import argparse
import os
import time

import numpy as np
import torch

from resistclf import ResistanceAttack
from resistclf._minimum_norm import PassCounter
from resistclf.datasets import load_mnist
from resistclf.models import make_net
from resistclf.scores import minimum_norm


def trained_cnn(root, n_train, epochs, seed):
    X, y = load_mnist(root=root, train=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = make_net(max_epochs=epochs).fit(X[:n_train], y[:n_train])
    return net.module_.eval()


def median(values):
    return np.median(values) if len(values) else np.nan


def timed(function):
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=500)
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}; torch threads: {torch.get_num_threads()}")
    module, seconds, _ = timed(lambda: trained_cnn(args.root, args.n_train, args.epochs,
                                                   args.seed))
    X_test, y_test = load_mnist(root=args.root, train=False)
    X, y = torch.from_numpy(X_test[: args.n_images]), y_test[: args.n_images]
    with torch.no_grad():
        accuracy = (module(X).argmax(1).numpy() == y).mean()
    print(f"SimpleCNN trained {args.epochs} epochs on {args.n_train:,} MNIST training images "
          f"in {seconds:.0f} s; accuracy on the {len(X)} test images: {accuracy:.3f}")

    counter = PassCounter(module)
    resistance, wall, cpu = timed(lambda: ResistanceAttack()(counter, X))
    rows = {"resistance (ResistanceAttack(), 500 steps)": dict(
        wall=wall, cpu=cpu, forward=counter.forward_rows / len(X),
        backward=counter.backward_rows / len(X), success=resistance.flipped.mean(),
        distance=median(resistance.res_n[resistance.flipped]))}
    for steps in (None, args.max_steps):
        for attack in ("fmn-l2", "fmn-linf", "ddn"):
            result, wall, cpu = timed(lambda: minimum_norm(module, X, attack=attack,
                                                           steps=steps, bounds=(0, 1)))
            rows[f"{attack}, {result.steps} steps"] = dict(
                wall=wall, cpu=cpu, forward=result.forward_passes.mean(),
                backward=result.backward_passes.mean(), success=result.success.mean(),
                distance=median(result.distance[result.success]))

    reference = rows["resistance (ResistanceAttack(), 500 steps)"]
    print(f"\n{len(X)} MNIST test images, batches of 256, on the CPU "
          f"({os.cpu_count()} cores)\n")
    print("| attack | wall s/image | CPU s/image | forward/image | backward/image "
          "| wall vs resistance | passes vs resistance | success | median distance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        passes = (row["forward"] + row["backward"]) / (reference["forward"]
                                                       + reference["backward"])
        print(f"| {name} | {row['wall'] / len(X):.4f} | {row['cpu'] / len(X):.4f} "
              f"| {row['forward']:.0f} | {row['backward']:.0f} "
              f"| {row['wall'] / reference['wall']:.2f} | {passes:.2f} "
              f"| {row['success']:.3f} | {row['distance']:.3f} |")
    print("\nDistances: L2 for resistance (Res_N, |r| at the last step), FMN-L2 and DDN; "
          "L-infinity for FMN-Linf; medians over the images whose prediction changed.")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
