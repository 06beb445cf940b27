import json

import torch

from resistclf.cli import main
from resistclf.models import SimpleCNN
from resistclf.reports.bench import agreement, flops_per_image_step


def test_bench_writes_tables_and_json(tmp_path, capsys):
    main(["bench", "--steps", "2", "--batch-sizes", "16", "32", "--out", str(tmp_path),
          "--quiet"])
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [row["batch_size"] for row in results["throughput"]] == [16, 32] * 4
    assert {row["layout"] for row in results["throughput"]} == {"contiguous", "channels last"}
    for row in results["throughput"]:
        assert row["image_steps_per_s"] > 0 and 0 < row["share_of_peak"] < 1
        assert row["peak_memory_bytes"] > 0
    assert results["alternatives"]["speedup_over_naive"] > 1
    assert results["auto_batch_size"]["chosen"] >= 16
    assert "share of peak" in capsys.readouterr().out
    assert (tmp_path / "bench.md").exists()


def test_bench_flops_count_forward_and_input_gradient():
    module = SimpleCNN()
    x = torch.rand(4, 1, 28, 28)
    # The input-gradient pass costs about what the forward pass does, minus the
    # first convolution's input gradient being cheap: between 1.5x and 2.5x.
    forward_only = sum(
        2 * m.weight.numel() * (28 * 28 if i == 0 else 14 * 14)
        for i, m in enumerate(m for m in module.modules() if isinstance(m, torch.nn.Conv2d)))
    assert 1.5 * forward_only < flops_per_image_step(module, x, "float32") < 3 * forward_only


def test_bench_agreement_fractions():
    exact = {"res_n": torch.tensor([1.0, 2.0, 4.0]).numpy(), "res_max": torch.ones(3).numpy(),
             "res_min": torch.tensor([3, 4, 5]).numpy(),
             "adversarial_class": torch.tensor([1, 2, 3]).numpy()}
    fast = {**exact, "res_n": exact["res_n"] * [1.005, 1.015, 1.5],
            "res_min": torch.tensor([3, 4, 6]).numpy()}
    result = agreement(fast, exact)
    assert result["res_n_within_1pct"] == 1 / 3 and result["res_n_within_2pct"] == 2 / 3
    assert result["res_min_identical"] == 2 / 3 and result["adversarial_class_identical"] == 1
