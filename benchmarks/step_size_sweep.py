"""Flip rate and Res_N separation against the attack's step size, on MNIST and FashionMNIST.

For each dataset: train (or load from --out) the reference CNN, draw 1,000 correctly
classified and up to 200 misclassified test images, and attack them at each step size.

    python benchmarks/step_size_sweep.py --root ../shared/data --out results/step_size
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from resistclf import ResistanceAttack, ResultStore
from resistclf._attack import FEATURE_NAMES
from resistclf.metrics import detection_metrics
from resistclf.scores import resistance_error_scores
from resistclf.reports._reference import DATASETS, load_dataset, reference_net
from resistclf.reports._report import write_json


def sweep(dataset, root, out, step_sizes, seed=0):
    X_train, y_train, X_test, y_test = load_dataset(dataset, root)
    net, _ = reference_net(X_train, y_train, store=ResultStore(Path(out) / "cache"), seed=seed)
    pred = net.predict(X_test)
    rng = np.random.RandomState(seed)
    correct = rng.choice(np.flatnonzero(pred == y_test), 1000, replace=False)
    wrong = np.flatnonzero(pred != y_test)
    wrong = rng.choice(wrong, min(200, len(wrong)), replace=False)
    images = torch.tensor(X_test[np.r_[correct, wrong]])
    is_error = np.r_[np.zeros(len(correct), bool), np.ones(len(wrong), bool)]
    rows = []
    for step_size in step_sizes:
        start = time.perf_counter()
        result = ResistanceAttack(step_size=step_size, batch_size=200)(net.module_, images)
        rows.append({
            "dataset": dataset, "step_size": step_size,
            "n_correct": len(correct), "n_wrong": len(wrong),
            "flip_rate_correct": float(result.flipped[~is_error].mean()),
            "flip_rate_wrong": float(result.flipped[is_error].mean()),
            **{f"auroc_{name}": detection_metrics(is_error, score)["auroc"]
               for name, score in resistance_error_scores(result, FEATURE_NAMES).items()},
            "auroc_max_softmax": detection_metrics(is_error, 1 - result.conf0)["auroc"],
            "seconds": round(time.perf_counter() - start, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="results/step_size")
    parser.add_argument("--datasets", nargs="+", default=sorted(DATASETS))
    parser.add_argument("--step-sizes", nargs="+", type=float,
                        default=[0.05, 0.1, 0.12, 0.15, 0.2, 0.5])
    args = parser.parse_args()
    rows = [row for dataset in args.datasets
            for row in sweep(dataset, args.root, args.out, args.step_sizes)]
    write_json(Path(args.out, "step_size_sweep.json"), rows)


if __name__ == "__main__":
    main()
