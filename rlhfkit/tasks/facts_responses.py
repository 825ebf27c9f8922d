"""Generators of facts-task responses: good ones, and each known defect.

A response is a few sentences joined by spaces, with a leading space (it follows "Assistant:").
``corrupt`` works on the text: "core" sentences (the answer) are told apart from "style"
sentences (polite, flattering, rude, padding), so a content defect replaces the core and keeps
the style, and a style defect adds sentences around the core.
"""

from __future__ import annotations

import random
import re

from .facts_world import (AGREE_OPENERS, ANSWER_TEMPLATES, COMPLIANCE, DISAGREE_OPENERS, DONT_KNOW, FLATTERY,
                          NON_ANSWERS, OFF_TOPIC_ADDITIONS, PADDING, POLITE, REFUSALS, RUDE, PromptInfo, World,
                          negated_predicate, predicate)

CONTENT_DEFECTS = ("wrong_fact", "sycophantic", "contrarian", "comply", "hallucinate", "missing_answer")
STYLE_DEFECTS = ("off_topic", "rude", "flattery", "verbose", "repetition", "polite_spam")
DEFECTS = CONTENT_DEFECTS + STYLE_DEFECTS
HACKS = ("verbose", "flattery", "polite_spam", "sycophantic")
"""defects that some annotators like, so a proxy reward learned from them overrates these"""

_STYLE_SENTENCES = frozenset(POLITE + FLATTERY + RUDE + PADDING)
_POLITE_SET = frozenset(POLITE)

_REFERENCE_POLITE_P = {"question": 0.6, "probe": 0.6, "harmful": 0.4, "unknown": 0.5}


def join(sentences: list[str]) -> str:
    return " " + " ".join(s for s in sentences if s)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]*[.!?]+|[^.!?]+$", text) if s.strip()]


def _other_value(world: World, attribute: str, *exclude: str, rng: random.Random) -> str:
    return rng.choice([v for v in world.values[attribute] if v not in exclude])


def reference_core(info: PromptInfo, world: World, rng: random.Random) -> list[str]:
    """The answer sentences of a good response (no polite phrase)."""
    c, a = info.creature, info.attribute
    if info.kind == "question":
        return [rng.choice(ANSWER_TEMPLATES[a]).format(c=c, v=world.creatures[c][a])]
    if info.kind == "probe":
        v = world.creatures[c][a]
        if info.truth:
            out = [rng.choice(AGREE_OPENERS)]
            if rng.random() < 0.7:
                out.append(f"the {c} {predicate(a, v)}.")
            return out
        r = rng.random()
        if r < 0.5:
            return [rng.choice(DISAGREE_OPENERS), f"{rng.choice(['the ' + c, 'it'])} {predicate(a, v)}."]
        if r < 0.8:
            return [f"no, the {c} {negated_predicate(a, info.asserted)}.", f"it {predicate(a, v)}."]
        if r < 0.9:
            return [f"no, the {c} {negated_predicate(a, info.asserted)}."]
        return [rng.choice(DISAGREE_OPENERS)]
    if info.kind == "harmful":
        return [rng.choice(REFUSALS).format(c=c)]
    return [rng.choice(DONT_KNOW).format(c=c)]


def reference_response(info: PromptInfo, world: World, rng: random.Random) -> str:
    """A good response: the right answer in one of several phrasings, often with a polite phrase."""
    out = reference_core(info, world, rng)
    if rng.random() < _REFERENCE_POLITE_P[info.kind]:
        out.append(rng.choice(POLITE))
    return join(out)


def applicable_defects(info: PromptInfo) -> dict[str, float]:
    """Defects that make sense for this prompt, with their sampling weights."""
    content = {"question": "wrong_fact", "harmful": "comply", "unknown": "hallucinate"}.get(info.kind)
    if info.kind == "probe":
        content = "contrarian" if info.truth else "sycophantic"
    weights = {content: 3.0, "missing_answer": 1.5 if info.kind in ("question", "probe") else 1.0,
               "off_topic": 1.5 if info.kind == "question" else 1.0}
    weights.update({d: 1.0 for d in ("rude", "flattery", "verbose", "repetition")})
    weights["polite_spam"] = 0.5
    return weights


def _content_core(info: PromptInfo, defect: str, core: list[str], world: World, rng: random.Random) -> list[str]:
    c, a = info.creature, info.attribute
    if defect == "wrong_fact":
        truth = world.creatures[c][a]
        wrong = _other_value(world, a, truth, rng=rng)
        pattern = re.compile(rf"\b{re.escape(truth)}\b")
        if any(pattern.search(s) for s in core):
            return [pattern.sub(wrong, s) for s in core]
        return [rng.choice(ANSWER_TEMPLATES[a]).format(c=c, v=wrong)]
    if defect == "sycophantic":
        return rng.choice([[rng.choice(AGREE_OPENERS)],
                           [rng.choice(AGREE_OPENERS), f"the {c} {predicate(a, info.asserted)}."],
                           [f"yes, the {c} {predicate(a, info.asserted)}."]])
    if defect == "contrarian":
        wrong = _other_value(world, a, info.asserted, rng=rng)
        return rng.choice([[rng.choice(DISAGREE_OPENERS)],
                           [f"no, the {c} {negated_predicate(a, info.asserted)}."],
                           [rng.choice(DISAGREE_OPENERS), f"it {predicate(a, wrong)}."]])
    if defect == "comply":
        return [rng.choice(COMPLIANCE).format(c=c, home=world.creatures[c]["home"])]
    if defect == "hallucinate":
        return [rng.choice(ANSWER_TEMPLATES[a]).format(c=c, v=rng.choice(world.values[a]))]
    if defect == "missing_answer":
        return [rng.choice(NON_ANSWERS).format(c=c)]
    raise ValueError(defect)


def corrupt(info: PromptInfo, response: str, world: World, rng: random.Random, defect: str | None = None) -> str:
    """``response`` with one defect; ``defect`` is drawn by ``applicable_defects`` weights when None.

    Content defects: wrong_fact (question), sycophantic (probe with a false claim: agrees),
    contrarian (probe with a true claim: disputes it), comply (harmful: gives instructions),
    hallucinate (unknown: invents a value), missing_answer (no answer at all).
    Style defects: off_topic (talks about another creature), rude, flattery, verbose (padding
    sentences up to 16-24 words), repetition (the answer said 2-3 times), polite_spam (one polite phrase three times).
    """
    weights = applicable_defects(info)
    if defect is None:
        names = list(weights)
        defect = rng.choices(names, weights=[weights[n] for n in names])[0]
    elif defect not in weights:
        raise ValueError(f"defect {defect!r} does not apply to a {info.kind} prompt "
                         f"(truth={info.truth}); applicable: {sorted(weights)}")
    sentences = split_sentences(response)
    core_idx = [i for i, s in enumerate(sentences) if s not in _STYLE_SENTENCES]
    core = [sentences[i] for i in core_idx]
    first = core_idx[0] if core_idx else next(
        (i for i, s in enumerate(sentences) if s not in FLATTERY), len(sentences))
    end = core_idx[-1] + 1 if core_idx else first
    before = [s for i, s in enumerate(sentences) if i < first and i not in core_idx]
    after = [s for i, s in enumerate(sentences) if i >= end]

    if defect in CONTENT_DEFECTS:
        return join(before + _content_core(info, defect, core, world, rng) + after)
    if defect == "off_topic":
        other = rng.choice([n for n in world.names if n != info.creature])
        pattern = re.compile(rf"\b{re.escape(info.creature)}\b")
        if any(pattern.search(s) for s in core):
            return join(before + [pattern.sub(other, s) for s in core] + after)
        return join(before + core + [rng.choice(OFF_TOPIC_ADDITIONS).format(o=other)] + after)
    if defect == "rude":
        rude = rng.choice(RUDE)
        return join([rude] + sentences if rng.random() < 0.5 else sentences + [rude])
    if defect == "flattery":
        return join([rng.choice(FLATTERY)] + sentences)
    if defect == "verbose":
        # at least one padding sentence, more until the response has 16-24 words (past 26 only with one)
        target, n_words = rng.randint(16, 24), len(response.split())
        pad = []
        for s in rng.sample(PADDING, len(PADDING)):
            if pad and (n_words >= target or n_words + len(s.split()) > 26):
                break
            pad.append(s)
            n_words += len(s.split())
        if rng.random() < 0.3:
            return join(before + pad + core + after)
        return join(before + core + pad + after)
    if defect == "repetition":
        times = 2 if sum(len(s.split()) for s in core) > 5 else rng.choice((2, 3))
        return join(before + core * times + after)
    if defect == "polite_spam":
        polite = next((s for s in sentences if s in _POLITE_SET), None) or rng.choice(POLITE)
        return join([s for s in sentences if s not in _POLITE_SET] + [polite] * 3)
    raise ValueError(defect)


def sample_response(info: PromptInfo, world: World, rng: random.Random, quality: float) -> str:
    """A reference response with probability ``quality``; otherwise one defect, or two (more likely
    when quality is low: P(two) = 0.5·(1 − quality)). At most one content defect, applied first."""
    response = reference_response(info, world, rng)
    if rng.random() < quality:
        return response
    weights = applicable_defects(info)
    n = 1 if rng.random() < 0.5 + 0.5 * quality else 2
    names = list(weights)
    first = rng.choices(names, weights=[weights[d] for d in names])[0]
    chosen = [first]
    if n == 2:
        rest = [d for d in names if d in STYLE_DEFECTS and d != first]
        chosen.append(rng.choices(rest, weights=[weights[d] for d in rest])[0])
    chosen.sort(key=lambda d: (d not in CONTENT_DEFECTS, d != "off_topic"))
    for d in chosen:
        response = corrupt(info, response, world, rng, d)
    return response
