import json

import numpy as np
import pytest

from resistclf.cli import main
from resistclf.reports._reference import FAST_MODES
from resistclf.reports.dynamics import run_dynamics


@pytest.fixture(scope="module")
def report(fake_mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics")
    return out, run_dynamics("mnist", fake_mnist_root, out=out, limit=60, epochs=3, max_iter=20,
                             verbose=False)


def test_dynamics_writes_history_per_epoch(report):
    out, results = report
    for name in ["report.md", "results.json", "dynamics.png"]:
        assert (out / name).exists(), name
    assert len(list((out / "cache").glob("dynamics-*.json"))) == 1
    history = results["history"]
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]
    for key in ["train_loss", "resistance_accuracy", "resistance_res_n_q50_correct",
                "resistance_auroc_res_n", "resistance_auroc_max_softmax",
                "resistance_correction_rate"]:
        assert all(key in epoch for epoch in history), key
    assert history[-1]["resistance_accuracy"] > history[0]["resistance_accuracy"]
    assert results["n_val"] == 60
    report_text = (out / "report.md").read_text()
    assert "Early in training against late" in report_text and "max-softmax" in report_text


def test_dynamics_rerun_reuses_history(report, fake_mnist_root, monkeypatch):
    from resistclf.reports import dynamics

    out, results = report
    monkeypatch.setattr(dynamics, "_history", None)  # kept: never called
    again = run_dynamics("mnist", fake_mnist_root, out=out, limit=60, epochs=3, max_iter=20,
                         verbose=False)
    assert again["history"] == json.loads(json.dumps(results["history"]))
    assert "as first computed" in (out / "report.md").read_text()


def test_dynamics_cli_quick_run(fake_mnist_root, tmp_path, fast_mnist):
    main(["dynamics", "--dataset", "mnist", "--root", str(fake_mnist_root), "--out",
          str(tmp_path), "--limit", "20", "--epochs", "1", "--max-iter", "5", "--fast",
          "--quiet"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["epochs"] == 1 and saved["n_val"] == 20
    assert saved["mode"] == FAST_MODES["mnist"] and saved["fast"]
    assert f"`--fast`: {FAST_MODES['mnist']}" in (tmp_path / "report.md").read_text()
    assert np.isfinite(saved["history"][0]["resistance_accuracy"])


def test_dynamics_report_verifies_from_its_per_image_arrays(report, tmp_path):
    import shutil

    from resistclf.reports.verify import verify

    out = tmp_path / "report"
    shutil.copytree(report[0], out, ignore=shutil.ignore_patterns("cache"))
    results = report[1]
    # The analysis recomputed from the per-image arrays matches the monitor's own record.
    for epoch, analysed in zip(results["history"], results["analysis"]["epochs"]):
        assert analysed["auroc_res_n"] == pytest.approx(epoch["resistance_auroc_res_n"],
                                                        nan_ok=True)
        assert analysed["n_errors"] == epoch["resistance_n_errors"]
    assert verify(out) == []
    saved = json.loads((out / "results.json").read_text())
    saved["analysis"]["epochs"][0]["accuracy"] += 1e-6
    (out / "results.json").write_text(json.dumps(saved))
    assert any("analysis.epochs[0].accuracy" in line for line in verify(out))
