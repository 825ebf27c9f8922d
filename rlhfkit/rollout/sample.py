"""Sample text responses from a policy folder or model: what evaluation, judges and the app use."""

from __future__ import annotations

import torch

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.rollout.hf import HFGenerator, decode_responses


def generate_texts(model, tokenizer, prompts: list, *, n: int = 1, max_new_tokens: int = 64,
                   temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                   batch_size: int = 64, seed: int = 0, return_ids: bool = False):
    """``n`` sampled responses for each prompt (string or message list), as texts.

    With ``return_ids`` also the sampled token ids of each response (up to and including its EOS):
    exact log-probs need the tokens that were sampled, not a re-tokenisation of the text.
    """
    torch.manual_seed(seed)
    ids = [encode_prompt(tokenizer, p) for p in prompts for _ in range(n)]
    generator = HFGenerator(model, tokenizer, SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                                             top_p=top_p, top_k=top_k, batch_size=batch_size))
    rollout = generator.generate(ids)
    texts = decode_responses(tokenizer, rollout)
    grouped = [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
    if not return_ids:
        return grouped
    flat_ids = [[int(t) for t, m in zip(row, mask) if m] for row, mask in zip(rollout.response_ids, rollout.response_mask)]
    return grouped, [flat_ids[i * n:(i + 1) * n] for i in range(len(prompts))]


def sample_texts(model_dir: str, prompts: list, *, n: int, max_new_tokens: int = 64,
                 temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """Load the policy in ``model_dir`` and return ``n`` responses per prompt."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    return generate_texts(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed)
