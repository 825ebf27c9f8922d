"""The judge interface: ``compare(prompt, a, b) -> P(a better)`` and ``rank(prompt, candidates)``.

Every AI-feedback source (a local causal LM, an OpenAI-compatible server, a reward model, a Python
function) is a :class:`Judge`. Judges that read a verdict from a model show the two responses in
both orders and average, because LLM judges prefer whichever response they see first (Lee et al.
2023, "RLAIF", sec. 3.1; Zheng et al. 2023, "Judging LLM-as-a-judge"). A :class:`Verdict` keeps
both orders, so the bias is measured, not only cancelled.

Prompts are strings or lists of ``{"role", "content"}`` messages, as everywhere in rlhfkit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

Prompt = str | list[dict]

DEFAULT_CRITERION = "Which response is more helpful, honest and harmless?"

DEFAULT_TEMPLATE = (
    "Compare two responses of an AI assistant to the same conversation.\n\n"
    "Conversation:\n{prompt}\n\n"
    "Response A:\n{a}\n\n"
    "Response B:\n{b}\n\n"
    "{criterion} Answer with a single letter: A or B."
)
"""The judge's user message. Placeholders: ``{criterion}``, ``{prompt}`` (the whole conversation
as "User: ... / Assistant: ..." lines), ``{question}`` (the last user message), ``{a}``, ``{b}``."""

DEFAULT_COT_INSTRUCTION = ('First explain your reasoning step by step. Then write "Verdict:" and, on the next '
                           "line, your answer.")


@dataclass(frozen=True)
class JudgeTemplate:
    """How a comparison is put to a language-model judge and which answers it chooses between."""

    text: str = DEFAULT_TEMPLATE
    choices: tuple[str, str] = ("A", "B")
    """the two answers, verbatim as they follow the judge prompt (first names response A)"""
    cot_instruction: str = DEFAULT_COT_INSTRUCTION
    """chain of thought only: appended to the judge message, asking for reasoning before the verdict"""
    verdict_prefix: str = "\nVerdict:\n"
    """chain of thought only: written after the judge's reasoning; the choices follow it verbatim"""

    def render(self, prompt: Prompt, a: str, b: str, criterion: str) -> str:
        return self.text.format(criterion=criterion, prompt=conversation_text(prompt),
                                question=last_user_text(prompt), a=a.strip(), b=b.strip())

    def message(self, prompt: Prompt, a: str, b: str, criterion: str, *, cot: bool = False) -> str:
        """The judge's user message: the rendered template, plus the reasoning request with ``cot``."""
        text = self.render(prompt, a, b, criterion)
        return f"{text}\n\n{self.cot_instruction}" if cot else text


@dataclass
class Verdict:
    """One comparison. ``prob_a`` is P(a better); where the judge saw both orders it is their mean."""

    prob_a: float
    prob_a_first: float | None = None
    """P(a better) with ``a`` shown first (as response A)"""
    prob_a_second: float | None = None
    """P(a better) with ``a`` shown second (as response B)"""
    rationale: str | None = None
    """the judge's chain of thought, when it wrote one (both orders' joined by a blank line)"""

    @property
    def position_bias(self) -> float | None:
        """P(the response shown first wins), averaged over both orders, minus 0.5: 0 for an unbiased
        judge, +0.5 for one that always picks A, -0.5 for one that always picks B."""
        if self.prob_a_first is None or self.prob_a_second is None:
            return None
        return position_bias(self.prob_a_first, self.prob_a_second)

    def to_dict(self) -> dict:
        out = {"prob_a": self.prob_a, "prob_a_first": self.prob_a_first, "prob_a_second": self.prob_a_second}
        if self.rationale is not None:
            out["rationale"] = self.rationale
        return out


# ---------------------------------------------------------------- pure arithmetic (tested by hand)


def two_choice_probability(logit_first: float, logit_second: float) -> float:
    """P(first choice) from the logits (or log-probs) of the two answer tokens: a softmax restricted
    to them, σ(l₁ − l₂). The rest of the vocabulary is ignored; see :func:`choice_mass` for how much
    of it the two answers held."""
    d = logit_first - logit_second
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def average_orders(prob_a_first: float, prob_a_second: float) -> float:
    """Position-debiased P(a better): the mean over the order (a, b) and the order (b, a)."""
    return 0.5 * (prob_a_first + prob_a_second)


def position_bias(prob_a_first: float, prob_a_second: float) -> float:
    """Mean P(first-shown wins) minus 0.5. Order 1 shows a first: P = prob_a_first; order 2 shows b
    first: P(b wins) = 1 - prob_a_second."""
    return 0.5 * (prob_a_first + (1.0 - prob_a_second)) - 0.5


def conversation_text(prompt: Prompt) -> str:
    """A prompt as plain text: a string unchanged (stripped), messages as "Role: content" lines."""
    if isinstance(prompt, str):
        text = prompt.strip()
        return text[: -len("Assistant:")].rstrip() if text.endswith("\nAssistant:") else text
    return "\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in prompt)


def last_user_text(prompt: Prompt) -> str:
    """The last user message (for a "User: ...\\nAssistant:" string, the user's text)."""
    if isinstance(prompt, str):
        text = conversation_text(prompt)
        marker = text.rfind("User:")
        return text[marker + len("User:"):].strip() if marker >= 0 else text
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1].strip() if users else ""


# ---------------------------------------------------------------- the interface


class Judge(ABC):
    """Subclasses implement :meth:`compare_batch`; ``compare`` and ``rank`` come from it."""

    name: str = "judge"

    @abstractmethod
    def compare_batch(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      *, criterion: str | None = None) -> list[Verdict]:
        """One :class:`Verdict` per (prompt, a, b). ``criterion`` replaces the judge's default
        question (a principle of a constitution, say)."""

    def compare(self, prompt: Prompt, a: str, b: str, *, criterion: str | None = None) -> float:
        """P(a better than b)."""
        return self.compare_batch([prompt], [a], [b], criterion=criterion)[0].prob_a

    def rank(self, prompt: Prompt, candidates: Sequence[str], *, criterion: str | None = None) -> list[int]:
        """Indices of ``candidates``, best first, by the sum of each one's win probabilities over
        all pairs (a Borda count of soft wins; one batched call of K(K-1)/2 comparisons)."""
        k = len(candidates)
        if k < 2:
            return list(range(k))
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        verdicts = self.compare_batch([prompt] * len(pairs), [candidates[i] for i, _ in pairs],
                                      [candidates[j] for _, j in pairs], criterion=criterion)
        wins = [0.0] * k
        for (i, j), v in zip(pairs, verdicts):
            wins[i] += v.prob_a
            wins[j] += 1.0 - v.prob_a
        return sorted(range(k), key=lambda i: (-wins[i], i))


def check_batch(prompts: Sequence, responses_a: Sequence, responses_b: Sequence) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} responses a and {len(responses_b)} "
                         "responses b: one of each per comparison")


class BothOrdersJudge(Judge):
    """A judge that reads P(the response shown first wins) from a model, so sees position.

    Subclasses implement :meth:`judge_shown` for pairs as shown; ``compare_batch`` shows every pair
    as (a, b) and, with ``both_orders``, as (b, a) in the same batch, and averages (Lee et al. 2023,
    sec. 3.1: position bias; Zheng et al. 2023, sec. 3.4: "swap positions").
    """

    both_orders: bool = True
    criterion: str = DEFAULT_CRITERION

    @abstractmethod
    def judge_shown(self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str], *,
                    criterion: str, comparison: Sequence[int]) -> list[tuple[float, str | None]]:
        """(P(first shown is better), rationale or None) for each pair in the order shown.
        ``comparison`` is each pair's index in the caller's batch, for error messages."""

    def compare_batch(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                      *, criterion: str | None = None) -> list[Verdict]:
        check_batch(prompts, responses_a, responses_b)
        n = len(prompts)
        orders = 2 if self.both_orders else 1
        first = list(responses_a) + (list(responses_b) if self.both_orders else [])
        second = list(responses_b) + (list(responses_a) if self.both_orders else [])
        shown = self.judge_shown(list(prompts) * orders, first, second,
                                 criterion=self.criterion if criterion is None else criterion,
                                 comparison=list(range(n)) * orders)
        verdicts = []
        for i in range(n):
            p_first, why_first = shown[i]
            if not self.both_orders:
                verdicts.append(Verdict(prob_a=p_first, prob_a_first=p_first, rationale=why_first))
                continue
            p_b_first, why_second = shown[n + i]
            p_second = 1.0 - p_b_first  # b was shown first: a wins when b does not
            why = [w for w in (why_first, why_second) if w is not None]
            verdicts.append(Verdict(prob_a=average_orders(p_first, p_second), prob_a_first=p_first,
                                    prob_a_second=p_second, rationale="\n\n".join(why) if why else None))
        return verdicts
