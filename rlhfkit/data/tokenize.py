"""From records to token ids: chat templates, completion-only loss masks, EOS and BOS rules, truncation.

Rules every stage shares (tested in tests/unit/test_data.py):
- a conversational prompt goes through the tokenizer's chat template with the generation prompt;
  a conversational completion is the text the template adds after that generation prompt;
- the loss covers completion tokens only (labels are -100 on the prompt) and includes the EOS;
- EOS is appended exactly once (not again when the template already ended the turn with it);
- BOS appears at most once (not twice when a chat template writes it and the tokenizer adds it too);
- truncation policy (``max_length``, ``max_prompt_length``): first the prompt is cut from the LEFT
  down to ``max_prompt_length`` (the end of the prompt, nearest the answer, is what matters), then
  the completion is cut from the RIGHT so the whole fits ``max_length`` (a cut completion loses its
  EOS). Every truncation is counted and reported; with ``truncation="skip"`` the example is
  dropped instead, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


class RenderError(ValueError):
    """A record cannot be rendered: no chat template for messages, the template raised (e.g. for a
    role order it refuses), or it renders the prompt differently with and without the reply.
    ``field`` is the record's field at fault ("prompt" or "completion"); the stages turn it into a
    :class:`rlhfkit.data.records.DataError` naming the file and the line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def require_chat_template(tokenizer, field: str) -> None:
    """A clear error, naming the model, for a conversational record on a tokenizer with no template."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise RenderError(field, f"model {name}: conversational records (message lists) need a chat template, and "
                                 "this tokenizer has none (a base model such as GPT-2); use plain-text "
                                 "prompt/completion records, or set a chat_template in its tokenizer_config.json")


def _apply_template(tokenizer, messages: list[dict], field: str, **kwargs) -> str:
    require_chat_template(tokenizer, field)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # a user's Jinja template may raise anything (TemplateError, TypeError, ...)
        roles = ", ".join(str(m.get("role")) for m in messages)
        raise RenderError(field, f"the chat template failed on messages with roles [{roles}]: "
                                 f"{type(err).__name__}: {err}") from err


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """Prompt text as the model sees it (chat template with generation prompt for message lists)."""
    if isinstance(prompt, str):
        return prompt
    return _apply_template(tokenizer, prompt, "prompt", add_generation_prompt=True)


def render_completion(tokenizer, prompt: str | list[dict], completion: str | list[dict]) -> str:
    """Completion text: plain strings as they are; messages as the template renders them after the prompt."""
    if isinstance(completion, str):
        return completion
    require_chat_template(tokenizer, "completion")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    prompt_text = _apply_template(tokenizer, prompt, "prompt", add_generation_prompt=True)
    full_text = _apply_template(tokenizer, prompt + completion, "completion")
    if not full_text.startswith(prompt_text):
        raise RenderError("completion", "the chat template renders the prompt differently with and without the "
                                        "reply (does the completion repeat the prompt's turns?)")
    return full_text[len(prompt_text):]


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Prompt ids with exactly one BOS when the tokenizer uses one."""
    text = render_prompt(tokenizer, prompt)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]  # the template wrote BOS and the tokenizer added another
    return list(ids)


def encode_completion(tokenizer, prompt, completion, *, add_eos: bool = True) -> list[int]:
    """Completion ids ending in exactly one EOS."""
    text = render_completion(tokenizer, prompt, completion)
    eos_text = tokenizer.eos_token
    if eos_text and eos_text in text:
        # A chat template that ends the turn with EOS may add a newline after it; the model should
        # learn to stop at the EOS, so what follows it is not part of the completion.
        text = text[: text.rindex(eos_text) + len(eos_text)]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


@dataclass
class TruncationStats:
    """How many examples the truncation policy touched (reported in metrics and the log)."""

    prompt_truncated: int = 0
    completion_truncated: int = 0
    skipped: int = 0
    total: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def fit_lengths(prompt_ids: list[int], completion_ids: list[int], *, max_length: int,
                max_prompt_length: int | None, stats: TruncationStats,
                truncation: str = "truncate") -> tuple[list[int], list[int]] | None:
    """Apply the truncation policy (module docstring); returns None when the example is skipped."""
    stats.total += 1
    max_prompt = max_prompt_length if max_prompt_length is not None else max_length - 1
    too_long = len(prompt_ids) > max_prompt or len(prompt_ids) + len(completion_ids) > max_length
    if too_long and truncation == "skip":
        stats.skipped += 1
        return None
    if len(prompt_ids) > max_prompt:
        stats.prompt_truncated += 1
        prompt_ids = prompt_ids[-max_prompt:]
    room = max_length - len(prompt_ids)
    if len(completion_ids) > room:
        stats.completion_truncated += 1
        completion_ids = completion_ids[:room]
    return prompt_ids, completion_ids


def encode_sft(tokenizer, prompt, completion, *, max_length: int, max_prompt_length: int | None,
               stats: TruncationStats, truncation: str = "truncate") -> dict[str, list[int]] | None:
    """input_ids and labels (-100 on prompt tokens) for one demonstration."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = encode_completion(tokenizer, prompt, completion)
    fitted = fit_lengths(prompt_ids, completion_ids, max_length=max_length,
                         max_prompt_length=max_prompt_length, stats=stats, truncation=truncation)
    if fitted is None:
        return None
    prompt_ids, completion_ids = fitted
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


@dataclass
class Encoded:
    examples: list[dict[str, Any]] = field(default_factory=list)
    stats: TruncationStats = field(default_factory=TruncationStats)


def encode_sft_records(tokenizer, records, *, max_length: int, max_prompt_length: int | None = None,
                       truncation: str = "truncate") -> Encoded:
    """Encode SFT records; given a :class:`~rlhfkit.data.records.RecordSet`, a record the chat
    template cannot render is a DataError naming its file and line."""
    from rlhfkit.data.records import at_record

    out = Encoded()
    source = getattr(records, "source", "<records>")
    lines = getattr(records, "lines", None) or [None] * len(records)
    for record, line in zip(records, lines):
        with at_record(source, line):
            example = encode_sft(tokenizer, record["prompt"], record["completion"], max_length=max_length,
                                 max_prompt_length=max_prompt_length, stats=out.stats, truncation=truncation)
        if example is not None:
            out.examples.append(example)
    return out


def pad_batch(sequences: list[list[int]], pad_value: int, *, side: str = "right"):
    """(B, T) LongTensor padded to the longest sequence, and its attention mask."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            continue
        if side == "right":
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        else:
            ids[row, longest - len(seq):] = torch.tensor(seq)
            mask[row, longest - len(seq):] = 1
    return ids, mask


def length_buckets(lengths: list[int], *, call_cost: int = 64) -> list[list[int]]:
    """Split sequences into forward passes that waste little padding: indices of ``lengths`` sorted by
    length and cut into contiguous runs, each run padded to its own longest.

    The cut minimises the sum over runs of rows × longest (the padded tokens a pass computes) plus
    ``call_cost`` per pass (a pass's fixed cost, in tokens: kernel launches and Python, which on a
    small model on a CPU cost about as much as a few dozen tokens), by dynamic programming over the
    sorted lengths (O(n²); n is a batch's sequence count). One run when cutting does not pay. Each
    index appears exactly once; within a run the order is ascending length."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    sorted_len = [lengths[i] for i in order]
    # best[j]: the cheapest cut of the first j sorted sequences; start[j]: where its last run begins
    best, start = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # last run = sorted positions i .. j-1, padded to sorted_len[j-1]
            cost = best[i] + (j - i) * sorted_len[j - 1] + call_cost
            if cost < best[j]:
                best[j], start[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append(order[start[j]:j])
        j = start[j]
    return runs[::-1]


@dataclass
class Pack:
    """Responses to one prompt laid out as one sequence: the prompt's tokens once, then each
    response's tokens (see :func:`pack_shared_prompt`). Indices are positions in ``ids``."""

    ids: list[int]
    positions: list[int]
    """position id of each token: a response continues from the prompt's end, as if alone after it"""
    segments: list[int]
    """0 on the prompt, k + 1 on the k-th packed response"""
    members: list[int]
    """which of the input sequences each packed response is"""
    starts: list[int]
    """index of each response's first token"""
    ends: list[int]
    """index of each response's last token (where a reward model reads its score)"""
    prompt_len: int


def pack_shared_prompt(seqs: list[list[int]], prompt_lens: list[int]) -> list[Pack]:
    """Lay out sequences that share a prompt (a preference record's responses) so the prompt goes
    through the model once: one :class:`Pack` of ``prompt + response_1 + ... + response_k`` when every
    sequence starts with the same non-empty prompt (same length, same tokens), else one pack per
    sequence (truncation cut the prompt differently, or there is none to share).

    With a mask where each token sees the prompt and the earlier tokens of its own response
    (:func:`rlhfkit.models.forward.segment_attention_mask`) and these position ids, every response's
    hidden states are those it has alone after the prompt: the same scores on fewer tokens (a 4-way
    ranking with a 20-token prompt and 15-token responses: 80 tokens instead of 140)."""
    prompt_len = prompt_lens[0] if prompt_lens else 0
    prompt = seqs[0][:prompt_len] if seqs else []
    shared = len(seqs) > 1 and prompt_len > 0 and all(
        p == prompt_len and s[:prompt_len] == prompt and len(s) > prompt_len for s, p in zip(seqs, prompt_lens))
    if not shared:
        return [Pack(ids=list(s), positions=list(range(len(s))), segments=[0] * p + [1] * (len(s) - p),
                     members=[k], starts=[p], ends=[len(s) - 1], prompt_len=p)
                for k, (s, p) in enumerate(zip(seqs, prompt_lens))]
    ids, positions, segments, starts, ends = list(prompt), list(range(prompt_len)), [0] * prompt_len, [], []
    for k, seq in enumerate(seqs):
        response = seq[prompt_len:]
        starts.append(len(ids))
        ids += response
        positions += range(prompt_len, prompt_len + len(response))
        segments += [k + 1] * len(response)
        ends.append(len(ids) - 1)
    return [Pack(ids=ids, positions=positions, segments=segments, members=list(range(len(seqs))), starts=starts,
                 ends=ends, prompt_len=prompt_len)]


def lm_positions(pack: Pack, k: int) -> tuple[list[int], list[int]]:
    """(sources, targets) of packed response ``k``'s next-token loss: indices in ``pack.ids`` whose
    hidden states predict each of the response's tokens (the prompt's last token for the first one,
    then the response's own), and those tokens. A response with no prompt before it has nothing to
    predict its first token from, which is left out (as a causal LM loss leaves out a sequence's first
    token)."""
    start, end = pack.starts[k], pack.ends[k]
    if pack.prompt_len == 0:
        start += 1
    sources = [pack.prompt_len - 1 if pack.prompt_len > 0 and i == pack.starts[k] else i - 1
               for i in range(start, end + 1)]
    return sources, pack.ids[start:end + 1]


def collate_sft(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, Any]:
    input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], pad_token_id)
    labels, _ = pad_batch([e["labels"] for e in examples], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_documents(tokenizer, texts: list[str], *, block_size: int) -> list[list[int]]:
    """Pre-training blocks: documents joined by EOS (BOS before each when the tokenizer has one of its
    own: GPT-2's BOS is its EOS, and one <|endoftext|> between documents is its convention) and cut
    into ``block_size`` tokens; no padding at all. The tail shorter than a block is kept as a
    shorter block, so no text is lost."""
    stream: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if bos is not None and bos != eos:
            stream.append(bos)
        stream.extend(ids)
        stream.append(eos)
    return [stream[i: i + block_size] for i in range(0, len(stream), block_size) if len(stream[i: i + block_size]) > 1]
