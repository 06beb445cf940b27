import json

import pytest

from resistclf.cli import main


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
