"""The reward model's text-generation regulariser (GRM, Yang et al. 2024): which tokens it covers, that
it is exactly the causal LM's loss on them, where its LM head comes from, and a run that logs it."""

import json

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.rankings import expand_ranking
from rlhfkit.models.reward_model import frozen_lm_head, load_reward_model
from rlhfkit.train.reward_model import Group, RewardConfig, _completion_select, group_loss, run_reward
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
    select = _completion_select([g], width=5)
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
