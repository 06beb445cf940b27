import json
import re

import numpy as np
import pytest

from resistclf.cli import main
from resistclf.datasets import corrupt, load_fashion_mnist, load_mnist
from resistclf.reports.shift import run_shift
from resistclf.reports.verify import rewrite, verify

from .conftest import copy_net

CORRUPTIONS = ("shot_noise", "rotate", "fog")
COMPETITORS = ("input-space margin", "DeepFool", "FMN-L2")


@pytest.fixture(scope="module")
def report(fake_mnist_root, fake_mnist_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("shift")
    copy_net(fake_mnist_net, out / "cache")
    return out, run_shift("mnist", fake_mnist_root, out=out, limit=40, max_iter=20,
                          n_resamples=20, corruptions=CORRUPTIONS, competitors=COMPETITORS,
                          per_image=out / "per_image.csv", verbose=False)


def test_shift_scores_every_set_mixed_with_iid_images(report):
    out, results = report
    for name in ["report.md", "results.json", "pooled_risk_coverage.png",
                 "new_class_risk_coverage.png", "corrupted_images.png"]:
        assert (out / name).exists(), name
    sets = results["sets"]
    assert list(sets) == ["i.i.d.", *CORRUPTIONS, "new class", "all corruptions",
                          "all corruptions, supervised"]
    assert sets["i.i.d."]["n_mixed"] == 40
    for name in CORRUPTIONS:
        assert sets[name]["n_shifted"] == 40 and sets[name]["n_mixed"] == 80
    assert sets["all corruptions"]["n_mixed"] == 40 * (1 + len(CORRUPTIONS))
    # New-class images are all failures: the mixed set's failures are the i.i.d. errors
    # plus every new-class image.
    iid_errors = sets["i.i.d."]["errors_mixed"]["count"]
    assert sets["new class"]["errors_mixed"]["count"] == iid_errors + 40
    assert sets["new class"]["accuracy"]["value"] == 0
    pooled_errors = sum(40 - sets[name]["accuracy"]["count"] for name in CORRUPTIONS)
    assert sets["all corruptions"]["errors_mixed"]["count"] == iid_errors + pooled_errors
    assert "augrc" in sets["all corruptions"]["detection"]["FMN-L2 distance"]
    correction = sets["all corruptions"]["correction"]
    assert correction["adversarial_class_is_true"]["of"] == pooled_errors
    assert correction["FMN-L2_class_is_true"]["of"] == pooled_errors
    report_text = (out / "report.md").read_text()
    for phrase in ["Failure detection under distribution shift", "mixed with the i.i.d.",
                   "AUGRC", "FashionMNIST", "The correction claim under shift",
                   "Does resistance add anything beyond the softmax?", "FMN-L2",
                   "**Primary question**", "cluster-bootstrap", "Holm"]:
        assert phrase in report_text, phrase


def test_shift_corrupts_the_same_test_images_as_corrupt(report, fake_mnist_root):
    out, results = report
    _, y = load_mnist(fake_mnist_root)
    keep = np.sort(np.random.RandomState(0).choice(len(y), 40, replace=False))
    X, _ = load_mnist(fake_mnist_root)
    from resistclf import ResultStore

    store = ResultStore(out / "cache")
    kept = store.arrays("corrupted", ("fog", X[keep], keep, 0), lambda: pytest.fail("recomputed"))
    np.testing.assert_array_equal(kept["X"], corrupt(X[keep], "fog", seed=0, index=keep))
    assert load_fashion_mnist(fake_mnist_root)[0].shape[1:] == X.shape[1:]


def test_shift_cli_runs_and_rejects_unknown_corruptions(fake_mnist_root, fake_mnist_net,
                                                       tmp_path, capsys):
    copy_net(fake_mnist_net, tmp_path / "cache")
    main(["shift", "--dataset", "mnist", "--root", str(fake_mnist_root), "--out",
          str(tmp_path), "--limit", "20", "--max-iter", "5", "--n-resamples", "5",
          "--corruptions", "stripe", "--quiet"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["corruptions"] == ["stripe"] and saved["n_images"] == 20
    assert "FMN-L2" in saved["competitors"] and "FMN-L2, 500 steps" not in saved["competitors"]
    with pytest.raises(SystemExit):
        main(["shift", "--dataset", "mnist", "--root", "x", "--corruptions", "snow"])
    assert "invalid choice: 'snow'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="corruptions must be names from"):
        run_shift("mnist", fake_mnist_root, out=tmp_path, corruptions=("snow",))


def test_shift_cli_studies_your_own_net_without_training_one(fake_mnist_root, fake_mnist_net,
                                                            tmp_path, monkeypatch):
    monkeypatch.setattr("resistclf.reports.shift.reference_net",
                        lambda *args, **kwargs: pytest.fail("trained the reference CNN"))
    (weights,) = fake_mnist_net.glob("net-*.pt")
    main(["shift", "--dataset", "mnist", "--root", str(fake_mnist_root), "--out",
          str(tmp_path), "--limit", "20", "--max-iter", "5", "--n-resamples", "5",
          "--corruptions", "stripe", "--competitors", "--model",
          "resistclf.models:SimpleCNN", "--weights", str(weights), "--quiet"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["net"]["builder"] == "resistclf.models:SimpleCNN"
    assert saved["net"]["weights_sha256"] and saved["competitors"] == {}
    assert "Your network (`resistclf.models:SimpleCNN`" in (tmp_path / "report.md").read_text()
    assert not verify(tmp_path)


@pytest.mark.parametrize("extra, match", [
    (["--weights", "w.pt"], "--weights and --model-arg need --model"),
    (["--model", "resistclf.models:MLP", "--model-arg", "n_features=10"],
     "The network rejects the data: its samples have shape"),
    (["--model", "resistclf.models:SimpleCNN", "--model-arg", "n_classes=3"],
     "scores 3 classes; MNIST has 10"),
    (["--competitors", "FMN"], r"--competitors: unknown \['FMN'\]; the names are"),
])
def test_shift_cli_rejects_a_net_or_competitor_it_cannot_use(extra, match, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setattr("resistclf.reports.shift.run_shift",
                        lambda *args, **kwargs: pytest.fail("ran the study"))
    with pytest.raises(SystemExit) as exit_info:
        main(["shift", "--dataset", "mnist", "--root", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_shift_learns_from_iid_images_only_and_keeps_sources_together(report):
    out, results = report
    sets = results["sets"]
    # Every learned detector of a shifted set is trained on the 40 i.i.d. images only.
    for name in [*CORRUPTIONS, "new class", "all corruptions"]:
        assert sets[name]["trained_on"] == "40 samples", name
        assert sets[name]["n_sources"] == (80 if name == "new class" else 40)
    assert sets["all corruptions, supervised"]["trained_on"] == "all samples"
    iid_errors = sets["i.i.d."]["errors_mixed"]["count"]
    if min(iid_errors, 40 - iid_errors) < 2:  # nothing to learn a detector from
        assert results["primary"] is None
        assert set(results["secondary"]) <= {"all corruptions, supervised"}
        return
    assert results["primary"]["set"] == "all corruptions"
    assert set(results["secondary"]) == {"i.i.d.", *CORRUPTIONS, "new class",
                                         "all corruptions, supervised"}
    for test in results["secondary"].values():
        assert test["p_holm"] >= test["p_value"]


def test_shift_report_verifies_from_its_per_image_arrays(report):
    out, _ = report
    assert verify(out) == []


def test_shift_report_rewritten_from_its_arrays_is_the_same_report(report):
    out, _ = report
    written = (out / "report.md").read_text()
    assert written.startswith("# Failure detection under distribution shift")
    assert written.split("\n\n")[1].startswith("**Verdict")
    assert rewrite(out) == []
    assert (out / "report.md").read_text() == written


def test_shift_per_image_csv_recomputes_a_reported_auroc(report):
    import csv

    from resistclf.metrics import auroc

    out, results = report
    with open(out / "per_image.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 40 * (2 + len(CORRUPTIONS))
    assert [row["set"] for row in rows[::40]] == ["i.i.d.", *CORRUPTIONS, "new class"]
    # A corrupted copy shares its source with its i.i.d. image; new-class images have their own.
    assert [row["source"] for row in rows[40:80]] == [row["source"] for row in rows[:40]]
    assert {row["source"] for row in rows[-40:]}.isdisjoint(row["source"] for row in rows[:40])
    # fog mixed with the i.i.d. images: Res_N as measured gives the report's AUROC.
    mixed = [row for row in rows if row["set"] in ("i.i.d.", "fog")]
    is_error = np.array([row["is_error"] == "True" for row in mixed])
    res_n = np.array([float(row["Res_N"]) for row in mixed])
    assert auroc(is_error, -res_n) == pytest.approx(
        results["sets"]["fog"]["detection"]["Res_N"]["auroc"]["value"], abs=1e-12)
