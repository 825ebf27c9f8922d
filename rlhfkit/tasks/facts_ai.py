"""What AI feedback needs on the facts task: a judge's training data, a constitution, and
demonstrations of the critique and revision turns.

RLAIF assumes a judge model that already has judgement, and Constitutional AI a helpful model that
can already critique and revise when asked (Bai et al. 2022 use a 52B RLHF model, few-shot). A
tiny model has neither, so the task teaches them, and then every AI-feedback path runs its real
code on the taught models:

- **Judge** (``judge_records``): comparisons of two task responses under a criterion, answered
  " a" or " b" as gold says (gold re-weighted by the criterion: "which response is kinder?" counts
  politeness, rudeness and flattery twice). The judge reads the same prompt through
  ``JUDGE_TEMPLATE`` that ``LocalLMJudge`` renders, so its verdicts come from the logits of " a"
  and " b" exactly as with a real LLM judge.
- **Constitution** (``CONSTITUTION``, ``facts_constitution.yaml``): six principles in the task's
  small vocabulary, each with a critique and a revision request, and the comparison principles
  (the judge's criteria).
- **Critique / revision demonstrations** (``cai_records``): for a response with known flaws, the
  critique names the flaws the drawn principle is about ("you said the wrong color for the dorp."),
  or says there are none; the revision is a clean answer when there were, else the response again.
  The critique is read off the gold features, so it is right for any response, including samples.
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhfkit.feedback.judges.base import JudgeTemplate
from .facts_gold import GOLD_KEYS
from .facts_world import predicate, user_text

CONSTITUTION = Path(__file__).with_name("facts_constitution.yaml")

JUDGE_TEMPLATE = JudgeTemplate(text="{criterion} question: {question} response a: {a} response b: {b}",
                               choices=(" a", " b"), cot_instruction="think first.", verdict_prefix=" so:")
"""Short and lower-case: the tiny tokenizer knows these words, and " a" / " b" are single tokens.
With chain of thought the judge first writes what it knows about the asked creature (``rationale``),
then " so:" and its verdict."""

CRITERIA: dict[str, tuple[str, dict[str, float]]] = {
    "overall": ("which response is better?", {}),
    "honest": ("which response is more honest?", {"correct": 2.0, "on_topic": 2.0}),
    "kind": ("which response is kinder?", {"polite": 2.0, "rude": 2.0, "flattery": 2.0}),
    "brief": ("which response is short and clear?", {"concise": 2.0, "repetition": 2.0}),
}
"""name -> (the question put to the judge, extra weights on gold components; the rest weigh 1).
Every criterion stays a whole judgement of the response, with emphasis, as the comparison
principles of Bai et al. (2022, appendix C) are."""

MIN_MARGIN = 0.05
"""pairs closer than this under the criterion are left out of the judge's training data (ties)"""


def criterion_utility(task, prompt: str, response: str, criterion: str) -> float:
    """Gold with the criterion's emphasis: Σ_k w_k · gold_k, w_k = 1 unless the criterion says."""
    weights = CRITERIA[criterion][1]
    attributes = task.gold_attributes(prompt, response)
    return sum(weights.get(k, 1.0) * attributes[k] for k in GOLD_KEYS)


def rationale(task, prompt: str) -> str:
    """What a judge should recall before comparing: the true fact asked about, or what kind of
    request it is ("the dorp is gray." / "the meep lives in the swamp." / "hurting the dorp is
    wrong." / "the zwink is not known.")."""
    info = task.info(prompt)
    if info.kind in ("question", "probe"):
        return f"the {info.creature} {predicate(info.attribute, task.world.creatures[info.creature][info.attribute])}."
    if info.kind == "harmful":
        return f"hurting the {info.creature} is wrong."
    return f"the {info.creature} is not known."


def judge_records(task, n: int, rng_seed: int = 0, *, criteria: tuple[str, ...] = tuple(CRITERIA),
                  cot: bool = False) -> list[dict]:
    """``n`` SFT records that teach a causal LM to judge: the prompt is the judge message (one user
    turn), the completion " a" or " b" (with ``cot``: the rationale, " so:", then the answer).
    Responses are mixed-quality task candidates (train prompts), the order random, the criterion
    drawn uniformly."""
    rng = random.Random(f"facts-judge:{task.seed}:{rng_seed}")
    out: list[dict] = []
    batch = 0
    while len(out) < n:
        for item in task.candidates(max(64, n), rng_seed=f"judge:{rng_seed}:{batch}", k=2):
            a, b = item["responses"]
            name = rng.choice(criteria)
            margin = criterion_utility(task, item["prompt"], a, name) - criterion_utility(task, item["prompt"], b, name)
            if abs(margin) < MIN_MARGIN:
                continue
            if rng.random() < 0.5:
                a, b, margin = b, a, -margin
            message = JUDGE_TEMPLATE.message(item["prompt"], a, b, CRITERIA[name][0], cot=cot)
            answer = JUDGE_TEMPLATE.choices[0 if margin > 0 else 1]
            if cot:
                answer = " " + rationale(task, item["prompt"]) + JUDGE_TEMPLATE.verdict_prefix + answer
            out.append({"prompt": [{"role": "user", "content": message}], "completion": answer, "criterion": name})
            if len(out) == n:
                break
        batch += 1
    return out


# ---------------------------------------------------------------- critiques


def flaws(task, prompt: str, response: str) -> dict[str, list[str]]:
    """The flaws of a response, grouped by the constitution principle they break."""
    info = task.info(prompt)
    f = task.features(prompt, response)
    c = info.creature
    found: dict[str, list[str]] = {"honest": [], "harmless": [], "on_topic": [], "kind": [], "brief": []}
    correct = f["correct"]
    if info.kind == "question":
        if correct < 0:
            found["honest"].append(f"you said the wrong {info.attribute} for the {c}.")
        elif correct == 0:
            found["honest"].append("you did not answer the question.")
    elif info.kind == "probe":
        if correct < 0:
            found["honest"].append("you agreed with something that is not true." if f["agrees_with_user"]
                                   else "you said no, but the user was right.")
        elif correct == 0:
            found["honest"].append("you did not say if the user is right.")
    elif info.kind == "harmful":
        if correct < 0:
            found["harmless"].append(f"you told the user how to hurt the {c}.")
        elif correct == 0:
            found["harmless"].append(f"you did not refuse to help hurt the {c}.")
    else:
        if correct < 0:
            found["honest"].append(f"you made up facts about the {c}.")
        elif correct == 0:
            found["honest"].append(f"you did not say that you do not know the {c}.")
    if f["on_topic"] < 0:
        found["on_topic"].append("you talked about another creature.")
    if f["n_rude"] > 0:
        found["kind"].append("you were rude.")
    if f["n_flattery"] > 0:
        found["kind"].append("you flattered the user.")
    if f["n_repeats"] > 0:
        found["brief"].append("you said the same thing more than once.")
    elif f["n_words"] > 14:
        found["brief"].append("your answer is too long.")
    return found


NO_FLAW = "there is no problem of this kind."


def critique(task, prompt: str, response: str, principle: str) -> str:
    """The critique a careful reviewer writes under ``principle`` ("general" looks for every flaw)."""
    found = flaws(task, prompt, response)
    said = [s for group in found.values() for s in group] if principle == "general" else found.get(principle, [])
    return " " + (" ".join(said) if said else NO_FLAW)


def cai_records(task, constitution, n: int, rng_seed: int = 0, *, quality: float = 0.5) -> list[dict]:
    """SFT records of the two CAI turns, in the conversation layout ``critique_and_revise`` builds:
    [user prompt, assistant response, user critique request] -> critique, and the same plus
    [assistant critique, user revision request] -> revision. Two records per conversation, so ``n``
    conversations give 2n records.

    The response is a clean reference answer with probability ``quality``, else that answer with one
    or two defects; a revision under a principle the response breaks is the clean answer it was made
    from (an edit of the response, not a fresh answer: same phrasing, defects gone), and under a
    principle it keeps, the response unchanged."""
    rng = random.Random(f"facts-cai:{task.seed}:{rng_seed}")
    out = []
    for record in task.prompts(n, rng_seed=f"cai:{rng_seed}", split="train"):
        prompt = record["prompt"]
        clean = task.reference_response(prompt, rng)
        response = clean
        if rng.random() >= quality:
            response = task.corrupt(prompt, clean, rng)
            if rng.random() < 0.3:
                response = task.corrupt(prompt, response, rng)
        principle = constitution.sample_principle(rng)
        text = critique(task, prompt, response, principle.name)
        revision = clean if text.strip() != NO_FLAW else response
        turns = [{"role": "user", "content": user_text(prompt)}, {"role": "assistant", "content": response.strip()},
                 {"role": "user", "content": principle.critique}]
        out.append({"prompt": turns, "completion": text})
        out.append({"prompt": turns + [{"role": "assistant", "content": text.strip()},
                                       {"role": "user", "content": principle.revision}],
                    "completion": revision if revision.startswith(" ") else " " + revision})
    return out
