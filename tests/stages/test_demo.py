"""The demo end to end (quick): every stage runs, summary.json has its stable keys, the report exists."""

import json

import pytest

POLICY_KEYS = {"gold_reward", "mean_length", "distinct_2", "sycophancy_rate", "contrarian_rate"}


@pytest.mark.slow
def test_quick_demo_writes_summary_and_report(quick_demo):
    summary = json.loads((quick_demo / "summary.json").read_text())
    methods = summary["methods"]
    assert POLICY_KEYS <= set(methods["pretrained"])
    assert POLICY_KEYS | {"win_rate_vs_pretrained"} <= set(methods["sft"])
    assert {"accuracy_vs_gold", "panel_accuracy_vs_gold", "ece", "ece_calibrated", "temperature",
            "length_correlation"} <= set(methods["reward_model"])
    assert methods["reward_model"]["temperature"] > 0
    assert summary["intervals"] == {"unit": "prompt", "method": "bootstrap", "n_resamples": 2000,
                                    "confidence": 0.95, "seed": 0}
    for name, entry in methods.items():
        if name in ("pretrained", "sft", "reward_model"):
            continue
        assert POLICY_KEYS | {"win_rate_vs_sft", "kl_to_sft"} <= set(entry), name
    report = (quick_demo / "report.md").read_text()
    assert "| sft |" in report and "## Reward model" in report
    assert "bootstrap interval with the prompt as the unit" in report and "temperature scaling" in report
    low, high = methods["sft"]["win_rate_vs_pretrained_ci"]
    assert low <= methods["sft"]["win_rate_vs_pretrained"] <= high
    # each stage left a standard HF folder
    for stage in ("pretrain", "sft", "reward"):
        assert (quick_demo / stage / "final" / "config.json").exists()


@pytest.mark.slow
def test_ai_feedback_entries(quick_demo):
    methods = json.loads((quick_demo / "summary.json").read_text())["methods"]
    rlaif, cai = methods["rlaif"], methods["cai"]
    assert 0.0 <= rlaif["judge_agreement_with_gold"] <= 1.0 and -0.5 <= rlaif["judge_position_bias"] <= 0.5
    assert cai["revision_gold_gain"] == pytest.approx(cai["revision_gold"] - cai["initial_response_gold"])
    report = (quick_demo / "report.md").read_text()
    assert "## AI feedback" in report and "position bias" in report
    for stage in ("judge", "cai_helper", "sl_cai", "rlaif", "cai"):
        assert (quick_demo / stage / "final" / "config.json").exists(), stage
    prefs = [json.loads(line) for line in (quick_demo / "data" / "prefs_rlaif.jsonl").read_text().splitlines()]
    assert prefs and all(0.5 <= r["label_prob"] <= 1.0 and r["judge"] for r in prefs)
    # the judge labels a seeded subset of the panel's pairs (the quick demo's cap: 40 of about 60)
    panel = [json.loads(line) for line in (quick_demo / "data" / "prefs_pairs.jsonl").read_text().splitlines()]
    assert len(panel) > 40 and len(prefs) == rlaif["judge_labels"] == 40
    shown = {(r["prompt"], *sorted((r["chosen"], r["rejected"]))) for r in panel}
    assert {(r["prompt"], *sorted((r["chosen"], r["rejected"]))) for r in prefs} <= shown


@pytest.mark.slow
def test_sft_beats_the_pretrained_model_on_gold(quick_demo):
    methods = json.loads((quick_demo / "summary.json").read_text())["methods"]
    assert methods["sft"]["gold_reward"] > methods["pretrained"]["gold_reward"]
    assert methods["sft"]["win_rate_vs_pretrained"] > 0.5


@pytest.mark.slow
def test_reward_model_entry_is_measured_on_the_heldout_pairs(quick_demo):
    # The quick demo's reward model (2 layers, 60 labelled prompts, 10 steps) is too weak for a claim
    # about gold: its accuracy on ~47 pairs lands anywhere in 0.47-0.59 with the CPU and precision
    # (a "> 0.55" check was a coin flip). Learning is tested on a controlled task in
    # test_reward_model.py (accuracy >= 0.9) and shown by the full demo; here the summary's figures must
    # be what the saved model and the held-out file give when recomputed independently.
    from rlhfkit.data.records import load_records
    from rlhfkit.models.reward_model import load_scorer
    from rlhfkit.tasks import FactsTask

    entry = json.loads((quick_demo / "summary.json").read_text())["methods"]["reward_model"]
    held = load_records(quick_demo / "data" / "prefs_heldout.jsonl", "pairwise").records
    assert entry["heldout_pairs"] == len(held) >= 15
    scorer = load_scorer(quick_demo / "reward" / "final")
    prompts = [r["prompt"] for r in held]
    margin = scorer.score(prompts, [r["chosen"] for r in held]) - scorer.score(prompts, [r["rejected"] for r in held])
    agree = sum((m > 0) == r["gold_prefers_chosen"] for m, r in zip(margin.tolist(), held))
    assert entry["accuracy_vs_gold"] == pytest.approx(agree / len(held))
    # "chosen" is the panel's majority, so its agreement with gold is the share where gold prefers chosen
    assert entry["panel_accuracy_vs_gold"] == pytest.approx(sum(r["gold_prefers_chosen"] for r in held) / len(held))
    expected = [r["panel_majority_prob_gold"] for r in held]
    assert all(0.0 <= p <= 1.0 for p in expected)
    assert entry["panel_accuracy_vs_gold_expected"] == pytest.approx(sum(expected) / len(held))
    assert 0.5 <= entry["panel_accuracy_vs_gold_expected"] <= 1.0  # a panel better than chance on average
    # the split by what gold separates a pair by: recomputed from the task's gold terms, and it adds up
    task = FactsTask.from_dict(json.loads((quick_demo / "task.json").read_text()))
    by_correctness = [task.gold_attributes(r["prompt"], r["chosen"])["correct"]
                      != task.gold_attributes(r["prompt"], r["rejected"])["correct"] for r in held]
    right = [(m > 0) == r["gold_prefers_chosen"] for m, r in zip(margin.tolist(), held)]
    split = entry["accuracy_vs_gold_by_separation"]
    for name, wanted in (("correctness", True), ("style", False)):
        oks = [ok for ok, c in zip(right, by_correctness) if c == wanted]
        assert split.get(name) == (pytest.approx(sum(oks) / len(oks)) if oks else None)
    # the panel's mean preference: by hand from each annotator's Bradley–Terry probability
    mean_right = 0
    for r in held:
        better, worse = (r["chosen"], r["rejected"]) if r["gold_prefers_chosen"] else (r["rejected"], r["chosen"])
        probs = [a.prob_prefers(r["prompt"], better, worse) for a in task.panel]
        mean_right += sum(probs) / len(probs) > 0.5
    assert entry["panel_mean_accuracy_vs_gold"] == pytest.approx(mean_right / len(held))


@pytest.mark.slow
def test_demo_stages_are_cached(quick_demo, tmp_path):
    import shutil

    from rlhfkit.cli import main

    run = shutil.copytree(quick_demo, tmp_path / "run")  # a copy: the session's demo folder stays as made
    before = (run / "sft" / "final" / "model.safetensors").stat().st_mtime
    assert main(["demo", "--quick", "--output-dir", str(run), "methods=[reward]"]) == 0
    assert (run / "sft" / "final" / "model.safetensors").stat().st_mtime == before


@pytest.mark.slow
def test_labelling_says_what_it_does_and_is_reproducible(quick_demo, tmp_path, capsys):
    import shutil

    from rlhfkit.cli import main

    run = shutil.copytree(quick_demo, tmp_path / "run")
    made = {name: (run / "data" / name).read_text() for name in ("prefs_all.jsonl", "prefs_heldout.jsonl")}
    for name in made:
        (run / "data" / name).unlink()
    shutil.rmtree(run / "reward")
    capsys.readouterr()
    assert main(["demo", "--quick", "--output-dir", str(run), "methods=[reward]"]) == 0
    out = capsys.readouterr().out
    # the silent minute of sampling and voting now has a line before and one after
    assert "[labels] sampling 2 SFT responses for each of 30 pair prompts, 4 for each of 30 ranking prompts" in out
    held = (run / "data" / "prefs_heldout.jsonl").read_text()
    records = [json.loads(line) for line in (run / "data" / "prefs_all.jsonl").read_text().splitlines()]
    pairs = sum("chosen" in r for r in records)
    assert f"[labels] {pairs} voted pairs, {len(records) - pairs} rankings, {len(held.splitlines())} held-out pairs" in out
    # the same seed gives the same samples and votes
    assert {name: (run / "data" / name).read_text() for name in made} == made


@pytest.mark.slow
def test_seeds_retrain_the_methods_on_other_training_seeds(quick_demo, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from rlhfkit.cli import main

    run = shutil.copytree(quick_demo, tmp_path / "run")  # a copy: the session's demo folder stays as made
    assert main(["demo", "--quick", "--output-dir", str(run), "--seeds", "0,1", "methods=[dpo,grpo]"]) == 0
    result = json.loads((run / "seeds.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert set(result) == {"dpo", "grpo"} and summary["seeds"] == result
    for name, r in result.items():
        assert r["seeds"] == [0, 1]
        # the run's own seed is the run's own entry; seed 1 trained into seeds/1/<name>
        assert r["per_seed"]["0"]["win_rate_vs_sft"] == summary["methods"][name]["win_rate_vs_sft"]
        assert (run / "seeds" / "1" / name / "final" / "config.json").exists()
        rates = [r["per_seed"][s]["win_rate_vs_sft"] for s in ("0", "1")]
        assert r["win_rate_vs_sft_mean"] == pytest.approx(sum(rates) / 2)
        assert (run / "eval" / f"{name}@seed1.samples.json").exists()
    assert not (run / "seeds" / "0").exists()
    # another training seed is another run: the weights differ
    a = load_file(str(run / "dpo" / "final" / "model.safetensors"))
    b = load_file(str(run / "seeds" / "1" / "dpo" / "final" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert "## Across training seeds" in (run / "report.md").read_text()


@pytest.mark.slow
def test_opt_in_ppo_reward_variants(quick_demo, tmp_path):
    import shutil

    from rlhfkit.cli import main
    from rlhfkit.models.reward_model import load_scorer, read_temperature

    run = shutil.copytree(quick_demo, tmp_path / "run")  # a copy: the session's demo folder stays as made
    assert main(["demo", "--quick", "--output-dir", str(run), "methods=[ppo_calibrated,ppo_ensemble]"]) == 0
    methods = json.loads((run / "summary.json").read_text())["methods"]
    ensemble = load_scorer(run / "reward_ensemble" / "final")
    assert ensemble.ensemble_size == 3 and methods["reward_ensemble"]["ensemble_size"] == 3
    assert "ensemble mean − 1·std" in methods["ppo_ensemble"]["variant"]
    assert methods["ppo_calibrated"]["variant"].endswith("reward / T, loss_aggregation=token_mean")
    for name in ("ppo_calibrated", "ppo_ensemble"):
        assert POLICY_KEYS | {"win_rate_vs_sft", "kl_to_sft"} <= set(methods[name]), name
    # each run recorded the reward it optimised
    import yaml

    calibrated = yaml.safe_load((run / "ppo_calibrated" / "config.yaml").read_text())["reward"]
    assert calibrated["calibrated"] is True and calibrated["model"] == str(run / "reward" / "final")
    assert read_temperature(run / "reward" / "final") > 0
    on_ensemble = yaml.safe_load((run / "ppo_ensemble" / "config.yaml").read_text())["reward"]
    assert on_ensemble["model"] == str(run / "reward_ensemble" / "final") and on_ensemble["ensemble_std_coef"] == 1.0
    assert "## Reward-model ensemble" in (run / "report.md").read_text()


def test_opt_in_methods_are_left_out_of_all():
    from rlhfkit.demo.context import DemoConfig

    everything = DemoConfig()
    assert everything.wants("ppo") and everything.wants("reward")
    assert not any(everything.wants(n) for n in ("reward_ensemble", "ppo_calibrated", "ppo_ensemble"))
    chosen = DemoConfig(methods=["ppo_ensemble"])
    assert chosen.wants("ppo_ensemble") and not chosen.wants("ppo") and not chosen.wants("ppo_calibrated")


def test_seed_aggregate_by_hand():
    from rlhfkit.demo.seeds import aggregate

    entries = {0: {"win_rate_vs_sft": 0.6, "win_rate_vs_sft_ci": [0.52, 0.68]},
               1: {"win_rate_vs_sft": 0.7, "win_rate_vs_sft_ci": [0.62, 0.78]},
               2: {"win_rate_vs_sft": 0.8, "win_rate_vs_sft_ci": [0.49, 0.9]}}
    r = aggregate(entries)
    # mean (0.6 + 0.7 + 0.8) / 3 = 0.7; sample std sqrt((0.1² + 0 + 0.1²) / 2) = 0.1
    assert r["win_rate_vs_sft_mean"] == pytest.approx(0.7)
    assert r["win_rate_vs_sft_std"] == pytest.approx(0.1)
    assert (r["win_rate_vs_sft_min"], r["win_rate_vs_sft_max"]) == (0.6, 0.8)
    assert r["all_above_half"] is False  # seed 2's interval starts at 0.49
    entries[2]["win_rate_vs_sft_ci"] = [0.51, 0.9]
    assert aggregate(entries)["all_above_half"] is True
    assert aggregate({3: entries[0]})["win_rate_vs_sft_std"] == 0.0  # one seed: no spread


def test_expected_majority_of_the_panel_by_hand():
    from rlhfkit.demo.steps.labels_and_reward_model import majority_prob

    class Fixed:
        def __init__(self, p):
            self.p = p

        def prob_prefers(self, prompt, a, b):
            return self.p

    # three voters of 0.9: P(at least 2 of 3) = 3 · 0.9² · 0.1 + 0.9³ = 0.243 + 0.729 = 0.972
    assert majority_prob([Fixed(0.9)] * 3, "p", "a", "b") == pytest.approx(0.972)
    # voters (1, 1, 0): the two sure ones always win
    assert majority_prob([Fixed(1.0), Fixed(1.0), Fixed(0.0)], "p", "a", "b") == pytest.approx(1.0)
    # four annotators (1, 1, 0, 0), three drawn: the 4 draws hold two 1s in 2 of them (majority for a)
    # and one 1 in the other 2 (majority for b) → 2/4 = 0.5
    assert majority_prob([Fixed(1.0), Fixed(1.0), Fixed(0.0), Fixed(0.0)], "p", "a", "b") == pytest.approx(0.5)


def test_every_step_module_runs_in_the_pipeline():
    # the pipeline lists its steps explicitly; a step module it does not list would never run
    import pkgutil

    from rlhfkit.demo import pipeline, steps

    listed = {step.__name__ for step in pipeline.METHOD_STEPS} | {pipeline.labels_and_reward_model.__name__,
                                                                 pipeline.limitations.__name__}
    found = {f"{steps.__name__}.{m.name}" for m in pkgutil.iter_modules(steps.__path__)}
    assert listed == found
    for step in pipeline.METHOD_STEPS:
        assert step.NAMES and callable(step.run), step.__name__
