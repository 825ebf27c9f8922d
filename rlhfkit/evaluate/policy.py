"""Score a policy on the built-in task: sample, score with gold, compare with a baseline, KL to SFT.

Every method's entry in ``summary.json`` comes from :func:`summarize`, so all are measured on
the same prompts, the same number of samples and the same axes.

Win-rate intervals take the prompt as the unit (:data:`INTERVALS`, written into ``summary.json``):
a prompt's win is the mean outcome of its samples against the baseline's samples of that prompt,
and the interval is a seeded percentile bootstrap of the mean over prompts. Samples of one prompt
are correlated, so an interval over prompts × samples as independent trials would be too narrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from rlhfkit.data.tokenize import encode_prompt, pad_batch
from rlhfkit.evaluate import metrics as M
from rlhfkit.models.forward import sequence_logprobs
from rlhfkit.rollout.sample import generate_texts


INTERVALS = {"unit": "prompt", "method": "bootstrap", "n_resamples": 2000, "confidence": 0.95, "seed": 0}
"""How every win-rate interval is computed (percentile bootstrap over prompts); recorded in summary.json."""


@dataclass
class PolicySamples:
    prompts: list[str]
    responses: list[list[str]]  # (n_prompts, n_samples)
    gold: list[list[float]]
    response_ids: list[list[list[int]]] | None = None  # sampled tokens, for exact log-probs

    def flat(self) -> tuple[list[str], list[str]]:
        """(prompt, response) of every sample, the prompt repeated once per sample."""
        prompts = [p for p, rs in zip(self.prompts, self.responses) for _ in rs]
        return prompts, [r for rs in self.responses for r in rs]


def sample_and_score(model, tokenizer, task, prompts: list[str], *, n: int, max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0) -> PolicySamples:
    responses, ids = generate_texts(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                                    temperature=temperature, seed=seed, return_ids=True)
    gold = [[task.gold(p, r) for r in rs] for p, rs in zip(prompts, responses)]
    return PolicySamples(prompts=prompts, responses=responses, gold=gold, response_ids=ids)


@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, prompts: list[str], responses: list[str], *,
                response_ids: list[list[int]] | None = None, batch_size: int = 64,
                temperature: float = 1.0) -> float:
    """Mean over samples of Σ_t [log π(y_t) − log π_ref(y_t)] on the policy's own samples: a Monte
    Carlo estimate of KL(π ‖ π_ref) per sequence (k1 estimator), in nats. Pass the sampled
    ``response_ids`` when known: re-tokenising the text can give a different (non-canonical)
    token sequence than the one the policy sampled."""
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        ps, rs = prompts[start: start + batch_size], responses[start: start + batch_size]
        seqs, comp = [], []
        given = response_ids[start: start + batch_size] if response_ids is not None else [None] * len(ps)
        for p, r, sampled in zip(ps, rs, given):
            prompt_ids = encode_prompt(tokenizer, p)
            resp_ids = sampled if sampled else tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            seqs.append(prompt_ids + resp_ids)
            comp.append([0] * len(prompt_ids) + [1] * len(resp_ids))
        ids, mask = pad_batch(seqs, tokenizer.pad_token_id)
        completion, _ = pad_batch(comp, 0)
        lp = sequence_logprobs(policy, ids, mask, completion, temperature=temperature)
        ref = sequence_logprobs(reference, ids, mask, completion, temperature=temperature)
        total += float((lp - ref).sum())
        count += len(ps)
    return total / max(count, 1)


def summarize(task, samples: PolicySamples, *, baseline: PolicySamples | None = None,
              baseline_name: str = "sft") -> dict:
    """The keys every method reports (stable: they are how progress is measured)."""
    flat_prompts, flat_responses = samples.flat()
    flat_gold = [g for gs in samples.gold for g in gs]
    rates = M.sycophancy_rates(task, flat_prompts, flat_responses)
    entry = {
        "gold_reward": sum(flat_gold) / len(flat_gold),
        "mean_length": M.mean_length(flat_responses),
        "distinct_2": M.distinct_n(flat_responses, 2),
        "sycophancy_rate": rates["sycophancy_rate"],
        "contrarian_rate": rates["contrarian_rate"],
    }
    if baseline is not None:
        # Each policy sample is compared with every baseline sample of the same prompt; the prompt is the unit.
        if baseline.prompts != samples.prompts:
            raise ValueError("the baseline was sampled on other prompts than the policy")
        win = M.win_rate_by_prompt(samples.gold, baseline.gold, n_resamples=INTERVALS["n_resamples"],
                                   confidence=INTERVALS["confidence"], seed=INTERVALS["seed"])
        entry[f"win_rate_vs_{baseline_name}"] = win["win_rate"]
        entry[f"win_rate_vs_{baseline_name}_ci"] = [win["ci_low"], win["ci_high"]]
    return entry


def save_samples(samples: PolicySamples, path) -> None:
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prompts": samples.prompts, "responses": samples.responses, "gold": samples.gold,
                                "response_ids": samples.response_ids}))


def load_samples(path) -> PolicySamples:
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    return PolicySamples(prompts=data["prompts"], responses=data["responses"], gold=data["gold"],
                         response_ids=data.get("response_ids"))
