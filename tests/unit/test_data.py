"""The data layer: formats, file:line:field errors, masks, EOS / BOS rules, truncation accounting."""

import json

import pytest

from rlhfkit.data.records import DataError, load_records, preference_pairs
from rlhfkit.data.tokenize import (IGNORE_INDEX, TruncationStats, encode_completion, encode_prompt, encode_sft,
                                   pack_documents)


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD_PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("kind, rows, line, field, message", [
    ("sft", [{"prompt": "p", "completion": "c"}, "{not json"], 2, None, "not valid JSON"),
    ("sft", [{"prompt": "p"}], 1, "completion", "is missing"),
    ("sft", [{"prompt": "p", "completion": "   "}], 1, "completion", "is empty"),
    ("sft", [{"prompt": 3, "completion": "c"}], 1, "prompt", "must be a string or a list of messages"),
    ("sft", [{"messages": [{"role": "user", "content": "hi"}]}], 1, "messages", "needs at least one"),
    ("sft", [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}], 1,
     "messages", "role 'assistant'"),
    ("pairwise", [GOOD_PAIR, {"prompt": "p", "chosen": "same", "rejected": "same"}], 2, "rejected", "identical"),
    ("pairwise", [{**GOOD_PAIR, "label_prob": 1.5}], 1, "label_prob", r"must lie in \[0.0, 1.0\]"),
    ("pairwise", [{**GOOD_PAIR, "margin": "big"}], 1, "margin", "must be a number"),
    ("ranking", [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 1]}], 1, "ranking", "more than once"),
    ("ranking", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 5]}], 1, "ranking", "out of range"),
    ("ranking", [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}], 1, "ranking", "does not rank"),
    ("ranking", [{"prompt": "p", "responses": ["a"], "ranking": [0]}], 1, "responses", "at least 2"),
    ("unpaired", [{"prompt": "p", "completion": "c", "label": "yes"}], 1, "label", "true or false"),
    ("prompt", [["a list"]], 1, None, "expected a JSON object"),
])
def test_bad_records_name_file_line_and_field(tmp_path, kind, rows, line, field, message):
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=message) as info:
        load_records(path, kind)
    assert info.value.line == line and info.value.field == field
    assert str(path) in str(info.value) and f":{line}" in str(info.value)


def test_formats_load_and_messages_split(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "p", "completion": "c"}]
    records = load_records(write(tmp_path, rows), "sft")
    assert records.records[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert records.records[0]["completion"] == [{"role": "assistant", "content": "hello"}]
    assert records.lines == [1, 2]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl", "sft")


def test_rankings_expand_to_pairs_with_groups():
    records = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, [0, 1]]}, GOOD_PAIR]
    pairs = preference_pairs(records, ties="skip")
    # 2 > 0, 2 > 1 (the 0-1 tie skipped), then the plain pair
    assert [(p["chosen"], p["rejected"], p["group"]) for p in pairs] == [("c", "a", 0), ("c", "b", 0), ("a", "b", 1)]
    soft = preference_pairs(records, ties="soft")
    assert len(soft) == 4 and sorted(p["label_prob"] for p in soft[:3]) == [0.5, 1.0, 1.0]


def test_hf_dataset_folder_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds", "pairwise").records[0]["chosen"] == "a"


def test_sft_mask_covers_completion_and_one_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    stats = TruncationStats()
    ex = encode_sft(tok, "User: hi\nAssistant:", " the dax is red.", max_length=64, max_prompt_length=None, stats=stats)
    prompt_ids = encode_prompt(tok, "User: hi\nAssistant:")
    n_prompt = len(prompt_ids)
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert ex["input_ids"].count(tok.eos_token_id) == 1
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"].count(tok.bos_token_id) == 1
    # a completion already ending in EOS does not get a second one
    assert encode_completion(tok, "p", " ok" + tok.eos_token).count(tok.eos_token_id) == 1


def test_chat_template_path_and_no_double_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = [{"role": "user", "content": "what color is the dax?"}]
    completion = [{"role": "assistant", "content": "the dax is red."}]
    ex = encode_sft(tok, prompt, completion, max_length=64, max_prompt_length=None, stats=TruncationStats())
    text = tok.decode(ex["input_ids"])
    assert text.startswith(tok.bos_token + "User: what color is the dax?\nAssistant:")
    assert text.count(tok.bos_token) == 1
    # the template ends the assistant turn with EOS (then a newline); EOS is not appended twice
    assert ex["input_ids"].count(tok.eos_token_id) == 1
    completion_text = tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != IGNORE_INDEX])
    assert completion_text.strip().startswith("the dax is red.")


def test_truncation_policy_is_counted(tiny_tokenizer):
    tok = tiny_tokenizer
    stats = TruncationStats()
    long_prompt = "User: " + "the dax is red. " * 30 + "\nAssistant:"
    ex = encode_sft(tok, long_prompt, " the dax is red.", max_length=32, max_prompt_length=16, stats=stats)
    assert len(ex["input_ids"]) <= 32 and stats.prompt_truncated == 1
    # the end of the prompt (nearest the answer) is kept
    assert tok.decode(ex["input_ids"][:16]).endswith("Assistant:")
    ex2 = encode_sft(tok, "User: hi\nAssistant:", " red" * 40, max_length=20, max_prompt_length=None, stats=stats)
    assert len(ex2["input_ids"]) == 20 and stats.completion_truncated == 1
    assert ex2["input_ids"][-1] != tok.eos_token_id  # a cut completion loses its EOS
    skipped = encode_sft(tok, long_prompt, " x", max_length=32, max_prompt_length=16, stats=stats, truncation="skip")
    assert skipped is None and stats.skipped == 1 and stats.total == 3


def test_packing_keeps_every_trainable_token(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = ["the dax is red.", "the wug lives in the cave."]
    blocks = pack_documents(tok, texts, block_size=5)
    flat = [t for b in blocks for t in b]
    expected = []
    for t in texts:
        expected += [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # a final block of a single token has no next-token target and is not kept
    assert flat == expected[: len(flat)] and len(expected) - len(flat) <= 1
    assert all(len(b) <= 5 for b in blocks)
