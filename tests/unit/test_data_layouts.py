"""Public dataset layouts read unchanged (rlhfkit/data/layouts.py): Anthropic HH transcripts,
UltraFeedback-style conversations that repeat the prompt, score columns as margins, and chat-template
failures reported as file:line:field errors. Fixtures are small JSONL files written in each layout."""

import json
import math

import pytest

from rlhfkit.data.layouts import (LayoutError, LayoutOptions, hh_to_pairwise, parse_hh_transcript, split_conversations,
                                  split_hh_pair)
from rlhfkit.data.records import DataError, load_records
from rlhfkit.data.tokenize import TruncationStats, encode_sft_records
from rlhfkit.train.direct import batches as D

NAMES = ["dax", "wug", "zorp", "fep", "blick", "toma"]
TEXT, MESSAGES = LayoutOptions(hh_messages=False), LayoutOptions(hh_messages=True)


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def hh(*turns):
    """An HH transcript from alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if k % 2 == 0 else 'Assistant'}: {t}" for k, t in enumerate(turns))


def hh_rows(n):
    return [{"chosen": hh(f"what color is the {NAMES[i % 6]}?", f"the {NAMES[i % 6]} is red."),
             "rejected": hh(f"what color is the {NAMES[i % 6]}?", f"the {NAMES[i % 6]} is blue.")} for i in range(n)]


def ultrafeedback_rows(n):
    rows = []
    for i in range(n):
        question = f"what color is the {NAMES[i % 6]}?"
        rows.append({"prompt": question, "prompt_id": f"id-{i}",
                     "chosen": [user(question), assistant(f"the {NAMES[i % 6]} is red.")],
                     "rejected": [user(question), assistant(f"the {NAMES[i % 6]} is blue.")],
                     "score_chosen": 8.5, "score_rejected": 3.0})
    return rows


# ---------------------------------------------------------------- Anthropic HH


def test_hh_single_turn_prompt_is_cut_back_to_the_assistant_marker():
    # both answers begin with " The": the common prefix runs into the answers and is cut back
    prompt, chosen, rejected = split_hh_pair(hh("what color is the dax?", "The dax is red."),
                                             hh("what color is the dax?", "The dax is blue."))
    assert prompt == "\n\nHuman: what color is the dax?\n\nAssistant:"
    assert (chosen, rejected) == (" The dax is red.", " The dax is blue.")


def test_hh_multi_turn_prompt_keeps_the_earlier_turns():
    record = {"chosen": hh("hi", "hello! how can I help?", "what color is the dax?", "red."),
              "rejected": hh("hi", "hello! how can I help?", "what color is the dax?", "no idea."), "id": 7}
    text = hh_to_pairwise(record, messages=False)
    assert text["prompt"] == ("\n\nHuman: hi\n\nAssistant: hello! how can I help?"
                              "\n\nHuman: what color is the dax?\n\nAssistant:")
    assert (text["chosen"], text["rejected"], text["id"]) == (" red.", " no idea.", 7)
    msgs = hh_to_pairwise(record, messages=True)
    assert msgs["prompt"] == [user("hi"), assistant("hello! how can I help?"), user("what color is the dax?")]
    assert msgs["chosen"] == [assistant("red.")] and msgs["rejected"] == [assistant("no idea.")]


def test_hh_parse_rejects_text_before_the_first_turn():
    assert parse_hh_transcript("Human: hi\n\nAssistant: yo", "chosen") == [user("hi"), assistant("yo")]
    with pytest.raises(LayoutError, match="before the first") as info:
        parse_hh_transcript("preamble\n\nHuman: hi", "chosen")
    assert info.value.field == "chosen"


def test_hh_file_loads_as_text_or_as_messages(tmp_path):
    path = write(tmp_path / "hh.jsonl", hh_rows(2))
    raw = load_records(path, "pairwise", layout=TEXT).records[1]
    assert raw == {"prompt": "\n\nHuman: what color is the wug?\n\nAssistant:", "chosen": " the wug is red.",
                   "rejected": " the wug is blue."}
    conv = load_records(path, "preference", layout=MESSAGES).records[1]
    assert conv == {"prompt": [user("what color is the wug?")], "chosen": [assistant("the wug is red.")],
                    "rejected": [assistant("the wug is blue.")]}


def test_hh_layout_follows_the_tokenizer(tiny_tokenizer):
    assert LayoutOptions.for_tokenizer(tiny_tokenizer).hh_messages  # the tiny tokenizer has a chat template
    assert not LayoutOptions.for_tokenizer(tiny_tokenizer, hh_raw_text=True).hh_messages

    class NoTemplate:
        chat_template = None

    assert not LayoutOptions.for_tokenizer(NoTemplate()).hh_messages


@pytest.mark.parametrize("bad, field, message", [
    ({"chosen": "\n\nHuman: hi there", "rejected": hh("hi there", "go away")}, "chosen", "needs a '\\\\n\\\\nAssistant:'"),
    ({"chosen": hh("hi", "hello"), "rejected": hh("what?", "hello")}, "rejected", "shares no prompt"),
    ({"chosen": "\n\nAssistant: hello", "rejected": "\n\nAssistant: go away"}, "chosen", "no 'Human:' turn"),
    ({"chosen": hh("hi", "  "), "rejected": hh("hi", "go away")}, "chosen", "only empty messages"),
])
def test_malformed_hh_names_file_line_and_field(tmp_path, bad, field, message):
    path = write(tmp_path / "hh.jsonl", hh_rows(1) + [bad])
    with pytest.raises(DataError, match=message) as info:
        load_records(path, "preference", layout=MESSAGES)
    assert (info.value.line, info.value.field) == (2, field)
    assert str(info.value).startswith(f"{path}:2: field '{field}': ")


def test_pair_without_prompt_or_transcript_is_still_missing_its_prompt(tmp_path):
    with pytest.raises(DataError, match="is missing") as info:
        load_records(write(tmp_path / "p.jsonl", [{"chosen": "a", "rejected": "b"}]), "pairwise")
    assert info.value.field == "prompt"


# ---------------------------------------------------------------- conversations that repeat the prompt


def test_ultrafeedback_shape_splits_at_the_shared_messages(tmp_path, tiny_tokenizer):
    record = load_records(write(tmp_path / "uf.jsonl", ultrafeedback_rows(1)), "pairwise").records[0]
    assert record["prompt"] == [user("what color is the dax?")]
    assert record["chosen"] == [assistant("the dax is red.")]
    assert record["rejected"] == [assistant("the dax is blue.")]
    assert record["prompt_id"] == "id-0" and "margin" not in record  # scores are ignored without the flag
    # and it now encodes; before, the chat template saw the user turn twice and a ValueError escaped
    pairs = D.load_pair_records(str(tmp_path / "uf.jsonl"), layout=MESSAGES)
    example = D.encode_pairs(tiny_tokenizer, pairs, max_length=64, max_prompt_length=None, stats=TruncationStats())[0]
    prompt_ids, chosen_ids = example.seqs["chosen"]
    assert tiny_tokenizer.decode(prompt_ids) == tiny_tokenizer.bos_token + "User: what color is the dax?\nAssistant:"
    assert tiny_tokenizer.decode(chosen_ids) == " the dax is red." + tiny_tokenizer.eos_token


def test_multi_turn_conversations_keep_system_and_earlier_turns():
    system, first = {"role": "system", "content": "be brief"}, [user("hi"), assistant("hello")]
    prompt, chosen, rejected = split_conversations([system, *first, user("dax?"), assistant("red")],
                                                   [system, *first, user("dax?"), assistant("blue")])
    assert prompt == [system, *first, user("dax?")]
    assert (chosen, rejected) == ([assistant("red")], [assistant("blue")])
    # both replies start alike? the shared prefix is cut back to the last user turn all the same
    prompt, chosen, _ = split_conversations([user("q"), assistant("a"), user("more"), assistant("x")],
                                            [user("q"), assistant("a")])
    assert prompt == [user("q")] and chosen == [assistant("a"), user("more"), assistant("x")]


@pytest.mark.parametrize("bad, field, message", [
    ({**ultrafeedback_rows(1)[0], "prompt": "what colour is the wug?"}, "prompt", "differs from the last user message"),
    ({**ultrafeedback_rows(1)[0], "prompt": [user("something else")]}, "prompt", "differs from the leading messages"),
    ({"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [user("other"), assistant("b")]},
     "rejected", "shares no leading user message"),
    ({"chosen": [user("q"), user("x"), assistant("a")], "rejected": [user("q"), user("y"), assistant("a")]},
     "chosen", "only the assistant's replies may differ"),
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q")]}, "rejected", "no assistant reply"),
])
def test_conversational_disagreements_name_the_line(tmp_path, bad, field, message):
    path = write(tmp_path / "uf.jsonl", ultrafeedback_rows(2) + [bad])
    with pytest.raises(DataError, match=message) as info:
        load_records(path, "preference")
    assert (info.value.line, info.value.field) == (3, field)
    assert f"{path}:3: field '{field}'" in str(info.value)


def test_prompt_as_messages_with_plain_assistant_completions_is_left_alone(tmp_path):
    row = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert load_records(write(tmp_path / "p.jsonl", [row]), "pairwise").records[0] == row


def test_unpaired_and_sft_completions_that_repeat_the_prompt(tmp_path):
    kto = {"prompt": "q", "completion": [user("q"), assistant("a")], "label": True}
    record = load_records(write(tmp_path / "kto.jsonl", [kto]), "unpaired").records[0]
    assert (record["prompt"], record["completion"], record["label"]) == ([user("q")], [assistant("a")], True)
    sft = {"prompt": [user("q")], "completion": [user("q"), assistant("a")]}
    record = load_records(write(tmp_path / "sft.jsonl", [sft]), "sft").records[0]
    assert (record["prompt"], record["completion"]) == ([user("q")], [assistant("a")])
    bad = {"prompt": "not q", "completion": [user("q"), assistant("a")], "label": False}
    with pytest.raises(DataError, match="differs") as info:
        load_records(write(tmp_path / "bad.jsonl", [kto, bad]), "unpaired")
    assert (info.value.line, info.value.field) == (2, "prompt")


# ---------------------------------------------------------------- score columns → margin


def test_scores_become_the_margin_only_on_request(tmp_path, tiny_tokenizer):
    from rlhfkit.train.reward_model import RewardConfig, encode_groups

    path = write(tmp_path / "uf.jsonl", ultrafeedback_rows(2))
    plain = load_records(path, "preference")
    assert all("margin" not in r for r in plain)
    scored = load_records(path, "preference", layout=LayoutOptions(margin_from_scores=True))
    assert [r["margin"] for r in scored] == [5.5, 5.5]  # 8.5 − 3.0
    # the reward model trains on it: its groups carry the margin into the Bradley–Terry loss
    groups, _ = encode_groups(tiny_tokenizer, scored.records, scored.lines, str(path), RewardConfig(max_length=64))
    assert [g.margin for g in groups] == [5.5, 5.5]


@pytest.mark.parametrize("flag, change, field, message", [
    (True, {"score_rejected": None}, "score_rejected", "is missing"),
    (True, {"score_chosen": "8.5"}, "score_chosen", "must be a number"),
    (True, {"margin": 1.0}, "margin", "drop one"),
    (False, {"score_chosen": "high"}, "score_chosen", "must be a number"),  # validated without the flag too
])
def test_score_errors_name_line_and_field(tmp_path, flag, change, field, message):
    rows = ultrafeedback_rows(2)
    rows[1] = {k: v for k, v in {**rows[1], **change}.items() if v is not None}
    with pytest.raises(DataError, match=message) as info:
        load_records(write(tmp_path / "uf.jsonl", rows), "pairwise", layout=LayoutOptions(margin_from_scores=flag))
    assert (info.value.line, info.value.field) == (2, field)


# ---------------------------------------------------------------- chat-template failures


@pytest.fixture(scope="module")
def strict_tokenizer(tiny_model_dir):
    """The tiny tokenizer with a template that refuses two user turns in a row (as many real ones do)."""
    from rlhfkit.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = (
        "{% for m in messages %}"
        "{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
        "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
        "{% else %}Assistant: {{ m['content'] }}" + tok.eos_token + "\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}")
    return tok


def test_template_failure_is_a_data_error_with_file_and_line(tmp_path, strict_tokenizer):
    good = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    bad_prompt = {"prompt": [user("q"), user("again")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    bad_reply = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b"), assistant("c")]}
    path = write(tmp_path / "p.jsonl", [good, bad_prompt, bad_reply])
    stats = TruncationStats()
    pairs = D.load_pair_records(str(path))
    with pytest.raises(DataError, match="roles must alternate") as info:
        D.encode_pairs(strict_tokenizer, pairs, max_length=64, max_prompt_length=None, stats=stats, source=str(path))
    assert str(info.value).startswith(f"{path}:2: field 'prompt': the chat template failed")
    with pytest.raises(DataError, match="roles must alternate") as info:
        D.encode_pairs(strict_tokenizer, pairs[2:], max_length=64, max_prompt_length=None, stats=stats,
                       source=str(path))
    assert (info.value.line, info.value.field) == (3, "rejected")

    from rlhfkit.train.reward_model import RewardConfig, encode_groups

    data = load_records(path, "preference")
    with pytest.raises(DataError, match="roles must alternate") as info:
        encode_groups(strict_tokenizer, data.records, data.lines, str(path), RewardConfig(max_length=64))
    assert (info.value.line, info.value.field) == (2, "prompt")

    sft = write(tmp_path / "sft.jsonl", [{"messages": [user("q"), assistant("a")]},
                                         {"messages": [user("q"), user("q2"), assistant("a")]}])
    with pytest.raises(DataError, match="roles must alternate") as info:
        encode_sft_records(strict_tokenizer, load_records(sft, "sft"), max_length=64)
    assert (info.value.line, info.value.field) == (2, "prompt")


def test_messages_without_a_chat_template_name_the_line(tmp_path, tiny_model_dir):
    from rlhfkit.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = None
    path = write(tmp_path / "uf.jsonl", ultrafeedback_rows(1))
    with pytest.raises(DataError, match="need a chat template") as info:
        D.encode_pairs(tok, D.load_pair_records(str(path)), max_length=64, max_prompt_length=None,
                       stats=TruncationStats(), source=str(path))
    assert (info.value.line, info.value.field) == (1, "prompt")


# ---------------------------------------------------------------- end to end on the tiny model


def _train_losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


LAYOUTS = {"hh": hh_rows, "ultrafeedback": ultrafeedback_rows}


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reward_model_trains_on_the_layout(tiny_model_dir, tmp_path, one_torch_thread, layout):
    from rlhfkit.train.reward_model import RewardConfig, run_reward
    from rlhfkit.train.sft import OptimConfig

    data = write(tmp_path / f"{layout}.jsonl", LAYOUTS[layout](8))
    config = RewardConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "rm"), batch_size=4,
                          max_length=48, max_steps=2, eval_fraction=0.0, log_every=1, save_every=0, progress=False,
                          optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0),
                          margin_from_scores=layout == "ultrafeedback")
    config.validate()
    final = run_reward(config)
    assert (final / "config.json").exists()
    losses = _train_losses(tmp_path / "rm")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    if layout == "ultrafeedback":
        # margin 5.5 and r_c ≈ r_r at the start: −log σ(0 − 5.5) ≈ 5.504, far above the plain log 2
        assert losses[0] == pytest.approx(5.504, abs=0.05)
    else:
        assert losses[0] == pytest.approx(math.log(2), abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_dpo_trains_on_the_layout(tiny_model_dir, tmp_path, one_torch_thread, layout):
    from rlhfkit.train.direct.dpo import DPOConfig, run_dpo
    from rlhfkit.train.sft import OptimConfig

    data = write(tmp_path / f"{layout}.jsonl", LAYOUTS[layout](8))
    config = DPOConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "dpo"), batch_size=4,
                       max_length=48, max_steps=2, eval_fraction=0.0, log_every=1, save_every=0, progress=False,
                       optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0))
    config.validate()
    run_dpo(config)
    losses = _train_losses(tmp_path / "dpo")
    assert len(losses) == 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1: −log σ(0)
