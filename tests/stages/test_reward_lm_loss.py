"""The reward model's text-generation regulariser (GRM, Yang et al. 2024): which tokens it covers, that
it is exactly the causal LM's loss on them, where its LM head comes from, and a run that logs it."""

import json

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.rankings import expand_ranking
from rlhfkit.models.reward_model import frozen_lm_head, load_reward_model
from rlhfkit.train.reward_model import Group, RewardConfig, group_loss, run_reward
from rlhfkit.train.reward_passes import completion_select
from rlhfkit.train.sft import OptimConfig


def group(pairs, n):
    return Group(seqs=[[1, 2, 3]] * n, pairs=pairs, margin=None, prompt="p", responses=["r"] * n, prompt_lens=[2] * n)


def test_preferred_responses_by_hand():
    assert group([(0, 1, 1.0)], 2).preferred() == [0]  # a pair: its chosen one
    assert group([(0, 1, 2 / 3)], 2).preferred() == [0]  # a soft label above 1/2: still the chosen one
    assert group([(0, 1, 0.25)], 2).preferred() == [1]  # the panel preferred "rejected"
    assert group([(0, 1, 0.5)], 2).preferred() == []  # a tie prefers nobody
    # ranking 2 > 0 > 1: pairs (2,0), (2,1), (0,1); 0 wins one but loses one
    assert group(expand_ranking([2, 0, 1], 3), 3).preferred() == [2]
    # a tied top [0, 2] > 1 (ties skipped): both top responses, neither loses a decisive comparison
    assert group(expand_ranking([[0, 2], 1], 3, ties="skip"), 3).preferred() == [0, 2]


def test_completion_select_covers_the_preferred_completions_only():
    g = Group(seqs=[[5, 6, 7, 8], [5, 6, 9]], pairs=[(1, 0, 1.0)], margin=None, prompt="p", responses=["a", "b"],
              prompt_lens=[2, 2])
    select = completion_select([g], width=5)
    # row 0 (rejected) nothing; row 1 (chosen): its completion [9] at position 2 only (3, 4 are pads)
    assert select.tolist() == [[False] * 5, [False, False, True, False, False]]


def test_lm_term_is_the_causal_lm_loss_on_the_preferred_completions(tiny_model_dir, tiny_tokenizer):
    """loss(coef) − loss(0) = coef × the cross-entropy a plain causal LM from the same folder gives the
    chosen completion's tokens (tied embeddings: the reward model's input embeddings are the LM head)."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.data.tokenize import pad_batch
    from rlhfkit.models.forward import causal_lm_loss

    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir).eval()
    prompt, chosen, rejected = [3, 40, 41, 42], [50, 51, 52, 2], [60, 2]
    g = Group(seqs=[prompt + chosen, prompt + rejected], pairs=[(0, 1, 1.0)], margin=None, prompt="p",
              responses=["c", "r"], prompt_lens=[4, 4])
    pad = tiny_tokenizer.pad_token_id
    assert frozen_lm_head(model, tiny_model_dir) is None  # tied: the head is the model's own embeddings
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        base, _ = group_loss(model, [g], pad_token_id=pad, center_coef=0.0, device="cpu")
        with_lm, stats = group_loss(model, [g], pad_token_id=pad, center_coef=0.0, device="cpu", lm_coef=0.5,
                                    lm_weight=weight)
        lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
        ids, mask = pad_batch([prompt + chosen], pad)
        labels = ids.clone()
        labels[:, :4] = -100  # the prompt is not predicted
        expected, n_tokens = causal_lm_loss(lm, ids, mask, labels)
    assert n_tokens == 4
    assert stats["lm_loss"] == pytest.approx(float(expected), abs=1e-5)
    assert float(with_lm - base) == pytest.approx(0.5 * float(expected), abs=1e-5)


def test_untied_head_comes_from_the_initial_folder_and_stays_frozen(tmp_path, tiny_texts):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.tiny import TinyModelSpec, create_tiny_model

    spec = TinyModelSpec(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False)
    folder = create_tiny_model(tiny_texts, tmp_path / "untied", spec=spec, seed=0)
    model = load_reward_model(folder)
    weight = frozen_lm_head(model, folder)
    head = AutoModelForCausalLM.from_pretrained(str(folder)).get_output_embeddings().weight
    assert torch.equal(weight, head) and not weight.requires_grad
    assert not torch.equal(weight, model.get_input_embeddings().weight[: weight.shape[0]])
    # a reward-model folder with untied embeddings carries no LM head: a clear error naming it
    model.save_pretrained(tmp_path / "rm")
    with pytest.raises(ConfigError, match=str(tmp_path / "rm")):
        frozen_lm_head(model, tmp_path / "rm")
    # a run from the untied causal LM trains with the frozen head and logs the term
    rows = [{"prompt": "User: hi\nAssistant:", "chosen": " hello there.", "rejected": " go away."}] * 8
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_reward(RewardConfig(model=str(folder), data=str(data), output_dir=str(tmp_path / "run"), batch_size=4,
                            max_length=32, max_steps=3, eval_fraction=0.0, log_every=1, save_every=0,
                            progress=False, lm_loss_coef=1.0))
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert logged.count("train/lm_loss") == 3


@pytest.mark.slow
def test_reward_run_with_the_regulariser_logs_it_and_saves_a_plain_classifier(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = [{"prompt": f"User: what color is the {n}?\nAssistant:", "chosen": f" the {n} is red.",
             "rejected": f" the {n} is blue."} for n in ["dax", "wug", "zorp", "fep"] * 10]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RewardConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "rm"), batch_size=8,
                          max_length=48, max_steps=30, optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0),
                          eval_fraction=0.25, log_every=1, save_every=0, progress=False, lm_loss_coef=1.0)
    final = run_reward(config)
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    lm = [row["train/lm_loss"] for row in logged if "train/lm_loss" in row]
    assert len(lm) >= 20 and lm[-1] < lm[0]  # the chosen answers become likelier under the LM head
    assert json.loads((tmp_path / "rm" / "eval.json").read_text())["accuracy"] >= 0.9
    AutoModelForSequenceClassification.from_pretrained(str(final))  # no second head in the folder


def test_lm_loss_coef_must_be_non_negative():
    with pytest.raises(ConfigError, match="lm_loss_coef"):
        RewardConfig(model="m", data="d", lm_loss_coef=-1.0).validate()


def test_length_buckets_by_hand():
    from rlhfkit.data.tokenize import length_buckets

    # two short and two long: one pass pads all four to 50 (200 tokens + 10 per call = 210), two passes
    # cost 2·10 + 10 + 2·50 + 10 = 140, so cut; at 100 per call one pass (300) beats two (320)
    assert length_buckets([50, 10, 50, 10], call_cost=10) == [[1, 3], [0, 2]]
    assert length_buckets([50, 10, 50, 10], call_cost=100) == [[1, 3, 0, 2]]
    # lengths 1, 2, 3, 100 at 4 per call: {1,2,3} padded to 3 (9) + {100} (100) + 8 = 117 beats every other cut
    assert length_buckets([100, 3, 2, 1], call_cost=4) == [[3, 2, 1], [0]]
    assert length_buckets([]) == [] and length_buckets([7]) == [[0]]
    runs = length_buckets([5, 40, 12, 33, 8, 40, 21, 3], call_cost=8)
    assert sorted(i for run in runs for i in run) == list(range(8))  # every sequence exactly once


def test_bucketed_group_loss_equals_the_single_padded_pass(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """Scoring a step's sequences in runs of similar length changes padding only: the same loss, LM
    term and gradients as one pass padded to the longest (pairs and a 4-way ranking of mixed lengths)."""
    import rlhfkit.train.reward_passes as reward_passes
    from rlhfkit.data.tokenize import length_buckets

    made = []

    def cheap_calls(lengths):  # a low price per pass, so that these six sequences take several
        made.append(length_buckets(lengths, call_cost=4))
        return made[-1]

    monkeypatch.setattr(reward_passes, "length_buckets", cheap_calls)
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir).eval()
    weight = model.get_input_embeddings().weight
    prompt = [3, 40, 41]
    lengths = [2, 30, 5, 24, 3, 18]
    seqs = [prompt + [50 + k] * (n - 1) + [2] for k, n in enumerate(lengths)]
    pair = Group(seqs=seqs[:2], pairs=[(1, 0, 2 / 3)], margin=None, prompt="p", responses=["a", "b"], prompt_lens=[3, 3])
    ranking = Group(seqs=seqs[2:], pairs=expand_ranking([1, 3, 0, 2], 4), margin=None, prompt="q",
                    responses=["c", "d", "e", "f"], prompt_lens=[3] * 4)
    results = {}
    for buckets in (False, True):
        model.zero_grad()
        loss, stats = group_loss(model, [pair, ranking], pad_token_id=tiny_tokenizer.pad_token_id, center_coef=0.01,
                                 device="cpu", lm_coef=0.5, lm_weight=weight, buckets=buckets)
        loss.backward()
        results[buckets] = (float(loss), stats["lm_loss"], [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(made) == 1 and len(made[0]) >= 3  # the bucketed pass really was split
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-5)
    assert results[True][1] == pytest.approx(results[False][1], abs=1e-5)
    for bucketed, single in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(bucketed, single, atol=1e-5, rtol=1e-4)
