import json

import numpy as np
import pytest
import torch

from resistclf import ResultStore
from resistclf.cli import main
from resistclf.models import SimpleCNN
from resistclf.reports import bench
from resistclf.reports.bench import (
    EQUIVALENCE_MARGINS,
    PER_IMAGE,
    fastest_equivalent_modes,
    flops_per_image_step,
    format_tables,
    judge_modes,
)
from resistclf.reports._reference import ATTACK_MODES

from .conftest import copy_net


def test_bench_writes_every_table_judges_every_mode_and_skips_missing_peers(
        fake_mnist_root, fake_mnist_net, tmp_path, capsys, monkeypatch):
    def not_installed(*args):
        raise ImportError("no such package")

    monkeypatch.setitem(bench.PEERS, "Foolbox 3 L2PGD", (not_installed, "foolbox"))
    copy_net(fake_mnist_net, tmp_path / "cache")
    main(["bench", "--steps", "2", "--batch-sizes", "16", "32", "--out", str(tmp_path),
          "--root", str(fake_mnist_root), "--datasets", "mnist", "--max-iter", "3",
          "--n-resamples", "20", "--quiet"])
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [(row["precision"], row["layout"], row["batch_size"])
            for row in results["throughput"]] == [
        (p, layout, b) for p in ("float32", "bfloat16")
        for layout in ("contiguous", "channels last") for b in (16, 32)]
    for row in results["throughput"]:
        assert row["share_of_peak"] == pytest.approx(
            row["image_steps_per_s"] * results["flops_per_image_step"][row["precision"]]
            / results["peak_flops"][row["precision"]])
    peers = results["peers"]
    assert peers["peers"]["Foolbox 3 L2PGD"]["image_steps_per_s"] is None
    assert peers["peers"]["torchattacks PGDL2"]["image_steps_per_s"] > 0
    assert set(peers["resistclf"]) == {"exact", "bfloat16, channels last"}

    judged = results["modes"]["mnist"]
    assert set(ATTACK_MODES) <= set(judged) and set(judged["speed_seconds"]) == set(ATTACK_MODES)
    assert judged["exact"]["speedup"] == 1.0
    assert all(judged[mode]["speedup"] > 0 for mode in ATTACK_MODES)
    chosen = results["fast_mode"]["mnist"]
    assert chosen == "exact" or judged[chosen]["equivalent"]
    stability = results["stability"]["mnist"]
    exact_row = stability["settings"]["batch size 256 (exact)"]
    assert exact_row["res_n_within_1pct"] == exact_row["res_min_identical"] == 1.0
    assert 0 < stability["n_errors"] < stability["n_images"]

    report = capsys.readouterr().out
    assert "Foolbox 3 L2PGD | not installed" in report
    assert "torchattacks PGDL2 |" in report
    assert "## Fast modes judged by the study's conclusions: mnist" in report
    assert f"mnist: **{chosen}**" in report
    assert (tmp_path / "bench.md").read_text().strip() == report.strip()
    # Attacking again finds everything cached: the timings stay as first measured.
    _, _, info = bench.attack_every_mode("mnist", fake_mnist_root,
                                         ResultStore(tmp_path / "cache"), max_iter=3,
                                         verbose=False)
    assert info["timings"] == judged["timings"]


def test_bench_flops_count_forward_and_input_gradient():
    module = SimpleCNN()
    x = torch.rand(4, 1, 28, 28)
    # The input-gradient pass costs about what the forward pass does, minus the
    # first convolution's input gradient being cheap: between 1.5x and 2.5x.
    forward_only = sum(
        2 * m.weight.numel() * (28 * 28 if i == 0 else 14 * 14)
        for i, m in enumerate(m for m in module.modules() if isinstance(m, torch.nn.Conv2d)))
    assert 1.5 * forward_only < flops_per_image_step(module, x, "float32") < 3 * forward_only


def _run(rng, n=400, flip_errors=0, seconds=100.0, noise=0.0):
    """Per-image arrays of one mode; ``flip_errors`` moves that many recovered errors."""
    is_error = np.zeros(n, bool)
    is_error[:40] = True
    res = np.where(is_error, 0.3, 1.0) + rng.normal(0, 0.3, n) + noise * rng.normal(0, 1, n)
    recovered = is_error.copy()
    recovered[:flip_errors] = False
    run = {"is_error": is_error, "res_n": res, "res_max": res + 1, "res_min": np.round(res * 50),
           "res_mean": res, "detector": -res, "recovered": recovered,
           "top2_miss": ~recovered & is_error, "top5_miss": np.zeros(n, bool),
           "corrected_right": ~is_error | recovered, "softmax_resistance": -res,
           "softmax_only": -res, "seconds": seconds}
    assert set(run) == {*PER_IMAGE, "seconds"}
    return run


def test_bench_judge_modes_pairs_the_modes_and_flags_real_differences():
    rng = np.random.RandomState(0)
    exact = _run(rng)
    same = {**exact, "seconds": 10.0}
    worse = _run(np.random.RandomState(0), flip_errors=30, seconds=5.0)
    judged = judge_modes({"exact": exact, "same": same, "worse": worse}, n_resamples=200)
    assert judged["same"]["equivalent"] and judged["same"]["speedup"] == 10
    for row in judged["same"]["conclusions"].values():
        assert row["difference"] == 0 and row["ci"] == (0, 0)
    assert not judged["worse"]["equivalent"]
    recovered = judged["worse"]["conclusions"][
        "errors whose true label the adversarial class recovers"]
    assert recovered["difference"] == -30 and recovered["ci"][1] < 0
    assert "errors whose true label the adversarial class recovers" in judged["worse"]["failing"]
    # The AUROCs did not move: only the recovery conclusions fail.
    assert all(not name.startswith("AUROC") for name in judged["worse"]["failing"])
    assert fastest_equivalent_modes({"d": judged}) == {"d": "exact"}  # "same" is no mode


def test_bench_judge_modes_fails_an_auroc_outside_the_margin():
    exact = _run(np.random.RandomState(0))
    shifted = {**exact, "detector": exact["detector"] + np.where(
        exact["is_error"], -0.5, 0.0) * np.random.RandomState(1).rand(len(exact["is_error"]))}
    judged = judge_modes({"exact": exact, "shifted": shifted}, n_resamples=100)
    row = judged["shifted"]["conclusions"][
        "AUROC, detector on the three features (out-of-fold)"]
    assert abs(row["difference"]) > EQUIVALENCE_MARGINS["auroc"]
    assert not row["holds"] and row["margin"] == EQUIVALENCE_MARGINS["auroc"]


def test_bench_judge_modes_fails_a_noisy_mode_whose_interval_contains_zero():
    # The audit's case: a noisier mode's wide interval "contains 0", which is no equivalence.
    exact = _run(np.random.RandomState(0))
    noisy = {**exact, "detector": exact["detector"]
             + 0.8 * np.random.RandomState(2).normal(size=len(exact["is_error"]))}
    judged = judge_modes({"exact": exact, "noisy": noisy}, n_resamples=200)
    row = judged["noisy"]["conclusions"]["AUROC, detector on the three features (out-of-fold)"]
    low, high = row["ci"]
    assert not row["holds"] and (low < -EQUIVALENCE_MARGINS["auroc"]
                                 or high > EQUIVALENCE_MARGINS["auroc"])
    assert not judged["noisy"]["equivalent"]


def test_bench_fastest_equivalent_modes_are_chosen_per_dataset():
    def judged(**equivalent):
        return {mode: {"equivalent": ok, "speedup": speed,
                       "conclusions": {"AUROC, Res_N": {"holds": ok, "margin": 0.005}}}
                for mode, (ok, speed) in equivalent.items()}

    modes = {"mnist": judged(**{"early exit": (True, 5.0), "all three": (True, 14.0)}),
             "fashion-mnist": judged(**{"early exit": (True, 6.0), "all three": (False, 15.0)})}
    assert fastest_equivalent_modes(modes) == {"mnist": "all three",
                                               "fashion-mnist": "early exit"}
    modes["fashion-mnist"]["early exit"]["equivalent"] = False
    assert fastest_equivalent_modes(modes)["fashion-mnist"] == "exact"
    # A judgement without margins found no difference, which is not equivalence.
    del modes["mnist"]["all three"]["conclusions"]["AUROC, Res_N"]["margin"]
    assert fastest_equivalent_modes(modes)["mnist"] == "early exit"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bench_matmul_peak_sizes_itself_to_the_time_budget(dtype):
    flops, size = bench.matmul_peak(dtype, torch.device("cpu"), budget=0.2, max_size=1024)
    assert flops > 0 and size in (256, 512, 1024)


def test_bench_format_tables_marks_failing_conclusions():
    exact = _run(np.random.RandomState(0))
    worse = _run(np.random.RandomState(0), flip_errors=30, seconds=5.0)
    judged = judge_modes({"exact": exact, "early exit": worse}, n_resamples=100)
    results = {"net": "n", "device": "cpu", "environment": {"machine": "m"}, "steps": 2,
               "peak_flops": {"float32": 1e9}, "flops_per_image_step": {"float32": 1e6},
               "throughput": [], "peers": {"batch_size": 8, "resistclf": {"exact": 10.0},
                                           "peers": {}},
               "alternatives": {"ours_image_steps_per_s": 1, "pgd_image_steps_per_s": 1,
                                "naive_per_image_image_steps_per_s": 1,
                                "speedup_over_naive": 1, "slowdown_vs_pgd": 0},
               "auto_batch_size": {"chosen": 16, "throughput_vs_best": 1},
               "modes": {"mnist": {"net": {"n_train": 10}, "timings": {}, "speed_images": 8,
                                  **judged}}}
    text = format_tables(results)
    assert "| errors whose true label the adversarial class recovers | 40 | **-30 [" in text
    assert "| verdict |  | not equivalent |" in text

