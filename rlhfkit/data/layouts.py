"""Public dataset layouts, read unchanged: each is normalised into rlhfkit's own record form.

The layouts a user's first dataset usually comes in, and what they become:

- **Anthropic HH-RLHF** (``Anthropic/hh-rlhf``; Bai et al. 2022): only ``chosen`` and ``rejected``,
  each a whole transcript ``"\\n\\nHuman: …\\n\\nAssistant: …"``. The prompt is implicit: the
  longest common prefix of the two, cut back to the end of its last ``"\\n\\nAssistant:"`` marker
  (TRL's ``extract_prompt`` and the ``extract_anthropic_prompt`` of its HH examples do the same).
  The result is ``{prompt, chosen, rejected}`` as raw text, or as chat messages (``Human`` → user,
  ``Assistant`` → assistant) for a tokenizer with a chat template.
- **Conversational preferences that repeat the prompt** (``HuggingFaceH4/ultrafeedback_binarized``
  and its kin): ``chosen`` / ``rejected`` are whole conversations ``[user, assistant, …]`` and
  ``prompt`` (a string, when present) is the last user turn again. The shared leading messages are
  the prompt; the messages after them are the completions (TRL's conversational preference form,
  prompt as messages and completions as assistant messages).
- The same for one conversation: an SFT or KTO ``completion`` that repeats the prompt's turns.
- **Score columns** (UltraFeedback's ``score_chosen`` / ``score_rejected``): on request
  (``margin_from_scores``), ``margin = score_chosen − score_rejected`` (Llama 2's reward model
  trains on such a margin, Touvron et al. 2023, eq. 2).

Every function here is pure and knows nothing of files: a bad record raises :class:`LayoutError`
naming the field, and :func:`rlhfkit.data.records.load_records` adds the file and the line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class LayoutError(ValueError):
    """A record in a known layout is malformed; ``field`` names the column at fault."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LayoutOptions:
    """How the stage that reads the records wants the layouts normalised."""

    hh_messages: bool = False
    """Anthropic HH transcripts become chat messages (true) or stay raw text (false)"""
    margin_from_scores: bool = False
    """pairwise records get ``margin = score_chosen − score_rejected`` (both columns then required)"""

    @classmethod
    def for_tokenizer(cls, tokenizer, *, hh_raw_text: bool = False, margin_from_scores: bool = False) -> "LayoutOptions":
        """HH transcripts become messages when the tokenizer has a chat template, unless ``hh_raw_text``."""
        has_template = getattr(tokenizer, "chat_template", None) is not None
        return cls(hh_messages=has_template and not hh_raw_text, margin_from_scores=margin_from_scores)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ---------------------------------------------------------------- Anthropic HH


def looks_like_hh(text: Any) -> bool:
    """A string in the HH transcript layout: it holds a ``Human:`` or ``Assistant:`` turn marker."""
    return isinstance(text, str) and (HUMAN in text or ASSISTANT in text or text.startswith("Human:"))


def parse_hh_transcript(text: str, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → ``[{user: hi}, {assistant: hello}]``.

    A turn starts at ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` (or ``"Human:"`` at the very start,
    as some copies of the dataset have it); its content is stripped of surrounding whitespace.
    Text before the first marker is an error.
    """
    parts = _TURN.split(text)  # ['before', 'Human', ' hi', 'Assistant', ' hello', ...]
    if parts[0].strip():
        raise LayoutError(field, f"text before the first 'Human:' / 'Assistant:' turn: {_short(parts[0])}")
    return [{"role": _ROLES[name], "content": content.strip()} for name, content in zip(parts[1::2], parts[2::2])]


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of an HH pair, as raw text.

    The prompt is the longest common prefix of the two transcripts cut back to the end of its last
    ``"\\n\\nAssistant:"`` (so a response both begin alike, e.g. with " I", stays whole); it must
    hold a Human turn. The completions are what follows, leading space included, as in TRL's
    ``extract_prompt``. Should the two differ before their final Assistant turn, each completion
    holds every turn from the first difference on.
    """
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT not in text:
            raise LayoutError(name, "an Anthropic HH transcript needs a '\\n\\nAssistant:' turn; none found in "
                                    f"{_short(text)}")
    common = os.path.commonprefix([chosen, rejected])
    end = common.rfind(ASSISTANT)
    if end < 0:
        raise LayoutError("rejected", "shares no prompt with 'chosen': the transcripts differ before their first "
                                      "'\\n\\nAssistant:' turn")
    cut = end + len(ASSISTANT)
    prompt = chosen[:cut]
    if HUMAN not in prompt and not prompt.startswith("Human:"):
        raise LayoutError("chosen", "the shared prompt holds no 'Human:' turn before the final '\\n\\nAssistant:'")
    return prompt, chosen[cut:], rejected[cut:]


def hh_to_pairwise(record: dict, *, messages: bool) -> dict:
    """An HH record ``{chosen, rejected, …}`` → ``{prompt, chosen, rejected, …}`` (other columns kept).

    ``messages=False``: raw text, the prompt ending in ``"\\n\\nAssistant:"``. ``messages=True``:
    the prompt as user/assistant messages ending in a user turn, each completion as the assistant
    message(s) after it.
    """
    prompt, chosen, rejected = split_hh_pair(record["chosen"], record["rejected"])
    if not messages:
        return {**record, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {**record,
            "prompt": parse_hh_transcript(prompt[: -len(ASSISTANT)], "chosen"),
            "chosen": parse_hh_transcript(ASSISTANT + chosen, "chosen"),
            "rejected": parse_hh_transcript(ASSISTANT + rejected, "rejected")}


# ---------------------------------------------------------------- conversations that repeat the prompt


def is_messages(value: Any) -> bool:
    """A non-empty list of ``{"role": str, "content": str}`` objects."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def repeats_prompt(value: Any) -> bool:
    """A message list that holds a turn other than the assistant's, i.e. carries its own prompt."""
    return is_messages(value) and any(m["role"] != "assistant" for m in value)


def split_conversation(messages: list[dict], field: str) -> tuple[list[dict], list[dict]]:
    """(prompt messages, completion messages) of one conversation: the completion is the run of
    assistant messages at its end (the form of an SFT ``messages`` record)."""
    k = len(messages)
    while k > 0 and messages[k - 1]["role"] == "assistant":
        k -= 1
    if k == len(messages):
        raise LayoutError(field, "the conversation does not end with an assistant message")
    return messages[:k], messages[k:]


def split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen completion, rejected completion) of two conversations that share their start.

    The prompt is the longest run of identical leading messages, cut back to end on a turn that is
    not the assistant's (as the HH prompt is cut back to an Assistant marker); the completions are
    the messages after it and must be the assistant's.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1
    if n == 0:
        raise LayoutError("rejected", "shares no leading user message with 'chosen'")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        rest = conversation[n:]
        if not rest:
            raise LayoutError(name, "has no assistant reply after the shared prompt")
        if rest[0]["role"] != "assistant":
            raise LayoutError(name, f"message {n} is a {rest[0]['role']!r} turn that differs between 'chosen' and "
                                    "'rejected'; only the assistant's replies may differ")
    return chosen[:n], chosen[n:], rejected[n:]


def check_prompt_agrees(given: Any, derived: list[dict], where: str) -> None:
    """A record's own ``prompt`` must be the prompt its conversation repeats: a string equals the
    content of the conversation's last prompt message (UltraFeedback: the last user turn), a
    message list equals the prompt messages. ``None`` (no prompt column) always agrees."""
    if given is None:
        return
    if isinstance(given, str):
        last = derived[-1]["content"]
        if given.strip() != last.strip():
            raise LayoutError("prompt", f"{_short(given)} differs from the last {derived[-1]['role']} message of "
                                        f"{where}, {_short(last)}")
    elif given != derived:
        raise LayoutError("prompt", f"differs from the leading messages of {where}")


# ---------------------------------------------------------------- scores → margin


def margin_from_scores(record: dict) -> float:
    """``score_chosen − score_rejected`` (UltraFeedback's rating columns); both must be numbers."""
    for name in ("score_chosen", "score_rejected"):
        value = record.get(name)
        if value is None:
            raise LayoutError(name, "is missing (margin_from_scores=true takes margin = score_chosen - score_rejected)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LayoutError(name, f"must be a number, got {value!r}")
    return float(record["score_chosen"]) - float(record["score_rejected"])


# ---------------------------------------------------------------- one record


def normalise_record(record: dict, kind: str, options: LayoutOptions) -> dict:
    """A record of ``kind`` in any known layout → rlhfkit's form for that kind (a new dict; a record
    already in that form comes back unchanged). Raises :class:`LayoutError`."""
    if kind in ("pairwise", "preference") and "responses" not in record and "ranking" not in record:
        return _normalise_pair(record, options)
    if kind in ("unpaired", "sft") and "messages" not in record and repeats_prompt(record.get("completion")):
        prompt, completion = split_conversation(record["completion"], "completion")
        check_prompt_agrees(record.get("prompt"), prompt, "'completion'")
        return {**record, "prompt": prompt, "completion": completion}
    return record


def _normalise_pair(record: dict, options: LayoutOptions) -> dict:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if record.get("prompt") is None and isinstance(chosen, str) and isinstance(rejected, str) and looks_like_hh(chosen):
        record = hh_to_pairwise(record, messages=options.hh_messages)
    elif is_messages(chosen) and is_messages(rejected) and (repeats_prompt(chosen) or repeats_prompt(rejected)):
        prompt, chosen, rejected = split_conversations(chosen, rejected)
        check_prompt_agrees(record.get("prompt"), prompt, "'chosen' and 'rejected'")
        record = {**record, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    if options.margin_from_scores:
        if record.get("margin") is not None:
            raise LayoutError("margin", "is given, but margin_from_scores=true takes it from score_chosen - "
                                        "score_rejected; drop one")
        record = {**record, "margin": margin_from_scores(record)}
    return record
