"""Reward model: end to end on the tiny model, normalisation, ensembles, the scoring API."""

import json
import random

import pytest
import torch

from rlhfkit.models.reward import RewardScorer, load_reward_model, load_scorer
from rlhfkit.train.reward import RewardConfig, run_reward
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
    assert 0.0 <= report["ece"] <= 1.0

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
