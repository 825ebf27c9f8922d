"""The pure pieces of ``rlhfkit eval`` against hand-computed values: token entropy, distinct-1,
self-BLEU per prompt, per-comparison outcomes, the prompt file reader, the console table."""

import json
import math

import pytest
import torch

from rlhfkit.data.records import DataError
from rlhfkit.evaluate import metrics as M
from rlhfkit.evaluate.policy_eval import format_table
from rlhfkit.evaluate.policy_samples import PolicyRun, load_eval_prompts, token_entropy


def test_mean_token_entropy_weighs_every_token_alike():
    # sample 1: 3 tokens with entropies summing to 3.0; sample 2: 1 token with entropy 1.0
    # token mean = (3.0 + 1.0) / (3 + 1) = 1.0 (a mean of sample means would be (1.0 + 1.0) / 2 too;
    # with sums 2.0 over 1 token and 0.0 over 3 they differ: 2 / 4 = 0.5, not (2 + 0) / 2 = 1)
    assert M.mean_token_entropy([3.0, 1.0], [3, 1]) == 1.0
    assert M.mean_token_entropy([2.0, 0.0], [1, 3]) == 0.5
    assert math.isnan(M.mean_token_entropy([], []))
    with pytest.raises(ValueError):
        M.mean_token_entropy([1.0], [1, 2])


def test_distinct_1_by_hand():
    # unigrams a b a | b c: 5 in all, 3 distinct (a, b, c) → 3 / 5
    assert M.distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)


def test_self_bleu_is_taken_within_each_prompt():
    # prompt 1: "a b" vs "a c": p1 = 1/2; p2 = (0 + 1) / (1 + 1) = 1/2 (smoothed); no 3- or 4-grams in the
    # hypothesis: p3 = p4 = (0 + 1) / (0 + 1) = 1; BP = 1 (equal lengths) → (1/2 · 1/2)^(1/4) = 0.70711
    # prompt 2: identical samples → 1.0; prompt 3: one sample → left out
    got = M.mean_self_bleu_by_prompt([["a b", "a c"], ["x y z", "x y z"], ["only"]])
    assert got == pytest.approx((0.25 ** 0.25 + 1.0) / 2)
    assert math.isnan(M.mean_self_bleu_by_prompt([["one"], [""]]))


def test_scored_comparisons_match_win_rate_by_prompt():
    # prompt 0: a = (1, 3) against b = (2): a=1 loses (Δlen 5 − 4 = 1), a=3 wins (Δlen 2 − 4 = −2)
    # prompt 1: a = (2) against b = (2, 1): a tie (Δlen 0) then a win (Δlen 0 − 3 = −3)
    rows = M.scored_comparisons([[1, 3], [2]], [[2], [2, 1]], [[5, 2], [3]], [[4], [3, 6]])
    assert rows == [[(1.0, 0.0), (-2.0, 1.0)], [(0.0, 0.5), (-3.0, 1.0)]]
    # per prompt: (0 + 1) / 2 = 0.5 and (0.5 + 1) / 2 = 0.75 → 0.625, as win_rate_by_prompt counts
    means = M.per_prompt_means([[o for _, o in r] for r in rows])
    assert means == [0.5, 0.75]
    assert M.win_rate_by_prompt([[1, 3], [2]], [[2], [2, 1]])["win_rate"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="prompt 1 has no value"):
        M.per_prompt_means([[1.0], []])


def test_outcome_of_a_judge_probability():
    assert [M.outcome_of_probability(p) for p in (0.9, 0.5, 0.2, 0.51)] == [1.0, 0.5, 0.0, 1.0]


def test_token_entropy_of_a_uniform_policy_is_log_vocab(tiny_model_dir, tmp_path, one_torch_thread):
    # every logit 0 → the next-token distribution is uniform over V tokens → H = log V at each token
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    folder = tmp_path / "uniform"
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    vocab = model.config.vocab_size
    run = PolicyRun("u", str(folder), "k", ["User: hi\nAssistant:", "User: yo\nAssistant:"],
                    [["a", "b"], ["c", "d"]], [[[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]]])
    sums, counts = token_entropy(run, temperature=1.0, batch_size=3)
    assert counts == [3, 1, 2, 4]
    assert [s / c for s, c in zip(sums, counts)] == pytest.approx([math.log(vocab)] * 4, abs=1e-5)
    assert M.mean_token_entropy(sums, counts) == pytest.approx(math.log(vocab), abs=1e-5)


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_prompt_file_takes_prompts_and_chat_messages(tmp_path):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    path = write(tmp_path / "p.jsonl", [{"prompt": "User: a\nAssistant:"}, "",
                                        {"messages": chat + [{"role": "assistant", "content": "a reference"}]},
                                        {"prompt": chat}])
    assert load_eval_prompts(path) == ["User: a\nAssistant:", chat, chat]
    assert load_eval_prompts(path, limit=1) == ["User: a\nAssistant:"]


@pytest.mark.parametrize("row, line, field", [
    ("{not json", 2, None),
    ({"text": "no prompt"}, 2, "prompt"),
    ({"messages": [{"role": "user"}]}, 2, "messages[0]"),
    ({"messages": []}, 2, "messages"),
    ({"messages": [{"role": "assistant", "content": "only me"}]}, 2, "messages"),
])
def test_bad_prompt_records_name_the_file_line_and_field(tmp_path, row, line, field):
    path = write(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError) as err:
        load_eval_prompts(path)
    assert (err.value.line, err.value.field) == (line, field)
    assert str(err.value).startswith(f"{path}:{line}")
    assert str(err.value).count("field") <= 1


def test_table_shows_percent_with_intervals_and_dashes():
    result = {"prompts": {"n": 3}, "sampling": {"n_samples": 2}, "judge": {"kind": "gold"}, "baseline": "sft",
              "policies": {"sft": {"is_baseline": True, "win_rate": None, "mean_length": 4.0},
                           "ppo": {"is_baseline": False, "win_rate": 0.625, "win_rate_ci": [0.5, 0.75],
                                   "mean_length": 5.5, "sycophancy_rate": float("nan")}}}
    lines = format_table(result).splitlines()
    assert lines[0] == "rlhfkit eval: 3 prompts x 2 samples, judge gold, against sft"
    assert lines[2].split()[:4] == ["ppo", "62.5", "[50.0,", "75.0]"]  # policies first, the baseline last
    assert lines[3].split()[:2] == ["sft", "-"]
