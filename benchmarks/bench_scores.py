"""Speed of the detection metrics (for bootstrapping) and of the attack-based scores.

Metrics: one call of ``detection_metrics`` and ``aurc`` on 10,000 samples, with float scores
(no ties) and with integer scores (many ties, like Res_min), beside scikit-learn's
``roc_auc_score``; then ``bootstrap_interval(detection_metrics, ...)`` with 1,000 resamples.
Scores: ``input_margin`` and ``deepfool`` on 1,000 digits test images (8x8) with a small CNN
trained here from a fixed seed, with the forward and backward passes each one spends.

    python benchmarks/bench_scores.py [--threads 1]
"""

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from resistclf.datasets import load_digits_images
from resistclf.metrics import aurc, bootstrap_interval, detection_metrics
from resistclf.models import SimpleCNN
from resistclf.scores import deepfool, input_margin


def best_seconds(function, *args, repeat=5, number=20):
    """The fastest mean wall-clock and CPU time of ``number`` calls, over ``repeat`` rounds.

    CPU time (of this process) is the steadier figure on a machine shared with other work.
    """
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(number):
            function(*args)
        wall.append((time.perf_counter() - start) / number)
        cpu.append((time.process_time() - start_cpu) / number)
    return min(wall), min(cpu)


def bench_metrics(n=10_000, seed=0):
    rng = np.random.default_rng(seed)
    is_error = rng.random(n) < 0.05
    for kind, score in [("float scores", rng.normal(size=n) + is_error),
                        ("integer scores", rng.integers(0, 60, n) - 5.0 * is_error)]:
        for function in (detection_metrics, aurc, roc_auc_score):
            wall, cpu = best_seconds(function, is_error, score)
            print(f"{function.__name__:18s} n={n:,} {kind:15s} wall {1e3 * wall:7.3f} ms, "
                  f"CPU {1e3 * cpu:7.3f} ms")
        start, start_cpu = time.perf_counter(), time.process_time()
        bootstrap_interval(detection_metrics, is_error, score, n_resamples=1000)
        print(f"bootstrap_interval(detection_metrics, 1,000 resamples) {kind}: wall "
              f"{time.perf_counter() - start:.2f} s, CPU {time.process_time() - start_cpu:.2f} s")


def bench_scores(seed=0):
    X, y = load_digits_images()
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(seed)
    net = SimpleCNN(image_size=8, channels=(8, 16), hidden=64)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    train = slice(0, len(X) - 1000)
    for _ in range(20):
        for i in range(0, train.stop, 100):
            batch = slice(i, min(i + 100, train.stop))
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(X[batch]), y[batch]).backward()
            optimizer.step()
    net.eval()
    X_test = X[-1000:]
    print(f"CNN test accuracy on 1,000 digits: "
          f"{(net(X_test).argmax(1) == y[-1000:]).float().mean():.3f}")
    for name, attack in [("input_margin", input_margin), ("deepfool", deepfool)]:
        wall, cpu = best_seconds(attack, net, X_test, repeat=3, number=1)
        print(f"{name:12s} 1,000 images: wall {wall:.3f} s, CPU {cpu:.3f} s (best of 3)")
    result = deepfool(net, X_test)
    print(f"deepfool: steps per image {np.bincount(result.n_iter).tolist()} (count per n_iter), "
          f"mean {result.forward_passes.mean():.2f} forward and "
          f"{result.backward_passes.mean():.2f} backward passes per image; "
          f"input_margin: 1 forward and 9 backward passes per image")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_metrics()
    bench_scores()
