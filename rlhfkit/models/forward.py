"""Forward passes that send only the positions that matter through the LM head.

The LM head is the widest matrix of a small model (hidden x vocab) and its output the largest
tensor of a step; SFT, DPO and PPO only need log-probs at completion tokens. So the decoder runs
on the whole sequence, and ``lm_head`` only on the selected hidden states: for a 64-token prompt
and a 16-token answer that is 5x less head compute and logits memory.
"""

from __future__ import annotations

import torch

from rlhfkit.ops import entropy_from_logits, logprobs_from_logits


def _decoder_and_head(model):
    get_decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    # Models whose CausalLM forward does more than `lm_head(hidden)` (e.g. Gemma-2's logit
    # soft-capping) take the plain full forward, so their numbers stay exactly right.
    if get_decoder is None or head is None or getattr(config, "final_logit_softcapping", None):
        return None, None
    return get_decoder(), head


def shifted_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   select: torch.Tensor) -> torch.Tensor:
    """Logits that predict token t+1 from position t, only where ``select[:, t+1]`` is true.

    input_ids, attention_mask, select: (B, T). Returns (N, V) with N = select[:, 1:].sum(),
    in row-major order of the selected target positions.
    """
    target = select[:, 1:].bool()  # (B, T-1): which next-token predictions are needed
    # positions count real tokens only, as generate() does for left-padded prompts (this matters
    # for absolute-position models; for RoPE a constant shift changes nothing)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    decoder, head = _decoder_and_head(model)
    if decoder is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return logits[:, :-1][target]  # logits: (B, T, V)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                     position_ids=position_ids).last_hidden_state  # (B, T, H)
    return head(hidden[:, :-1][target])  # (N, V)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor, *, temperature: float = 1.0,
                      return_entropy: bool = False):
    """Per-token log p(x_t | x_<t) on completion tokens, zero elsewhere.

    input_ids, attention_mask, completion_mask: (B, T). Returns (B, T-1) aligned with
    ``input_ids[:, 1:]`` (and the per-token entropy, same shape, if asked). Logits are divided by
    ``temperature`` so the log-probs match those of the sampler that produced the tokens.
    """
    logits = shifted_logits(model, input_ids, attention_mask, completion_mask)  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    target = completion_mask[:, 1:].bool()
    labels = input_ids[:, 1:][target]  # (N,)
    out = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device)
    # (1, N, V): one "row" so the helper's per-row logsumexp is a single vectorised call
    out[target] = logprobs_from_logits(logits.unsqueeze(0), labels.unsqueeze(0))[0]
    if not return_entropy:
        return out
    entropy = torch.zeros_like(out)
    entropy[target] = entropy_from_logits(logits.detach().unsqueeze(0))[0]
    return out, entropy


def causal_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over positions whose label is not -100, and their count.

    labels: (B, T) with -100 on prompt and pad tokens (standard HF convention).
    """
    select = labels != -100
    logits = shifted_logits(model, input_ids, attention_mask, select)  # (N, V)
    targets = labels[:, 1:][select[:, 1:]]
    n_tokens = int(targets.numel())
    if n_tokens == 0:
        return logits.sum() * 0.0, 0
    loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    return loss, n_tokens
