"""Reward model: end to end on the tiny model, normalisation, ensembles, the scoring API."""

import json
import math
import random

import pytest
import torch

from rlhfkit.models.reward_model import RewardScorer, load_reward_model, load_scorer
from rlhfkit.train.reward_model import RewardConfig, run_reward
from rlhfkit.train.sft import OptimConfig

NAMES = ["dax", "wug", "zorp", "fep", "blick", "toma"]


def preference_rows(n, seed):
    """Chosen answers say 'red', rejected ones 'blue': a learnable preference."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = rng.choice(NAMES)
        prompt = f"User: what color is the {name}?\nAssistant:"
        if i % 3 == 2:  # a K=3 ranking every third record
            rows.append({"prompt": prompt, "responses": [f" the {name} is blue.", f" the {name} is red.",
                                                         " it is blue, i think."], "ranking": [1, [0, 2]]})
        else:
            rows.append({"prompt": prompt, "chosen": f" the {name} is red.", "rejected": f" the {name} is blue.",
                         "annotator": rng.choice(["ann-a", "ann-b"])})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), batch_size=8, max_length=48, max_steps=40,
                optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0), eval_fraction=0.2, log_every=5,
                save_every=0, progress=False, ties="soft")
    base.update(kw)
    return RewardConfig(**base)


@pytest.mark.slow
def test_reward_model_learns_and_is_normalised(tiny_model_dir, tmp_path):
    data = write(tmp_path / "prefs.jsonl", preference_rows(90, seed=0))
    reference = write(tmp_path / "demos.jsonl", [{"prompt": f"User: what color is the {n}?\nAssistant:",
                                                  "completion": f" the {n} is red."} for n in NAMES])
    final = run_reward(config(tiny_model_dir, data, tmp_path / "rm", reference_data=str(reference)))
    report = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert report["accuracy"] >= 0.9, report
    assert set(report["accuracy_per_annotator"]) == {"ann-a", "ann-b"}
    assert 0.0 <= report["ece"] <= 1.0 and 0.0 <= report["ece_calibrated"] <= 1.0
    # the temperature fitted on the held-out pairs is stored with the model
    assert load_scorer(final).temperature == pytest.approx(report["temperature"]) and report["temperature"] > 0

    # plain transformers loads it; the stored bias puts the reference set (chosen answers) at mean 0
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert plain.config.num_labels == 1 and "rlhfkit_reward_bias" in plain.config.to_dict()
    scorer = load_scorer(final)
    ref = scorer.score([f"User: what color is the {n}?\nAssistant:" for n in NAMES], [f" the {n} is red." for n in NAMES])
    assert abs(float(ref.mean())) < 1e-5
    good = scorer.score(["User: what color is the dax?\nAssistant:"], [" the dax is red."])
    bad = scorer.score(["User: what color is the dax?\nAssistant:"], [" the dax is blue."])
    assert float(good) > float(bad)


def test_ensemble_std_is_zero_for_identical_members(tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(0)
    member = load_reward_model(tiny_model_dir)
    scorer = RewardScorer([member, member, member], tiny_tokenizer, max_length=48, biases=[0.0, 0.0, 0.0])
    prompts = ["User: hi\nAssistant:"] * 3
    mean, std = scorer.score_with_std(prompts, [" a", " the dax is red.", " no"])
    assert torch.equal(std, torch.zeros(3))
    single = RewardScorer([member], tiny_tokenizer, max_length=48, biases=[0.0]).score(prompts, [" a", " the dax is red.", " no"])
    assert torch.allclose(mean, single)


def test_score_lands_on_the_last_real_token(tiny_model_dir, tiny_tokenizer):
    # the same sequence scores the same whether it is padded in a batch with a longer one or alone
    model = load_reward_model(tiny_model_dir)
    scorer = RewardScorer([model], tiny_tokenizer, max_length=64, biases=[0.0], batch_size=8)
    alone = scorer.score(["User: hi\nAssistant:"], [" red"])
    batched = scorer.score(["User: hi\nAssistant:", "User: hi\nAssistant:"], [" red", " the dax is red and blue and green."])
    assert torch.allclose(alone, batched[:1], atol=1e-5)


@pytest.mark.slow
def test_ensemble_trains_members_with_different_seeds(tiny_model_dir, tmp_path):
    data = write(tmp_path / "prefs.jsonl", preference_rows(40, seed=1))
    final = run_reward(config(tiny_model_dir, data, tmp_path / "ens", ensemble_size=2, max_steps=5))
    assert json.loads((final / "ensemble.json").read_text())["members"] == ["member-0", "member-1"]
    scorer = load_scorer(final)
    mean, std = scorer.score_with_std(["User: what color is the dax?\nAssistant:"], [" the dax is red."])
    assert scorer.ensemble_size == 2 and float(std) > 0


def test_bad_preference_input_names_the_line(tiny_model_dir, tmp_path):
    from rlhfkit.data.records import DataError

    rows = preference_rows(4, seed=0)
    rows[2] = {"prompt": "p", "chosen": "x", "rejected": "y", "label_prob": 0.7, "margin": 1.0}
    data = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad.jsonl:3: field 'margin'"):
        run_reward(config(tiny_model_dir, data, tmp_path / "bad", eval_fraction=0.0))


class TableScorer:
    """score() from a table of response -> reward: evaluate_reward tested apart from a model."""

    def __init__(self, rewards):
        self.rewards = rewards

    def score(self, prompts, responses):
        return torch.tensor([self.rewards[r] for r in responses], dtype=torch.float64)


def calibrated_groups(n, *, temperature=1.0, sd=0.7, seed=0):
    """Pairs (a_i, b_i) with rewards ~ N(0, sd), so r_a - r_b ~ N(0, 2 sd²); annotators prefer a with
    P = σ((r_a - r_b) / T), and the record stores the preferred one first with label 1, as encode_groups does."""
    from rlhfkit.evaluate.metrics import sigmoid
    from rlhfkit.train.reward_model import Group

    rng = random.Random(seed)
    rewards, groups = {}, []
    for i in range(n):
        a, b = f"a{i}", f"b{i}"
        rewards[a], rewards[b] = rng.gauss(0.0, sd), rng.gauss(0.0, sd)
        chosen, rejected = (a, b) if rng.random() < sigmoid((rewards[a] - rewards[b]) / temperature) else (b, a)
        groups.append(Group(seqs=[[], []], pairs=[(0, 1, 1.0)], margin=None, prompt="p", responses=[chosen, rejected]))
    return TableScorer(rewards), groups


def test_evaluate_reward_ece_of_a_calibrated_model_is_near_zero():
    # Regression (issue 11): chosen-first pairs made every label 1, so "ece" was 1 - mean σ(r_c - r_r),
    # 0.41 here for a perfectly calibrated model. Counted in both orders it is ~0, and T fits ~1.
    from rlhfkit.train.reward_model import evaluate_reward

    scorer, groups = calibrated_groups(10000, seed=0)
    report = evaluate_reward(scorer, groups)
    assert report["pairs"] == 10000
    assert report["ece"] < 0.02 and report["ece_calibrated"] < 0.02
    assert report["temperature"] == pytest.approx(1.0, abs=0.1)


def test_evaluate_reward_fits_the_temperature_of_an_overconfident_model():
    # annotators prefer with σ(Δr / 2): σ(Δr) is overconfident; T ≈ 2 and scaling removes most of the ECE
    from rlhfkit.train.reward_model import evaluate_reward

    scorer, groups = calibrated_groups(6000, temperature=2.0, sd=1.5, seed=1)
    report = evaluate_reward(scorer, groups)
    assert report["temperature"] == pytest.approx(2.0, abs=0.3)
    assert report["ece"] > 0.08 and report["ece_calibrated"] < 0.03


def test_evaluate_reward_uses_soft_labels_by_hand():
    from rlhfkit.train.reward_model import Group, evaluate_reward

    # one pair, margin ln 3 -> σ = 0.75, label_prob 2/3 (two of three voters): counted both ways,
    # (0.75, 2/3) and (0.25, 1/3) each off by 0.75 - 2/3 = 1/12 -> ECE 0.083333
    scorer = TableScorer({"x": math.log(3.0), "y": 0.0, "t1": 0.0, "t2": 1.0})
    groups = [Group([[], []], [(0, 1, 2 / 3)], None, "p", ["x", "y"], annotator=["ann-a", "ann-b", "ann-c"]),
              Group([[], []], [(0, 1, 0.5)], None, "p", ["t1", "t2"])]  # a tie: neither scored nor calibrated
    report = evaluate_reward(scorer, groups)
    assert report["pairs"] == 1 and report["accuracy"] == 1.0
    assert report["ece"] == pytest.approx(1 / 12)
    # T fitted on that one pair: σ(ln 3 / T) = 2/3 -> ln 3 / T = ln 2 -> T = ln 3 / ln 2 = 1.584963
    assert report["temperature"] == pytest.approx(math.log(3.0) / math.log(2.0), rel=1e-4)
    # cross-fitted: the pair (group 0, fold 0) gets the T of fold 1, which has no decisive pair: T = 1
    assert report["ece_calibrated"] == pytest.approx(1 / 12)


def test_temperature_is_stored_and_changes_only_calibrated_probabilities(tiny_model_dir, tiny_tokenizer, tmp_path):
    import shutil

    from rlhfkit.models.reward_model import TEMPERATURE_KEY, read_temperature, write_temperature

    folder = tmp_path / "rm"  # a reward model folder: its score head is saved, so every load scores alike
    load_reward_model(tiny_model_dir).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert read_temperature(folder) == 1.0  # no key: T = 1
    before = load_scorer(folder)
    write_temperature(folder, 2.5)
    assert json.loads((folder / "config.json").read_text())[TEMPERATURE_KEY] == 2.5
    scorer = load_scorer(folder)
    assert scorer.temperature == 2.5 and before.temperature == 1.0
    prompts = ["User: hi\nAssistant:"] * 2
    a, b = [" the dax is red.", " no"], [" no", " the dax is red."]
    raw_a, raw_b = scorer.score(prompts, a), scorer.score(prompts, b)
    assert torch.allclose(raw_a, before.score(prompts, a))  # raw rewards (what PPO optimises) are unchanged
    assert torch.allclose(scorer.prefer_prob(prompts, a, b), torch.sigmoid((raw_a - raw_b) / 2.5), atol=1e-6)
    assert torch.allclose(before.prefer_prob(prompts, a, b), torch.sigmoid(raw_a - raw_b), atol=1e-6)
    # an ensemble keeps its temperature in ensemble.json: it calibrates the members' mean
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    shutil.copytree(folder, ensemble / "member-0")
    (ensemble / "ensemble.json").write_text(json.dumps({"members": ["member-0"]}))
    write_temperature(ensemble, 0.5)
    assert read_temperature(ensemble) == 0.5 and load_scorer(ensemble).temperature == 0.5
    with pytest.raises(ValueError):
        write_temperature(folder, 0.0)
