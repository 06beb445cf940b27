"""``resistclf study``: a user's own network and data, end to end through the CLI."""

import json
import re
from functools import cache, partial

import numpy as np
import pytest
import torch
from torch import nn

from resistclf import ResistanceAttack, ResultStore
from resistclf.cli import main
from resistclf.datasets import load_digits_images
from resistclf.reports import reproduce
from resistclf.reports._reference import ATTACK_MODES, load_dataset, reference_net
from resistclf.reports.study import DatasetRows, load_data
from resistclf.reports.verify import rewrite, verify
from resistclf.study import StudyResult, measure

#: Until FMN and DDN land in every study, the tests run the two competitors that need nothing
#: beyond torch.
COMPETITORS = ["input-space margin", "DeepFool"]
#: The normalisation the small net is trained with, and that the study is told of.
MEAN, STD = 0.3, 0.4
NOT_CALLABLE = 3


@pytest.fixture(autouse=True)
def one_thread():
    """One thread each for torch and BLAS: these nets are small, and on a busy machine
    threads wait for each other (a study here took 25 s with two threads, 3.5 s with one)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def make_net(hidden=24, n_classes=10):
    """The small net of these tests, for ``--model tests.test_study_command:make_net``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))


def make_tensor():
    """A callable that builds no network."""
    return torch.zeros(3)


@cache
def trained_net():
    """``make_net()`` trained on normalised digits (the first 1,000), and 120 test digits."""
    X, y = load_digits_images()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = make_net()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        inputs, labels = torch.from_numpy((X[:1000] - MEAN) / STD), torch.from_numpy(y[:1000])
        for _ in range(60):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(inputs), labels).backward()
            optimizer.step()
    return net.eval(), X[1000:1120], y[1000:1120]


@pytest.fixture
def small_case(tmp_path, monkeypatch):
    """The small net's weights and an .npz of its test digits, in the current folder."""
    monkeypatch.chdir(tmp_path)
    net, X, y = trained_net()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.savez(tmp_path / "digits.npz", X=X, y=y)
    return tmp_path


def study_args(folder, *extra):
    return ["study", "--model", "tests.test_study_command:make_net",
            "--weights", str(folder / "net.pt"), "--data", str(folder / "digits.npz"),
            "--preprocessing", json.dumps({"mean": MEAN, "std": STD}),
            "--max-iter", "25", "--n-resamples", "20", "--competitors", *COMPETITORS,
            "--out", str(folder / "out"), "--quiet", *extra]


def test_study_command_small_net_npz_end_to_end(small_case):
    main(study_args(small_case))
    out = small_case / "out"
    for name in ["report.md", "results.json", "risk_coverage.png", "roc.png",
                 "histograms.png", "errors.png", "traces.png"]:
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    net, X, y = trained_net()
    with torch.no_grad():
        prediction = net(torch.from_numpy((X - MEAN) / STD)).argmax(1).numpy()
    assert results["n_test"] == 120 and results["ranks"] == 1
    assert 0 < results["errors"]["count"] == np.sum(prediction != y)
    assert results["net"]["n_classes"] == 10 and results["net"]["parameters"] == 1810
    # The attack sees the preprocessing once, as the attack on the net itself does.
    result = ResistanceAttack(max_iter=25, preprocessing={"mean": MEAN, "std": STD})(net, X)
    correct = prediction == y
    assert np.array_equal(result.c0, prediction)
    assert results["separation"]["Res_N"]["q10_correct"] == pytest.approx(
        np.quantile(result.res_n[correct], 0.1), rel=1e-6)
    assert results["flip_rate"]["correct"]["count"] == np.sum(result.flipped[correct])
    assert list(results["competitors"]) == COMPETITORS
    assert set(results["topk_error"]) == {"top2_predict_topk", "top2_softmax"}
    report = (out / "report.md").read_text()
    for phrase in ["# The study on `tests.test_study_command:make_net`", "**120 samples**",
                   "exact mode", "max-softmax", "DeepFool distance", "top-2 error",
                   "## Settings, versions and timings"]:
        assert phrase in report, phrase


def test_study_command_per_image_writes_the_raw_measurements(small_case, no_figures):
    import csv

    main(study_args(small_case, "--limit", "40", "--per-image", str(small_case / "rows.csv")))
    with open(small_case / "rows.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    results = json.loads((small_case / "out" / "results.json").read_text())
    assert len(rows) == results["n_test"] == 40
    assert sum(row["is_error"] == "True" for row in rows) == results["errors"]["count"]
    assert all(float(row["Res_N"]) >= 0 for row in rows)  # as measured, not negated
    assert {"label", "prediction", "max-softmax", "DeepFool distance",
            "DeepFool class"} <= set(rows[0])


def test_verify_recomputes_a_study_report_and_fails_on_a_changed_number(small_case, capsys):
    main(study_args(small_case))
    out = small_case / "out"
    assert verify(out) == []
    main(["verify", str(out)])
    assert "every number recomputed from per_image.npz agrees" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    # --rewrite writes the report again from the arrays, with the same numbers.
    (out / "report.md").write_text("stale")
    (out / "roc.png").unlink()
    main(["verify", "--rewrite", str(out)])
    assert "report.md and its array-drawn figures rewritten" in capsys.readouterr().out
    assert (out / "report.md").read_text() == report and (out / "roc.png").exists()
    results = json.loads((out / "results.json").read_text())
    results["detection"]["max-softmax"]["auroc"]["value"] += 1e-6
    (out / "results.json").write_text(json.dumps(results))
    (out / "report.md").write_text("stale")
    assert len(rewrite(out)) == 1 and (out / "report.md").read_text() == "stale"
    differences = verify(out)
    assert len(differences) == 1 and differences[0].startswith(
        "detection.max-softmax.auroc.value: the report holds")
    with pytest.raises(SystemExit) as exited:
        main(["verify", str(out)])
    assert exited.value.code == 1
    (out / "per_image.npz").unlink()
    with pytest.raises(ValueError, match="has no per_image.npz: only a report written with"):
        verify(out)


def test_study_command_limit_draws_the_same_subset_as_reproduce(small_case):
    X, y, info = load_data(small_case / "digits.npz", limit=50, seed=3)
    keep = np.sort(np.random.RandomState(3).choice(120, 50, replace=False))
    assert np.array_equal(X, trained_net()[1][keep]) and np.array_equal(y, trained_net()[2][keep])
    assert info["n_total"] == 120


@pytest.fixture
def no_figures(monkeypatch):
    """Skip drawing the figures, where a test checks numbers only."""
    import matplotlib.pyplot as plt

    from resistclf.reports import study

    monkeypatch.setattr(StudyResult, "figures", lambda self, X=None, class_names=None: {})
    for module in (study, reproduce):
        monkeypatch.setattr(module, "traces_figure",
                            lambda *args: (plt.figure(), {"hard": 0, "easy": 1}))


def test_study_command_fast_without_an_equivalent_mode_runs_exact_and_says_so(small_case,
                                                                              no_figures):
    main(study_args(small_case, "--fast", "--limit", "40", "--competitors",
                    "input-space margin"))
    results = json.loads((small_case / "out" / "results.json").read_text())
    assert results["mode"] == "exact" and results["fast"]
    assert "`--fast` was given, but no fast mode both was shown equivalent" in (
        small_case / "out" / "report.md").read_text()


def test_study_command_fast_mode_says_no_benchmark_judged_it(small_case, no_figures,
                                                             fast_mnist):
    main(study_args(small_case, "--fast", "--limit", "40", "--competitors",
                    "input-space margin"))
    results = json.loads((small_case / "out" / "results.json").read_text())
    assert results["mode"] == fast_mnist and results["fast"]
    for key, value in ATTACK_MODES[fast_mnist].items():
        assert results["attack"][key] == value, key
    assert results["n_test"] == 40 and list(results["competitors"]) == ["input-space margin"]
    report = (small_case / "out" / "report.md").read_text()
    assert "No benchmark has judged this mode on this network and data" in report


def _write_image_folder(root, n_per_class, size=32, sizes=None):
    """Three classes of RGB PNG images: red, green and blue blobs on noise."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for label in range(3):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(n_per_class):
            side = size if sizes is None else sizes[i % len(sizes)]
            image = rng.randint(0, 90, (side, side, 3))
            image[side // 4: 3 * side // 4, side // 4: 3 * side // 4, label] = 230
            Image.fromarray(image.astype(np.uint8)).save(root / f"class{label}" / f"{i}.png")


def test_study_command_resnet18_on_an_image_folder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _write_image_folder(tmp_path / "images", 6)
    X, y, info = load_data(tmp_path / "images")
    assert isinstance(X, DatasetRows) and X.shape == (18, 3, 32, 32)  # read lazily
    assert info["classes"] == ["class0", "class1", "class2"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=3)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        images, labels = torch.from_numpy(X[:]), torch.from_numpy(y)
        for _ in range(8):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()
    torch.save({"state_dict": net.state_dict(), "epoch": 8}, tmp_path / "checkpoint.pt")
    out = tmp_path / "out"
    main(["study", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=3",
          "--weights", str(tmp_path / "checkpoint.pt"), "--data", str(tmp_path / "images"),
          "--clip", "0", "1", "--topk", "5", "--max-iter", "10", "--batch-size", "18",
          "--n-resamples", "10", "--competitors", "input-space margin", "--out", str(out),
          "--quiet"])
    results = json.loads((out / "results.json").read_text())
    with torch.no_grad():
        prediction = net.eval()(images).argmax(1).numpy()
    assert results["n_test"] == 18 and results["errors"]["count"] == np.sum(prediction != y)
    assert results["ranks"] == 2  # three classes: ranks 0 and 1 are all there is
    assert results["attack"]["clip"] == [0, 1]
    assert results["data"]["sample_shape"] == [3, 32, 32]
    assert (out / "report.md").exists() and (out / "histograms.png").exists()
    assert "3 classes" in (out / "report.md").read_text()


def test_study_command_image_size_resizes_and_crops(tmp_path):
    _write_image_folder(tmp_path / "images", 2, sizes=[40, 48])
    X, _, _ = load_data(tmp_path / "images", image_size=16, resize=20)
    assert X.shape == (6, 3, 16, 16) and X[[0, 5]].shape == (2, 3, 16, 16)
    assert X[1].dtype == np.float32 and 0 <= X[1].min() and X[1].max() <= 1


def test_study_command_gives_reproduce_s_numbers(fake_mnist_root, tmp_path, monkeypatch,
                                                 no_figures):
    # Two epochs instead of twenty, and the competitors above, in both commands.
    monkeypatch.setattr(reproduce, "reference_net", partial(reference_net, epochs=2))
    monkeypatch.setattr(reproduce, "measure", partial(measure, competitors=COMPETITORS))
    X_train, y_train, _, _ = load_dataset("mnist", fake_mnist_root)
    net, _ = reference_net(X_train, y_train, store=ResultStore(tmp_path / "reproduce-cache"),
                           seed=1, epochs=2, verbose=False)
    torch.save(net.module_.state_dict(), tmp_path / "cnn.pt")
    common = ["--root", str(fake_mnist_root), "--limit", "60", "--max-iter", "30",
              "--n-resamples", "20", "--seed", "1", "--quiet"]
    main(["reproduce", "--dataset", "mnist", "--cache", str(tmp_path / "reproduce-cache"),
          "--out", str(tmp_path / "reproduce"), *common])
    main(["study", "--model", "resistclf.models:SimpleCNN", "--weights",
          str(tmp_path / "cnn.pt"), "--dataset", "MNIST", "--topk", "5", "--competitors",
          *COMPETITORS, "--out", str(tmp_path / "study"), *common])
    ours, theirs = (json.loads((tmp_path / name / "results.json").read_text())
                    for name in ("study", "reproduce"))
    assert ours["n_test"] == theirs["n_test"] == 60 and ours["errors"]["count"] > 1
    assert ours["ranks"] == 3 and len(set(ours["separation"]["Res_N"].values())) == 2
    for key in ["errors", "flip_rate", "separation", "detection", "complementarity",
                "correction", "topk_error", "detect_then_correct"]:
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("args, message", [
    ({"--model": "torchvision"}, "package.module:function"),
    ({"--model": "no_such_package_xyz:make"}, "cannot import the module 'no_such_package_xyz'"),
    ({"--model": "tests.test_study_command:nothing"}, "has no attribute 'nothing'"),
    ({"--model": "tests.test_study_command:NOT_CALLABLE"}, r"is not callable \(it is a int"),
    ({"--model": "tests.test_study_command:make_tensor"}, "returned a Tensor, not a torch.nn"),
    ({"--model-arg": "depth=3"}, "could not be called with the arguments {'depth': 3}"),
    ({"--model-arg": "hidden=16"}, (r"do not fit the module .* 3 shape mismatches "
                                    r"\(1.weight 24x64 in the file, 16x64 in the module, ")),
    ({"--model": "resistclf.models:SimpleCNN"}, r"missing keys \(layers.0.weight"),
    ({"--weights": "missing.pt"}, "--weights missing.pt: no such file"),
    ({"--weights": "pickled.pt"}, r"cannot be read with torch.load\(weights_only=True\)"),
    ({"--weights": "numbers.pt"}, "neither a state dict"),
    ({"--data": "missing.npz"}, "--data missing.npz: no such file or folder"),
    ({"--data": "no_y.npz"}, "it has no array y"),
    ({"--data": "uint8.npz"}, "X holds uint8, not floats"),
    ({"--data": "small.npz"}, r"rejects the data: its samples have shape \(1, 4, 4\)"),
    ({"--data": "twelve.npz"}, r"labels outside the net's classes: \[12\]"),
    ({"--data": "mixed"}, "The images differ in size"),
    ({"--data": "nan.npz"}, "Sample 3 of the data holds NaN or infinite values"),
    ({"--data": "damaged"}, r"Cannot read the image .*class1.1\.png: "),
    ({"--image-size": "8"}, "--image-size applies to image folders"),
    ({"--preprocessing": '{"mean": [0.1, 0.2], "axis": -3}'}, "does not broadcast"),
    ({"--competitors": "FMN"}, r"--competitors: unknown \['FMN'\]"),
    ({"--device": "meta"}, "device='meta' holds no data"),
    ({"--data": None, "--dataset": "CIFAR10"}, "--dataset CIFAR10 needs --root"),
    ({"--data": None, "--dataset": "CIFAR10", "--root": "."},
     r"CIFAR10 \(test\) was not found under --root"),
    ({"--data": None, "--dataset": "MNIST", "--root": ".", "--split": "val"},
     r"MNIST has the splits \['train', 'test'\]"),
    ({"--data": None, "--dataset": "ImageNet", "--root": ".", "--download": True},
     "torchvision cannot download ImageNet"),
])
def test_study_command_bad_inputs_exit_with_a_message(small_case, capsys, args, message):
    folder = small_case
    X, y = trained_net()[1:]
    np.savez(folder / "no_y.npz", X=X)
    np.savez(folder / "uint8.npz", X=(255 * X).astype(np.uint8), y=y)
    np.savez(folder / "small.npz", X=X[:, :, :4, :4], y=y)
    np.savez(folder / "twelve.npz", X=X, y=np.where(np.arange(len(y)) == 3, 12, y))
    torch.save({"net": make_net()}, folder / "pickled.pt")
    torch.save({"epoch": 3}, folder / "numbers.pt")
    _write_image_folder(folder / "mixed", 2, sizes=[8, 10])
    np.savez(folder / "nan.npz", X=np.where(np.arange(len(X))[:, None, None, None] == 3,
                                            np.nan, X).astype(np.float32), y=y)
    _write_image_folder(folder / "damaged", 2, size=8)
    damaged = folder / "damaged" / "class1" / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:60])  # the header survives, the pixels do not
    argv = {"--model": "tests.test_study_command:make_net", "--weights": "net.pt",
            "--data": "digits.npz", **args}
    flat = ["study", "--quiet", "--out", "out"]
    for key, value in argv.items():
        if value is True:
            flat.append(key)
        elif value is not None:
            flat += [key, value]
    with pytest.raises(SystemExit) as exit_info:
        main(flat)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("resistclf study: error: ") and re.search(message, err), err
    assert not (folder / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--topk", "3"], "invalid choice: 3"),
    (["--model-arg", "num_classes"], "takes KEY=VALUE"),
    (["--preprocessing", "[0.5]"], "must be a JSON object"),
    (["--preprocessing", "{mean"], "must be a JSON object"),
    (["--step-size", "-1"], "must be a positive number"),
    (["--clip", "0"], "expected 2 arguments"),
    (["--max-iter", "0"], "must be a positive integer"),
    (["--dataset", "MNIST"], "not allowed with argument --data"),
])
def test_study_command_bad_arguments_exit_with_argparse_s_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--model", "m:f", "--data", "d.npz", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "resistclf study: error:" in err and message in err, err


def test_study_command_needs_a_model_and_data(capsys):
    for argv, missing in ([["--data", "d.npz"], "--model"],
                          [["--model", "m:f"], "one of the arguments --data --dataset"]):
        with pytest.raises(SystemExit):
            main(["study", *argv])
        assert missing in capsys.readouterr().err
