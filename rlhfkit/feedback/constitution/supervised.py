"""The supervised phase of Constitutional AI (Bai et al. 2022, sec. 3.1): answer, critique, revise.

For each prompt the model answers; then, ``n_revisions`` times, a principle is drawn at random, the
model is asked to critique its current response under it, and then to revise the response in the
light of that critique. The final revisions are SFT data (SL-CAI), and (revision, initial) pairs are
preference data.

One departure from the paper, on purpose: each round sees the prompt and the *current* response only,
not the transcript of the earlier rounds. Bai et al. keep one growing conversation, which a 52B model
with a long context reads well; a small model's context (and attention) runs out after a round or
two, and the revision replaces the response anyway. Every generation of a round is one batched call
(all critiques, then all revisions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from rlhfkit.feedback.constitution.spec import Constitution


def prompt_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a message list as it is; the "User: <text>\\nAssistant:" layout of
    plain-text prompts (the built-in task's) parsed back into one user turn; any other string is
    one user turn."""
    if isinstance(prompt, list):
        return [dict(m) for m in prompt]
    text = prompt.strip()
    if text.startswith("User:") and text.endswith("Assistant:") and text.count("User:") == 1:
        return [{"role": "user", "content": text[len("User:"): -len("Assistant:")].strip()}]
    return [{"role": "user", "content": text}]


@dataclass
class CAIExample:
    """One prompt's way through the supervised phase."""

    prompt: object
    initial: str
    steps: list[dict] = field(default_factory=list)
    """one {"principle", "critique", "revision"} per round"""

    @property
    def final(self) -> str:
        return self.steps[-1]["revision"] if self.steps else self.initial

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "initial": self.initial, "steps": self.steps, "final": self.final}


def critique_turns(prompt, response: str, principle) -> list[dict]:
    """The conversation the critique is generated after."""
    return prompt_messages(prompt) + [{"role": "assistant", "content": response.strip()},
                                      {"role": "user", "content": principle.critique}]


def revision_turns(prompt, response: str, principle, critique: str) -> list[dict]:
    """The conversation the revision is generated after."""
    return critique_turns(prompt, response, principle) + [{"role": "assistant", "content": critique.strip()},
                                                          {"role": "user", "content": principle.revision}]


def critique_and_revise(model, tokenizer, prompts: Sequence, constitution: Constitution, *, n_revisions: int = 1,
                        rng_seed: int = 0, max_new_tokens: int = 64, temperature: float = 0.7, batch_size: int = 32,
                        initial_responses: Sequence[str] | None = None, seed_offset: int = 0,
                        accept_judge=None) -> list[CAIExample]:
    """Run the supervised phase on ``prompts``. Principles are drawn per prompt and round from
    ``random.Random(f"{rng_seed}:{seed_offset + i}:{round}")``, so a prompt's draws do not depend on
    the batch it is in (a resumed run draws the same).

    With ``accept_judge`` (a :class:`Judge`) a revision replaces the current response only when the
    judge prefers it (P >= 0.5); otherwise the round keeps the response, and the step says so
    (``accepted``). Bai et al. keep every revision; a small model that rewrites a response with
    nothing wrong in it makes it worse as often as it fixes a flawed one, and the judge is the
    feedback model the method has anyway."""
    from rlhfkit.rollout.sample import generate_texts

    def generate(conversations: list, salt: int) -> list[str]:
        texts = generate_texts(model, tokenizer, conversations, n=1, max_new_tokens=max_new_tokens,
                               temperature=temperature, batch_size=batch_size, seed=rng_seed * 1000 + salt)
        return [group[0].strip() for group in texts]

    if initial_responses is None:
        initial_responses = generate([prompt_messages(p) for p in prompts], seed_offset)
    examples = [CAIExample(prompt=p, initial=r.strip()) for p, r in zip(prompts, initial_responses)]
    for round_ in range(n_revisions):
        drawn = [constitution.sample_principle(random.Random(f"{rng_seed}:{seed_offset + i}:{round_}"))
                 for i in range(len(examples))]
        critiques = generate([critique_turns(e.prompt, e.final, p) for e, p in zip(examples, drawn)],
                             seed_offset + 7919 * (2 * round_ + 1))
        revisions = generate([revision_turns(e.prompt, e.final, p, c) for e, p, c in zip(examples, drawn, critiques)],
                             seed_offset + 7919 * (2 * round_ + 2))
        accepted = [True] * len(examples)
        if accept_judge is not None:
            verdicts = accept_judge.compare_batch([e.prompt for e in examples], revisions, [e.final for e in examples])
            accepted = [bool(r.strip()) and v.prob_a >= 0.5 for r, v in zip(revisions, verdicts)]
        for e, p, c, r, ok in zip(examples, drawn, critiques, revisions, accepted):
            step = {"principle": p.name, "critique": c, "revision": r if ok else e.final}
            if accept_judge is not None:
                step.update(accepted=ok, proposed=r)
            e.steps.append(step)
    return examples


def _completion(text: str) -> str:
    return text if text.startswith(" ") else " " + text


def sft_records(examples: Sequence[CAIExample]) -> list[dict]:
    """SL-CAI data: each prompt with its final revision (empty revisions left out)."""
    return [{"prompt": e.prompt, "completion": _completion(e.final)} for e in examples if e.final.strip()]


def revision_pairs(examples: Sequence[CAIExample]) -> list[dict]:
    """(final revision ≻ initial response) pairs, where the two differ and both are non-empty."""
    return [{"prompt": e.prompt, "chosen": _completion(e.final), "rejected": _completion(e.initial)}
            for e in examples if e.final.strip() and e.initial.strip() and e.final.strip() != e.initial.strip()]
