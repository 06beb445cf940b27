import json
from importlib import import_module
from pathlib import Path

import pytest

from resistclf.cli import main
from resistclf.reports._reference import ATTACK_MODES, FAST_MODES


def test_cli_demo_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "demo.json"
    main(["demo", "--max-iter", "40", "--seed", "1", "--json", str(path), "--quiet"])
    out = capsys.readouterr().out
    for row in ["Net top-1 accuracy", "Error-detection AUROC, Res_N", "max-softmax",
                "softmax 2nd choice", "Top-1 accuracy", "softmax top-2"]:
        assert row in out
    results = json.loads(path.read_text())
    assert results["seed"] == 1 and results["max_iter"] == 40
    assert set(results["auroc"]) == {"res_n", "res_max", "res_min", "detector", "max_softmax"}
    assert results["net_errors"] == round((1 - results["net_accuracy"]) * results["n_test"])
    assert 0.8 < results["net_accuracy"] <= 1


@pytest.mark.parametrize("argv", [["demo", "--max-iter", "0"], ["demo", "--seed", "x"], ["nope"]])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (["--out", "{file}"], "exists and is not a folder"),
    (["--out", "{file}/sub"], "cannot be created"),
    (["--root", "{tmp}/nonexistent"], "is not a folder: it must hold the data set's files"),
])
def test_cli_checks_out_and_root_before_any_work(extra, match, tmp_path, capsys, monkeypatch):
    file = tmp_path / "taken"
    file.write_text("a file")
    argv = ["shift", "--dataset", "mnist", "--root", str(tmp_path), "--out",
            str(tmp_path / "report")]
    argv += [part.format(file=file, tmp=tmp_path) for part in extra]
    monkeypatch.setattr("resistclf.reports.shift.main",
                        lambda args: pytest.fail("ran the command"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("command", ["reproduce", "adversarial", "dynamics", "compare",
                                     "shift"])
def test_cli_study_commands_pass_the_attack_options(command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    module = import_module(f"resistclf.reports.{command}")
    seen = {}
    monkeypatch.setattr(module, f"run_{command}", lambda *args, **kwargs: seen.update(kwargs))
    if command == "adversarial":
        monkeypatch.setattr(module, "import_torchattacks", lambda: None)
    main([command, "--dataset", "mnist", "--root", "data", "--fast", "--n-jobs", "3",
          "--scheduler", "tcp://scheduler:8786", "--quiet"])
    assert (seen["fast"], seen["n_jobs"], seen["scheduler"]) == (True, 3,
                                                                 "tcp://scheduler:8786")
    seen.clear()
    main([command, "--dataset", "mnist", "--root", "data", "--quiet"])
    assert (seen["fast"], seen["n_jobs"], seen["scheduler"]) == (False, None, None)
    main([command, "--dataset", "mnist", "--root", "data", "--cache", "shared", "--quiet"])
    assert seen["cache"] == "shared"


def test_cli_knows_every_corruption():
    from resistclf.cli import CORRUPTION_NAMES
    from resistclf.datasets import CORRUPTIONS

    assert CORRUPTION_NAMES == CORRUPTIONS


def test_cli_fast_mode_is_the_one_the_committed_benchmark_found():
    # --fast must use the mode the benchmark showed equivalent by TOST, not a guess.
    from resistclf.reports.bench import fastest_equivalent_modes

    bench = Path(__file__).parents[1] / "docs" / "results" / "bench" / "bench.json"
    assert fastest_equivalent_modes(json.loads(bench.read_text())["modes"]) == FAST_MODES
    assert set(FAST_MODES.values()) <= set(ATTACK_MODES)
