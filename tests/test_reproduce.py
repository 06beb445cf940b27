import json

import numpy as np
import pytest
import torch

from resistclf import ResistanceAttack, study
from resistclf.datasets import load_mnist
from resistclf.reports import _reference
from resistclf.reports._reference import ATTACK_MODES, FAST_MODES
from resistclf.reports.reproduce import run_reproduce
from resistclf.scores import SOFTMAX_SCORES
from resistclf.study import COMPLEMENTS

from .conftest import copy_net


def test_fake_mnist_loads_through_torchvision(fake_mnist_root):
    X, y = load_mnist(fake_mnist_root)
    assert X.shape == (797, 1, 28, 28) and X.dtype == np.float32 and X.max() <= 1


def test_reproduce_end_to_end_and_rerun_reuses_cache(fake_mnist_root, tmp_path, monkeypatch):
    out = tmp_path / "report"
    results = run_reproduce("mnist", fake_mnist_root, out=out, limit=150, max_iter=30,
                            n_resamples=30, verbose=False)
    for name in ["report.md", "results.json", "traces.png", "histograms.png", "roc.png",
                 "risk_coverage.png", "errors.png"]:
        assert (out / name).exists(), name
    for name in ["resistance-rank0.npz", "resistance-rank2.npz", "logits.npz",
                 "competitor-DeepFool.npz", "competitor-FMN-L2.npz"]:
        assert (out / "cache" / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_test"] == 150 and saved["n_train"] == 1000 and saved["mode"] == "exact"
    assert list(saved["detection"]) == [
        "Res_N", "Res_max", "Res_min", "Res_mean", "LR(resistance)", *SOFTMAX_SCORES,
        "input-space margin", "DeepFool distance", "FMN-L2 distance", "FMN-Linf distance",
        "DDN distance", "LR(resistance + max-softmax)", "LR(softmax)",
        "LR(softmax + resistance)", "LR(softmax + distances)",
        "LR(softmax + distances + resistance)"]
    for metrics in saved["detection"].values():
        assert set(metrics) == {"auroc", "aurc", "eaurc", "augrc", "fpr_at_95_tpr"}
        low, high = metrics["aurc"]["ci"]
        assert low <= metrics["aurc"]["value"] <= high
    assert set(saved["complementarity"]) == set(COMPLEMENTS)
    for row in saved["complementarity"].values():
        assert row["auroc"]["verdict"] in {"adds", "loses", "no difference found"}
    assert (saved["cost"]["Res_N"]["forward"], saved["cost"]["Res_N"]["backward"]) == (31, 30)
    assert saved["cost"]["input-space margin"]["backward"] == 9
    errors = saved["errors"]["count"]
    assert saved["correction"]["adversarial_class_is_true"]["of"] == errors
    assert saved["correction"]["FMN-L2_class_is_true"]["of"] == errors
    low, high = saved["errors"]["ci"]
    assert low <= saved["errors"]["value"] <= high
    report = (out / "report.md").read_text()
    for phrase in ["write-up", "max-softmax", "top-5 error", "exact mode", "AURC ×1000",
                   "Does resistance add anything beyond the softmax?", "DeepFool distance",
                   "FMN-L2 distance", "DDN distance", "Spearman"]:
        assert phrase in report, phrase
    # The verdict opens the report, the departures from the defaults follow, and a glossary
    # of the terms it names closes it.
    opening = report.split("\n\n")[1:3]
    assert opening[0].startswith("**Verdict (primary question: does resistance add")
    assert opening[1].startswith("**Settings that depart from the defaults:** `max_iter=30`")
    glossary = report[report.index("## Glossary"):]
    for term in ["**Res_min**", "**E-AURC**", "**AUGRC**", "**TOST**", "**LR**"]:
        assert term in glossary, term

    attack = ResistanceAttack.__call__

    def traces_only(self, module, X, **kwargs):
        assert kwargs.get("return_trace"), "a rerun attacked an image again"
        return attack(self, module, X, **kwargs)

    monkeypatch.setattr(ResistanceAttack, "__call__", traces_only)
    for name in ("deepfool", "input_margin", "minimum_norm"):  # kept: never called
        monkeypatch.setattr(study, name, None)
    again = run_reproduce("mnist", fake_mnist_root, out=out, limit=150, max_iter=30,
                          n_resamples=30, verbose=False)
    # The costs stay those first measured, and the numbers are the same.
    assert again["cost"] == results["cost"]
    assert again["detection"] == results["detection"]


def test_reproduce_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        run_reproduce("mnist", tmp_path, out=tmp_path / "out", verbose=False)


def test_reproduce_unknown_dataset_raises(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of"):
        run_reproduce("cifar", tmp_path, out=tmp_path / "out", verbose=False)


def test_reproduce_fast_runs_the_fast_mode_and_says_so(fake_mnist_root, fake_mnist_net,
                                                        tmp_path, fast_mnist):
    out = tmp_path / "fast"
    copy_net(fake_mnist_net, out / "cache")
    results = run_reproduce("mnist", fake_mnist_root, out=out, limit=60, max_iter=20,
                            n_resamples=10, fast=True, verbose=False)
    mode = FAST_MODES["mnist"]
    assert results["mode"] == mode != "exact"
    for key, value in ATTACK_MODES[mode].items():
        assert results["attack"][key] == value, key
    assert f"**fast mode** (`--fast`: {mode}" in (out / "report.md").read_text()


def test_reproduce_fast_without_an_equivalent_mode_runs_exact_and_says_so(monkeypatch):
    monkeypatch.setitem(_reference.FAST_MODES, "fashion-mnist", "exact")
    with pytest.warns(UserWarning, match="--fast runs exact mode on FashionMNIST"):
        mode, settings = _reference.attack_mode(True, "fashion-mnist")
    assert (mode, settings) == ("exact", {})
    sentence = _reference.mode_sentence(mode, "fashion-mnist", True)
    assert "`--fast` was given, but no fast mode both reached" in sentence
    assert "--fast" not in _reference.mode_sentence(mode, "fashion-mnist", False)


def test_reproduce_class_names_are_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert _reference.CLASS_NAMES["fashion-mnist"] == FashionMNIST.classes


def test_report_glossary_defines_only_the_terms_named():
    from resistclf.reports._report import glossary_markdown

    glossary = glossary_markdown("Res_N against max-softmax, by AURC.")
    assert [line.split("**")[1] for line in glossary.splitlines() if line.startswith("- ")] == [
        "Res_N", "max-softmax", "AURC"]
    assert glossary_markdown("no term here") == ""


@pytest.mark.parametrize("changed, expected", [
    ({}, None),
    ({"thresholds": [0.2, 0.9], "batch_size": 7}, None),  # JSON's lists; a speed setting
    ({"max_iter": 100}, "`max_iter=100` (default 500: the step size is tuned for 500 steps"),
    ({"norm": "linf"}, "`norm='linf'` (default 'l2')"),
])
def test_report_flags_settings_that_depart_from_the_defaults(changed, expected):
    from resistclf.reports._report import departures_markdown

    line = departures_markdown({**ResistanceAttack().get_params(), **changed})
    assert line == expected if expected is None else expected in line


def test_reproduce_fast_mode_slower_on_this_machine_runs_exact_and_says_so(monkeypatch,
                                                                        fast_mnist):
    from resistclf import _modes

    # A CPU without native bfloat16: the mode the benchmark chose is ten times slower.
    monkeypatch.setattr(_modes, "_time_modes",
                        lambda *args: ({"exact": 1.0, fast_mnist: 10.0}, {}))
    with pytest.warns(UserWarning, match=f"the {fast_mnist} mode reaches exact mode's "
                                         "conclusions, but no equivalent fast mode was faster"):
        mode, settings = _reference.attack_mode(True, "mnist", torch.nn.Linear(4, 2),
                                                np.zeros((2, 4), np.float32))
    assert (mode, settings) == ("exact", {})
