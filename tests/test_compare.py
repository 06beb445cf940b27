import json
import shutil

import pytest

from resistclf.cli import main
from resistclf.reports._reference import FAST_MODES
from resistclf.reports.compare import NETS, OVERVIEW, run_compare

from .conftest import copy_net


@pytest.fixture(scope="module")
def report(fake_mnist_root, fake_mnist_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    copy_net(fake_mnist_net, out / "cache")
    return out, run_compare("mnist", fake_mnist_root, out=out, limit=80, max_iter=20,
                            n_resamples=20, verbose=False)


def test_compare_tabulates_every_net_on_the_same_images(report):
    out, results = report
    for name in ["report.md", "results.json", "risk_coverage.png", "features.png"]:
        assert (out / name).exists(), name
    assert len(list((out / "cache").glob("net-*.pt"))) == 3
    assert list(results["comparison"]) == list(NETS)
    assert results["nets"]["CNN, quarter of the data"]["n_train"] == 250
    assert results["nets"]["MLP"]["architecture"] == "MLP(n_features=784)"
    for net in results["comparison"].values():
        assert net["accuracy"]["of"] == 80
        assert net["correction"]["adversarial_class_is_true"]["of"] == 80 - net["accuracy"][
            "count"]
        assert net["correction"]["FMN-L2_class_is_true"]["of"] == net["errors"]["count"]
    report_text = (out / "report.md").read_text()
    for phrase in ["CNN, quarter of the data", "MLP", "AURC ×1000, max-softmax", "accuracy",
                   "DeepFool's class", "Does resistance add anything beyond the softmax?"]:
        assert phrase in report_text, phrase


def test_compare_scores_detectors_where_errors_exist(report):
    _, results = report
    detected = [net["detection"] for net in results["comparison"].values()
                if net["detection"] is not None]
    assert detected  # 80 digits upscaled to 28x28 give every net some errors
    for detection in detected:
        assert set(OVERVIEW) <= set(detection)
        for entry in detection.values():
            assert 0 <= entry["auroc"]["value"] <= 1
            assert entry["eaurc"]["value"] <= entry["aurc"]["value"]


def test_compare_rerun_reuses_nets_and_attacks(report, fake_mnist_root):
    out, results = report
    nets = {path.name: path.read_bytes() for path in (out / "cache").glob("net-*.pt")}
    again = run_compare("mnist", fake_mnist_root, out=out, limit=80, max_iter=20,
                        n_resamples=20, verbose=False)
    assert {path.name: path.read_bytes() for path in (out / "cache").glob("net-*.pt")} == nets
    assert again["comparison"] == results["comparison"], "the costs as first measured, too"


@pytest.mark.parametrize("argv, message", [
    (["compare", "--root", "x"], "--dataset"),
    (["compare", "--dataset", "cifar", "--root", "x"], "invalid choice"),
    (["dynamics", "--dataset", "mnist", "--root", "x", "--epochs", "0"], "positive integer"),
    (["adversarial", "--dataset", "mnist", "--root", "x", "--limit", "0"], "positive integer"),
    (["adversarial", "--dataset", "mnist"], "--root"),
])
def test_study_commands_reject_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_cli_fast_runs_the_fast_mode_and_says_so(report, fake_mnist_root, tmp_path,
                                                        fast_mnist):
    trained, _ = report
    for path in (trained / "cache").glob("net-*"):  # the nets, not their attacks
        (tmp_path / "cache").mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / "cache" / path.name)
    main(["compare", "--dataset", "mnist", "--root", str(fake_mnist_root), "--out",
          str(tmp_path), "--limit", "40", "--max-iter", "5", "--n-resamples", "5", "--fast",
          "--quiet"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mode"] == FAST_MODES["mnist"] and saved["fast"]
    assert f"`--fast`: {FAST_MODES['mnist']}" in (tmp_path / "report.md").read_text()


def test_compare_report_verifies_from_its_per_image_arrays(report, tmp_path):
    from resistclf.reports.verify import verify

    out = tmp_path / "report"
    shutil.copytree(report[0], out, ignore=shutil.ignore_patterns("cache"))
    assert verify(out) == []
    saved = json.loads((out / "results.json").read_text())
    saved["comparison"]["MLP"]["accuracy"]["value"] += 1e-6
    (out / "results.json").write_text(json.dumps(saved))
    assert any("comparison.MLP.accuracy" in line for line in verify(out))


def test_compare_opens_with_one_primary_verdict_over_every_net(report):
    out, results = report
    primary = results["primary"]
    assert list(primary["per_net"]) == list(NETS)
    words = {net["word"] for net in primary["per_net"].values()}
    assert words <= {"adds", "loses", "no difference found", "not testable"}
    # "On every net" needs every net's own test: one that does not add withholds it.
    assert (primary["verdict"] == "adds on every net") == (words == {"adds"})
    lines = (out / "report.md").read_text().split("\n")
    assert lines[0].startswith("# Resistance across trained networks")
    assert lines[2].startswith("**Primary question.** Does resistance add")
    assert lines[4].startswith("**Verdict:** resistance ")
