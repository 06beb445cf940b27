import json
import sys

import numpy as np
import pytest

from resistclf.cli import main
from resistclf.reports._reference import ATTACK_MODES, FAST_MODES
from resistclf.reports.adversarial import ATTACKS, DETECTORS, run_adversarial

from .conftest import copy_net


@pytest.fixture(scope="module")
def report(fake_mnist_root, fake_mnist_net, tmp_path_factory):
    pytest.importorskip("torchattacks")
    out = tmp_path_factory.mktemp("adversarial")
    copy_net(fake_mnist_net, out / "cache")
    results = run_adversarial("mnist", fake_mnist_root, out=out, limit=30, max_iter=20,
                              n_resamples=20, verbose=False)
    return out, results


def test_adversarial_writes_report_figures_and_caches(report):
    out, results = report
    for name in ["report.md", "results.json", "roc.png", "features.png", "examples.png"]:
        assert (out / name).exists(), name
    assert len(list((out / "cache").glob("adversarial-examples-*.npz"))) == 1
    assert (out / "cache" / "resistance-rank0.npz").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_clean"] == 30 and saved["n_train"] == 1000
    assert list(saved["attacks"]) == list(ATTACKS)
    report_text = (out / "report.md").read_text()
    for phrase in ["max-softmax (baseline)", "Attack as Defense", "high-confidence PGD",
                   "True-positive rate at 5% false-positive rate"]:
        assert phrase in report_text, phrase


def test_adversarial_scores_every_detector_with_intervals(report):
    _, results = report
    # PGD at eps=0.3 fools a small undefended CNN on almost every image.
    pgd = results["attacks"]["PGD eps=0.3"]
    assert pgd["success"]["count"] >= 20
    assert list(pgd["detection"]) == DETECTORS
    for detector in DETECTORS:
        for metric in ["auroc", "tpr_at_5_fpr"]:
            entry = pgd["detection"][detector][metric]
            assert 0 <= entry["value"] <= 1
            low, high = entry["ci"]
            assert low <= high
    # High-confidence examples are those the net is at least 90% sure of.
    assert results["attacks"]["high-confidence PGD eps=0.3"]["median"]["1 - max-softmax"] <= 0.1
    for attack in results["attacks"].values():
        assert attack["success"]["of"] == 30
        assert 0 <= attack["success"]["count"] <= 30


def test_adversarial_rerun_reuses_caches(report, fake_mnist_root, monkeypatch):
    from resistclf import ResistanceAttack
    from resistclf.reports import adversarial

    out, results = report
    monkeypatch.setattr(adversarial, "_craft", None)  # kept: never called
    monkeypatch.setattr(ResistanceAttack, "__call__", None)
    again = run_adversarial("mnist", fake_mnist_root, out=out, limit=30, max_iter=20,
                            n_resamples=20, verbose=False)
    assert again["attacks"] == results["attacks"]


def test_adversarial_without_torchattacks_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks fails
    with pytest.raises(ImportError, match=r"pip install 'resistclf\[adversarial\]'"):
        run_adversarial("mnist", tmp_path, out=tmp_path / "out", verbose=False)
    with pytest.raises(SystemExit, match=r"torchattacks, which is not installed"):
        main(["adversarial", "--dataset", "mnist", "--root", str(tmp_path)])
    assert not (tmp_path / "out").exists()


def test_adversarial_cli_quick_run(fake_mnist_root, fake_mnist_net, tmp_path, fast_mnist):
    pytest.importorskip("torchattacks")
    out = tmp_path / "cli"
    copy_net(fake_mnist_net, out / "cache")
    main(["adversarial", "--dataset", "mnist", "--root", str(fake_mnist_root), "--out",
          str(out), "--limit", "10", "--max-iter", "5", "--n-resamples", "5", "--fast",
          "--quiet"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_clean"] == 10 and saved["attack"]["max_iter"] == 5
    assert saved["mode"] == FAST_MODES["mnist"] and saved["fast"]
    for key, value in ATTACK_MODES[FAST_MODES["mnist"]].items():
        assert saved["attack"][key] == value, key
    assert np.isfinite(saved["clean"]["median"]["Res_N"])


def test_adversarial_tests_each_detector_against_the_stronger_baseline(report):
    _, results = report
    pgd = results["attacks"]["PGD eps=0.3"]
    detection = pgd["detection"]
    stronger = max(DETECTORS[4:], key=lambda name: detection[name]["auroc"]["value"])
    assert set(pgd["tests"]) == set(DETECTORS[:4])
    # max-softmax is a baseline both ways round: PGD makes the net more confident.
    assert detection["max-softmax reversed (baseline)"]["auroc"]["value"] == pytest.approx(
        1 - detection["max-softmax (baseline)"]["auroc"]["value"])
    for name, test in pgd["tests"].items():
        assert test["against"] == stronger
        assert test["difference"] == pytest.approx(detection[name]["auroc"]["value"]
                                                   - detection[stronger]["auroc"]["value"])
        assert test["p_holm"] >= test["p_value"]


def test_adversarial_report_verifies_from_its_per_image_arrays(report, tmp_path):
    import shutil

    from resistclf.reports.verify import verify

    out = tmp_path / "report"
    shutil.copytree(report[0], out, ignore=shutil.ignore_patterns("cache"))
    results = report[1]
    with np.load(out / "per_image.npz", allow_pickle=False) as arrays:
        assert arrays["set"].max() == len(ATTACKS)
        assert (arrays["source"] < results["n_clean"]).all()
    assert verify(out) == []
    saved = json.loads((out / "results.json").read_text())
    saved["attacks"]["PGD eps=0.3"]["detection"]["Res_N"]["auroc"]["value"] += 1e-6
    (out / "results.json").write_text(json.dumps(saved))
    assert any("PGD eps=0.3" in line for line in verify(out))


def test_adversarial_names_one_primary_test_and_adjusts_the_rest(report):
    out, results = report
    tests = results["tests"]
    assert tests["primary"]["attack"] == "PGD eps=0.3"
    assert tests["primary"]["detector"] == "LR(resistance), out-of-fold"
    assert tests["primary"]["verdict"] in ("better", "worse", "no difference found")
    secondary = [test for attack, a in results["attacks"].items()
                 for detector, test in (a.get("tests") or {}).items()
                 if (attack, detector) != ("PGD eps=0.3", "LR(resistance), out-of-fold")]
    assert len(secondary) == tests["secondary_family"] > 4
    assert all(test["p_holm"] >= test["p_value"] for test in secondary)
    opening = (out / "report.md").read_text().split("\n")[:6]
    assert opening[2].startswith("**Primary question.** Does LR(resistance) tell PGD eps=0.3")
    assert opening[4].startswith("**Verdict:** Δ AUROC ")
