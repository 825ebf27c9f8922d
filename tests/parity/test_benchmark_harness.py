"""The benchmark harness (benchmarks/run.py): its arithmetic by hand, and a smoke run that checks both
sides do the same work — equal step-1 losses — never a speed.

The smoke run (2 steps, 1 repeat, sft + dpo, a ~100k-parameter Llama; four fresh processes, well
under a minute) is marked ``slow`` and skipped without TRL (the ``bench`` extra).
"""

import math

import pytest

from benchmarks import report
from benchmarks.gemm_peak import matmul_flops
from benchmarks.workload import BenchSpec

# ---------------------------------------------------------------------------- arithmetic


def _result(loop_s, user_s, grad=0, no_grad=0):
    return {"loop_s": loop_s, "user_s": user_s, "loop_tokens": {"grad": grad, "no_grad": no_grad},
            "peak_rss_mb": 500.0, "step1_loss": 0.5}


def test_samples_per_s_by_hand():
    r = _result(loop_s=2.0, user_s=10.0)
    # loop: steps 2..20 = 19 steps × 8 samples in 2 s = 76 /s ; user: 20 × 8 / 10 s = 16 /s
    assert report.samples_per_s(r, batch_size=8, steps=20, column="loop") == pytest.approx(76.0)
    assert report.samples_per_s(r, batch_size=8, steps=20, column="user") == pytest.approx(16.0)
    with pytest.raises(ValueError, match="loop"):
        report.samples_per_s(r, batch_size=8, steps=20, column="wall")


def test_model_flops_and_mfu_by_hand():
    # 1000 tokens with gradients × 6 × 5e6 = 3e10 ; 500 without × 2 × 5e6 = 5e9 ; total 3.5e10
    assert report.model_flops({"grad": 1000, "no_grad": 500}, 5_000_000) == pytest.approx(3.5e10)
    # 3.5e10 FLOPs in 1 s against a 70 GFLOP/s peak = 50 %
    r = _result(loop_s=1.0, user_s=2.0, grad=1000, no_grad=500)
    assert report.mfu(r, n_params=5_000_000, peak_gflops=70.0) == pytest.approx(0.5)
    # (n × n) @ (n × n): n² outputs × n multiply-adds = 2n³ ; n = 10 → 2000
    assert matmul_flops(10) == 2000


def test_step_mfu_by_hand():
    # step 2: 100 tokens with gradients × 6 × 1e6 = 6e8 FLOPs in 0.01 s = 60 GFLOP/s of a 120 peak → 50 %
    # step 3: 50 tokens × 6e6 + 100 tokens without gradients × 2e6 = 5e8 in 0.02 s = 25 GFLOP/s → 20.8 %
    r = {"step_tokens": [{"grad": 100, "no_grad": 0}, {"grad": 50, "no_grad": 100}], "step_s": [0.01, 0.02]}
    assert report.step_mfu(r, n_params=1_000_000, peak_gflops=120.0) == pytest.approx([0.5, 25 / 120])


def test_median_ratio_pairs_repeats():
    # ratios 2/1 = 2, 3/2 = 1.5, 1/1 = 1 → median 1.5 (not the ratio of medians 2/1 = 2)
    assert report.median_ratio([2.0, 3.0, 1.0], [1.0, 2.0, 1.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="paired"):
        report.median_ratio([1.0], [1.0, 2.0])


def test_summary_and_table():
    runs = {"rlhfkit": [_result(1.0, 4.0, grad=100), _result(2.0, 5.0, grad=100)],
            "trl": [_result(2.0, 4.0, grad=100), _result(2.0, 10.0, grad=100)]}
    s = report.summarise("sft", runs, batch_size=8, steps=3, n_params={"rlhfkit": 10, "trl": 10}, peak_gflops=1.0)
    # loop samples/s: 16 / t → rlhfkit 16, 8 ; TRL 8, 8 → ratios 2, 1 → median 1.5
    assert s["ratio"] == pytest.approx(1.5)
    # user samples/s: 24 / t → rlhfkit 6, 4.8 ; TRL 6, 2.4 → ratios 1, 2 → median 1.5
    assert s["ratio_user"] == pytest.approx(1.5)
    assert s["rlhfkit"]["samples_per_s"] == pytest.approx(12.0)  # median of 16 and 8
    assert s["step1_loss_diff"] == 0.0
    header = {"cpu": "test cpu", "avx512_bf16": "no", "amx": "no", "threads": 1, "peak_gflops": 1.0,
              "n_params": 10, "steps": 3, "batch_size": 8, "repeats": 2}
    table = report.markdown(header, [s])
    assert "| sft | 12.00 | 8.00 | 1.50× | 1.50× |" in table
    assert "WARNING" not in table


def test_table_warns_when_the_work_is_not_matched():
    runs = {"rlhfkit": [{**_result(1.0, 2.0), "unmatched": ["optim.adam_betas"]}], "trl": [_result(1.0, 2.0)]}
    s = report.summarise("dpo", runs, batch_size=8, steps=3, n_params={"rlhfkit": 1, "trl": 1}, peak_gflops=1.0)
    header = {"cpu": "c", "avx512_bf16": "no", "amx": "no", "threads": 1, "peak_gflops": 1.0, "n_params": 1,
              "steps": 3, "batch_size": 8, "repeats": 1}
    assert "do NOT do the same work" in report.markdown(header, [s])


# ---------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_harness_runs_both_sides_on_the_same_work(tmp_path):
    pytest.importorskip("trl")
    from benchmarks.run import benchmark

    spec = BenchSpec(steps=2, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1)
    results = benchmark(["sft", "dpo"], spec, repeats=1, threads=1, cache=tmp_path / "cache", gemm_sizes=(256,),
                        log=lambda _: None)
    assert results["errors"] == [], results["errors"]
    assert results["header"]["peak_gflops"] > 0 and results["header"]["threads"] == 1
    for algo in ("sft", "dpo"):
        for side in ("rlhfkit", "trl"):
            (run,) = results["raw"][algo][side]
            assert run["unmatched"] == []
            assert len(run["step_s"]) == spec.steps - 1  # the optimiser-step hook saw every step
            assert 0 < run["loop_s"] < run["user_s"]
            assert run["peak_rss_mb"] > 50
            assert run["loop_tokens"]["grad"] > 0
            assert sum(t["grad"] for t in run["step_tokens"]) == run["loop_tokens"]["grad"]
        summary = next(s for s in results["summaries"] if s["algo"] == algo)
        a, b = summary["rlhfkit"]["step1_loss"], summary["trl"]["step1_loss"]
        assert math.isfinite(a) and math.isfinite(b)
        assert abs(a - b) <= 1e-5, f"{algo}: step-1 loss rlhfkit {a} vs TRL {b} (not the same work)"
    # SFT's first loss is the untrained model's cross-entropy: near log(vocab) = log(512) ≈ 6.24
    assert abs(results["summaries"][0]["rlhfkit"]["step1_loss"] - math.log(512)) < 1.0
    # DPO's first loss with policy = reference is -log σ(0) = log 2
    assert results["summaries"][1]["trl"]["step1_loss"] == pytest.approx(math.log(2), abs=1e-5)
