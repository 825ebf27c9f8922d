"""Chat completions from a causal LM: KV-cached decoding with stop strings and per-token log-probs.

A hand-written loop instead of ``model.generate``: we need, at every step, the log-probabilities of
the model's own distribution (log_softmax of the raw logits, temperature 1, what vLLM reports by
default) whatever temperature / top-p the tokens are sampled with, and we stop a choice as soon
as its text contains a stop string. The ``n`` choices of one request are one batch of identical
prompts, so there is no padding and the cache is the model's own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from jinja2 import TemplateError  # transformers renders chat templates with jinja2

from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.serve.schema import ChatRequest, RequestError


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[TokenLogprob]
    """the most likely tokens at this step, most likely first (their own ``top`` empty)"""


@dataclass
class Choice:
    text: str
    finish_reason: str
    """'stop' (EOS or a stop string) or 'length' (max_tokens, or the model's context, reached)"""
    n_tokens: int
    """tokens generated, EOS included"""
    logprobs: list[TokenLogprob] | None = None


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the
    others for chr(256 + k) in byte order (Radford et al. 2019; the same in Llama 3, Qwen, ...)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


BYTE_LEVEL = _byte_level_table()


def token_bytes(tokenizer, token_id: int) -> list[int]:
    """The UTF-8 bytes a token stands for. Its decoded text is enough unless the token is part of a
    multi-byte character (the text is then U+FFFD): a byte-fallback piece ``<0xE2>`` or a
    byte-level piece gives the raw bytes, so a client can join the bytes of consecutive tokens."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return list(text.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return [int(piece[3:5], 16)]
    if isinstance(piece, str) and piece and all(c in BYTE_LEVEL for c in piece):
        return [BYTE_LEVEL[c] for c in piece]
    return list(text.encode("utf-8"))


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS and every EOS the generation config lists (chat models often end a turn
    with a token of their own, e.g. Llama 3's <|eot_id|>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update([extra] if isinstance(extra, int) else list(extra or []))
    return ids


def context_length(model) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _forward_arguments(model) -> tuple[str, dict]:
    """The forward argument that takes the KV cache (``cache`` in newer transformers, which deprecate
    ``past_key_values``), and what makes the prompt's forward pass return the last position's logits
    only (a (P, V) tensor of a long prompt and a large vocabulary is gigabytes)."""
    params = inspect.signature(model.forward).parameters
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), last_only


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _pick(logits: torch.Tensor, request: ChatRequest, generator) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a sample from softmax(logits / T) within
    the top-p nucleus (Holtzman et al. 2019). (n, V) -> (n,)."""
    if request.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= request.top_p] = 0.0  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class ChatModel:
    """A causal LM and its tokenizer behind ``complete(request) -> (prompt_tokens, choices)``."""

    def __init__(self, model, tokenizer, name: str, *, max_context: int | None = None):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.device = next(model.parameters()).device
        self.eos = _eos_ids(model, tokenizer)
        # the longest prompt + completion accepted: the model's own positions unless raised on purpose
        self.context = max_context or context_length(model)
        self.cache_argument, self.last_logits_only = _forward_arguments(model)
        self._tokens: dict[int, tuple[str, list[int]]] = {}

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt ids: chat template with the generation prompt, one BOS."""
        try:
            return encode_prompt(self.tokenizer, messages)
        except (ValueError, TypeError, KeyError, TemplateError) as err:  # e.g. roles out of order
            raise RequestError(f"the model's chat template cannot render these messages: {err}", "messages") from None

    @torch.no_grad()
    def complete(self, request: ChatRequest) -> tuple[int, list[Choice]]:
        prompt = self.encode(request.messages)
        budget = request.max_tokens
        if self.context is not None:
            if len(prompt) >= self.context:
                raise RequestError(f"the prompt is {len(prompt)} tokens but the model's context is {self.context}",
                                   "messages")
            budget = min(budget, self.context - len(prompt))
        return len(prompt), self._decode(prompt, request, budget)

    def _decode(self, prompt: list[int], request: ChatRequest, budget: int) -> list[Choice]:
        n = request.n
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        ids = torch.tensor([prompt] * n, device=self.device)  # (n, P)
        mask = torch.ones_like(ids)
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **self.last_logits_only)
        tokens: list[list[int]] = [[] for _ in range(n)]
        steps: list[list[TokenLogprob]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        for step in range(budget):
            logits = out.logits[:, -1].float()  # (n, V)
            logp = torch.log_softmax(logits, dim=-1)  # (n, V) the model's own distribution
            chosen = _pick(logits, request, generator)  # (n,)
            top = logp.topk(min(request.top_logprobs, logp.shape[-1]), dim=-1) if request.top_logprobs else None
            for i in range(n):
                if finish[i] is not None:
                    continue
                t = int(chosen[i])
                tokens[i].append(t)
                if t in self.eos:
                    finish[i] = "stop"
                    continue
                if request.logprobs:
                    best = [] if top is None else [self._logprob(int(j), float(v))
                                                   for v, j in zip(top.values[i], top.indices[i])]
                    steps[i].append(self._logprob(t, float(logp[i, t]), best))
                if request.stop and _first_stop(self._text(tokens[i]), request.stop) is not None:
                    finish[i] = "stop"
            if all(f is not None for f in finish) or step == budget - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            out = self.model(input_ids=chosen[:, None], attention_mask=mask, use_cache=True,
                             **{self.cache_argument: cache})
        choices = []
        for i in range(n):
            text = self._text(tokens[i])
            cut = _first_stop(text, request.stop) if request.stop else None
            choices.append(Choice(text=text if cut is None else text[:cut], finish_reason=finish[i] or "length",
                                  n_tokens=len(tokens[i]), logprobs=steps[i] if request.logprobs else None))
        return choices

    def _logprob(self, token_id: int, logprob: float, top: list[TokenLogprob] | None = None) -> TokenLogprob:
        if token_id not in self._tokens:  # (decoded text, bytes), remembered: a vocabulary is fixed
            self._tokens[token_id] = (self.tokenizer.decode([token_id]), token_bytes(self.tokenizer, token_id))
        text, raw = self._tokens[token_id]
        return TokenLogprob(text, logprob, raw, top or [])

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.eos], skip_special_tokens=True)
