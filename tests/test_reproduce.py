import json

import numpy as np
import pytest

from resistclf import ResistanceAttack
from resistclf.datasets import load_mnist
from resistclf.reports.reproduce import run_reproduce


def test_fake_mnist_loads_through_torchvision(fake_mnist_root):
    X, y = load_mnist(fake_mnist_root)
    assert X.shape == (797, 1, 28, 28) and X.dtype == np.float32 and X.max() <= 1


def test_reproduce_end_to_end_and_rerun_reuses_cache(fake_mnist_root, tmp_path, monkeypatch):
    out = tmp_path / "report"
    results = run_reproduce("mnist", fake_mnist_root, out=out, limit=150, max_iter=30,
                            n_resamples=30, verbose=False)
    for name in ["report.md", "results.json", "traces.png", "histograms.png", "roc.png",
                 "errors.png", "net.pt", "attack-cache.npz"]:
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_test"] == 150 and saved["n_train"] == 1000
    assert set(saved["detection"]) >= {"Res_N", "Res_max", "Res_min", "max-softmax",
                                       "LR(resistance), out-of-fold"}
    errors = saved["errors"]["count"]
    assert saved["correction"]["adversarial_class_is_true"]["of"] == errors
    low, high = saved["errors"]["ci"]
    assert low <= saved["errors"]["value"] <= high
    report = (out / "report.md").read_text()
    assert "write-up" in report and "max-softmax" in report and "top-5 error" in report

    net_bytes = (out / "net.pt").read_bytes()
    attack = ResistanceAttack.__call__

    def traces_only(self, module, X, **kwargs):
        assert kwargs.get("return_trace"), "a rerun attacked an image again"
        return attack(self, module, X, **kwargs)

    monkeypatch.setattr(ResistanceAttack, "__call__", traces_only)
    again = run_reproduce("mnist", fake_mnist_root, out=out, limit=150, max_iter=30,
                          n_resamples=30, verbose=False)
    assert (out / "net.pt").read_bytes() == net_bytes
    # The report keeps the attack's cost as first measured.
    assert again["seconds"]["attack the test set"] == results["seconds"]["attack the test set"]
    assert "as first computed" in (out / "report.md").read_text()
    assert again["detection"] == results["detection"]


def test_reproduce_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        run_reproduce("mnist", tmp_path, out=tmp_path / "out", verbose=False)


def test_reproduce_unknown_dataset_raises(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of"):
        run_reproduce("cifar", tmp_path, out=tmp_path / "out", verbose=False)
