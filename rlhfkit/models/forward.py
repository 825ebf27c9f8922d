"""THE decoder forward: every training, scoring and evaluation pass runs the model through here.

Two things every caller gets right this way:

- **positions**: ``position_ids = cumsum(attention_mask) - 1``, as ``generate()`` uses for
  left-padded prompts. A model with learned absolute positions (GPT-2, OPT) would otherwise see a
  left-padded row at shifted positions and give it other log-probs than the sampler and the
  reference did (0.04–0.16 nats a token on random 2-layer GPT-2s). For right-padded batches this
  equals ``arange`` on every real token, so it changes nothing there; for RoPE models a constant
  shift changes nothing either, up to float rounding.
- **completion-only LM head**: the LM head is the widest matrix of a small model (hidden x vocab)
  and its output the largest tensor of a step; SFT, DPO and PPO only need log-probs at completion
  tokens. So the decoder runs on the whole sequence and ``lm_head`` only on the selected hidden
  states: for a 64-token prompt and a 16-token answer that is 5x less head compute and memory.

Entry points: :func:`policy_forward` (log-probs, optional entropy, optional last hidden states
for a value head), :func:`sequence_logprobs` and :func:`causal_lm_loss` on top of it, and for
reward-model-shaped models (a backbone with a ``score`` head) :func:`token_values` (the head on
every hidden state: a PPO critic) and :func:`last_token_scores` (the head at the last real token:
a reward model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.ops import entropy_from_logits, last_token_index, logprobs_from_logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting real tokens only: 0 at each row's first real token (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decoder_and_head(model):
    """(decoder, lm_head) of a causal LM, or (None, None) when the full forward must be used.

    Models whose CausalLM forward does more than ``lm_head(hidden)`` (e.g. Gemma-2's logit
    soft-capping) take the plain full forward, so their numbers stay exactly right.
    """
    get_decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    if get_decoder is None or head is None or getattr(config, "final_logit_softcapping", None):
        return None, None
    return get_decoder(), head


def hidden_states(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, H) of a decoder (a backbone without head), with :func:`position_ids`."""
    return decoder(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask)).last_hidden_state


def _selected_logits(model, input_ids, attention_mask, target, *, want_hidden: bool):
    """Logits (N, V) predicting token t+1 at the positions where ``target`` (B, T-1) is true, and
    the last hidden states (B, T, H) if asked."""
    decoder, head = decoder_and_head(model)
    if decoder is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    output_hidden_states=want_hidden)
        return out.logits[:, :-1][target], (out.hidden_states[-1] if want_hidden else None)  # logits: (B, T, V)
    hidden = hidden_states(decoder, input_ids, attention_mask)  # (B, T, H)
    return head(hidden[:, :-1][target]), (hidden if want_hidden else None)


def shifted_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   select: torch.Tensor) -> torch.Tensor:
    """Logits that predict token t+1 from position t, only where ``select[:, t+1]`` is true.

    input_ids, attention_mask, select: (B, T). Returns (N, V) with N = select[:, 1:].sum(),
    in row-major order of the selected target positions.
    """
    return _selected_logits(model, input_ids, attention_mask, select[:, 1:].bool(), want_hidden=False)[0]


@dataclass
class PolicyForward:
    logprobs: torch.Tensor  # (B, T-1) log p(x_t | x_<t) aligned with input_ids[:, 1:], 0 off the completion
    entropy: torch.Tensor | None  # (B, T-1) entropy of the next-token distribution there, if asked
    hidden: torch.Tensor | None  # (B, T, H) last hidden states (for a value head), if asked


def policy_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                   *, temperature: float = 1.0, entropy: bool = False, hidden: bool = False) -> PolicyForward:
    """Per-token log-probs of the completion tokens under a causal LM (one decoder pass).

    input_ids, attention_mask, completion_mask: (B, T); left- or right-padded. Logits are divided
    by ``temperature`` so the log-probs match those of the sampler that produced the tokens.
    """
    target = completion_mask[:, 1:].bool()  # (B, T-1): which next-token predictions are needed
    logits, last_hidden = _selected_logits(model, input_ids, attention_mask, target, want_hidden=hidden)  # (N, V)
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, 1:][target]  # (N,)
    logprobs = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device)
    # (1, N, V): one "row" so the helper's per-row logsumexp is a single vectorised call
    logprobs[target] = logprobs_from_logits(logits.unsqueeze(0), labels.unsqueeze(0))[0]
    ent = None
    if entropy:
        ent = torch.zeros_like(logprobs)
        ent[target] = entropy_from_logits(logits.detach().unsqueeze(0))[0]
    return PolicyForward(logprobs=logprobs, entropy=ent, hidden=last_hidden)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_mask: torch.Tensor, *, temperature: float = 1.0,
                      return_entropy: bool = False):
    """Per-token log p(x_t | x_<t) on completion tokens, zero elsewhere: (B, T-1) aligned with
    ``input_ids[:, 1:]`` (and the per-token entropy, same shape, if asked). See :func:`policy_forward`."""
    out = policy_forward(model, input_ids, attention_mask, completion_mask, temperature=temperature,
                         entropy=return_entropy)
    return (out.logprobs, out.entropy) if return_entropy else out.logprobs


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


# ---------------------------------------------------------------- reward-model-shaped models


def segment_attention_mask(segments: torch.Tensor, positions: torch.Tensor | None = None,
                           window: int | None = None) -> torch.Tensor:
    """(B, L) segment ids (0 = a shared prompt, k > 0 = the k-th response packed after it, -1 = pad)
    -> (B, 1, L, L) bool, True where query t may attend to key s: s <= t, s is real, and s is on the
    prompt or on t's own segment; with a sliding ``window`` (and the (B, L) ``positions``) also
    position(t) − position(s) < window, as Mistral's mask has it. A pad attends to itself only, so no
    row is empty (an all-masked row gives NaN in SDPA, which would reach the gradients)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]  # (B, L, 1), (B, 1, L)
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    if window is not None:
        allowed &= positions[:, :, None] - positions[:, None, :] < window
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device) & (query < 0)
    return allowed[:, None]


def _sliding_window(config) -> tuple[bool, int | None]:
    """(whether one mask serves every layer, the window every layer has or None)."""
    window = getattr(config, "sliding_window", None)
    if not window or not getattr(config, "use_sliding_window", True):
        return True, None
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if kinds == {"sliding_attention"}:
        return True, int(window)
    return "sliding_attention" not in kinds, None  # a mix of windowed and full layers needs two masks


def supports_segment_mask(backbone) -> bool:
    """Whether a backbone takes a custom (B, 1, L, L) attention mask as it is and one mask serves all
    its layers: the SDPA and eager attention of Hugging Face decoders, with no window or the same
    window on every layer; not flash attention, encoders' own masking, or Gemma-2's alternating layers."""
    config = getattr(backbone, "config", None)
    return (getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
            and not getattr(config, "is_encoder_decoder", False) and _sliding_window(config)[0])


def segment_hidden_states(backbone, input_ids: torch.Tensor, positions: torch.Tensor,
                          segments: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, L, H) of packed sequences (see
    :func:`rlhfkit.data.tokenize.pack_shared_prompt`): the mask of :func:`segment_attention_mask`
    and the given position ids, so each packed response gets the hidden states it has alone after
    its prompt."""
    allowed = segment_attention_mask(segments, positions, _sliding_window(backbone.config)[1])
    if backbone.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = backbone.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        allowed = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return backbone(input_ids=input_ids, attention_mask=allowed, position_ids=positions).last_hidden_state


def backbone_and_score(model):
    """(backbone, score head) of a sequence classifier (LoRA-wrapped or not); (None, None) if it has
    no such parts (then the full forward is used)."""
    from rlhfkit.models.loading import is_peft

    inner = model.get_base_model() if is_peft(model) else model  # LoRA layers live inside it
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    head = getattr(inner, "score", None)
    if backbone is None or head is None:
        return None, None
    return backbone, head


def token_values(critic, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token values of a reward-model-shaped critic: its ``score`` head on every hidden state.
    (B, T) -> (B, T) float32 (a reward model reads the same head at the last real token only)."""
    backbone, head = backbone_and_score(critic)
    if backbone is None:
        raise TypeError(f"{type(critic).__name__} has no backbone + score head: it cannot serve as a critic")
    return head(hidden_states(backbone, input_ids, attention_mask))[..., 0].float()


def last_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar score of each sequence, read at its last real token. (B, T) -> (B,) float32.

    The position comes from the attention mask, not from the model's pad-token search, which is
    wrong when pad == EOS and the sequence ends with EOS; and the score head runs on B hidden
    states instead of B x T.
    """
    index = last_token_index(attention_mask)  # (B,)
    backbone, head = backbone_and_score(model)
    if backbone is None:  # an unusual classifier: its own pooling (the pad-token search) decides; no
        # position ids either, since encoders count positions their own way (RoBERTa from padding_idx + 1)
        # and some take none (DistilBERT)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, 1)
        return logits[:, 0].float()
    return _scores_at_last_token(head, hidden_states(backbone, input_ids, attention_mask), index)


def _scores_at_last_token(head, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The score head on each row's hidden state at ``index``: (B, T, H), (B,) -> (B,) float32."""
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # (B, H)
    return head(last)[:, 0].float()


def scores_and_lm_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor,
                         lm_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A reward model's scores and, from the same decoder pass, next-token logits of the backbone's
    hidden states through an LM head (GRM's text-generation regulariser, Yang et al. 2024).

    input_ids, attention_mask, select: (B, T); lm_weight: (V, H) output embeddings. Returns scores
    (B,) float32, read at the last real token as :func:`last_token_scores` reads them, and logits
    (N, V) predicting token t+1 from position t where ``select[:, t+1]`` is true (N =
    ``select[:, 1:].sum()``, row-major), the head run on those N hidden states only."""
    backbone, head = backbone_and_score(model)
    if backbone is None:
        raise TypeError(f"{type(model).__name__} has no backbone + score head: no hidden states for an LM loss")
    hidden = hidden_states(backbone, input_ids, attention_mask)  # (B, T, H)
    target = select[:, 1:].bool()  # (B, T-1)
    logits = torch.nn.functional.linear(hidden[:, :-1][target], lm_weight)  # (N, V)
    return _scores_at_last_token(head, hidden, last_token_index(attention_mask)), logits
