"""A local causal LM as judge: P(a better) from the next-token logits of the two answers.

The judge message (:class:`JudgeTemplate`) is one user turn, rendered through the judge's chat
template with the generation prompt. The verdict is read where the judge would write its answer:
the logits l₁, l₂ of the first token of each choice ("A", "B"), P(first) = σ(l₁ − l₂). This is the
"soft" AI label of RLAIF (Lee et al. 2023, sec. 2.1: the log-probabilities of the answer tokens,
softmaxed), which carries the judge's confidence instead of a hard 0/1 vote. Each pair is shown in
both orders and the two readings averaged, because LLM judges favour a position (Lee et al. 2023,
sec. 3.1; Zheng et al. 2023, "Judging LLM-as-a-judge", sec. 3.3-3.4).

With ``cot`` the judge first writes its reasoning (greedy decoding), then ``verdict_prefix`` is
appended and the logits are read after it (chain-of-thought labels, Lee et al. 2023, sec. 2.1.2).

Prompts are sorted by length and right-padded; the decoder runs on the whole batch but only each
row's last real position goes through the LM head (as in :mod:`rlhfkit.models.forward`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Sequence

import torch

from rlhfkit.data.tokenize import encode_prompt, pad_batch, render_prompt
from rlhfkit.feedback.judges.base import (DEFAULT_CRITERION, BothOrdersJudge, JudgeTemplate, Prompt,
                                          two_choice_probability)
from rlhfkit.models.forward import decoder_and_head, hidden_states, position_ids
from rlhfkit.models.loading import model_label, stop_token_ids
from rlhfkit.models.precision import resolve_precision

log = logging.getLogger(__name__)


def first_difference(shorter: Sequence[int], longer: Sequence[int]) -> int:
    """Index of the first position where two id lists differ (the shorter length if one is a prefix)."""
    for k, (x, y) in enumerate(zip(shorter, longer)):
        if x != y:
            return k
    return min(len(shorter), len(longer))


class LocalLMJudge(BothOrdersJudge):
    """A causal LM folder (or a loaded model and its tokenizer) as a pairwise judge."""

    def __init__(self, model_or_dir, tokenizer=None, *, template: JudgeTemplate = JudgeTemplate(),
                 criterion: str = DEFAULT_CRITERION, both_orders: bool = True, cot: bool = False,
                 cot_max_new_tokens: int = 128, batch_size: int = 16, max_length: int = 1024,
                 precision: str = "auto", name: str | None = None, device: str | None = None,
                 log_every: int = 20):
        if isinstance(model_or_dir, (str, Path)):
            from rlhfkit.models.loading import load_causal_lm, load_tokenizer

            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_or_dir)
            model = load_causal_lm(model_or_dir)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            name = name or f"local:{model_label(model_or_dir)}"
        else:
            if tokenizer is None:
                raise ValueError("LocalLMJudge: a model object needs its tokenizer (tokenizer=...)")
            model = model_or_dir
            if device is not None:
                model.to(device)
        self.model, self.tokenizer, self.template, self.criterion = model, tokenizer, template, criterion
        self.both_orders, self.cot, self.cot_max_new_tokens = both_orders, cot, cot_max_new_tokens
        self.batch_size, self.max_length = batch_size, max_length
        self.precision = resolve_precision(precision, next(model.parameters()).device)
        self.name, self.log_every = name or "local", log_every
        self._warned_multi_token = False

    # ------------------------------------------------------------ text and token ids

    def prompt_text(self, message: str) -> str:
        """The judge message as the model reads it: one user turn through the chat template (with
        the generation prompt) when the tokenizer has one, else the message itself."""
        if getattr(self.tokenizer, "chat_template", None):
            return render_prompt(self.tokenizer, [{"role": "user", "content": message}])
        return message

    def choice_ids(self, text: str) -> tuple[list[int], tuple[int, int]]:
        """The ids of a judge prompt and, for each choice, the token it starts with after it: the
        first token where ``tokenize(text + choice)`` differs from ``tokenize(text)``."""
        ids = encode_prompt(self.tokenizer, text)
        picked = []
        for choice in self.template.choices:
            full = encode_prompt(self.tokenizer, text + choice)
            k = first_difference(ids, full)
            if k != len(ids) or k >= len(full):
                raise ValueError(f"choice {choice!r} does not start a new token after the judge prompt (it merges "
                                 f"with the prompt's end {text[-20:]!r}): end the template differently or change "
                                 "the choices")
            if len(full) - len(ids) > 1 and not self._warned_multi_token:
                self._warned_multi_token = True
                log.warning("judge choice %r is %d tokens; its verdict is read from the first one only",
                            choice, len(full) - len(ids))
            picked.append(full[k])
        if picked[0] == picked[1]:
            first, second = self.template.choices
            raise ValueError(f"judge choices {first!r} and {second!r} both start with the token "
                             f"{self.tokenizer.convert_ids_to_tokens(picked[0])!r}, so the judge cannot tell them "
                             "apart: choose answers whose first tokens differ")
        return ids, (picked[0], picked[1])

    def _check_length(self, n_tokens: int, comparison: int, what: str) -> None:
        if n_tokens > self.max_length:
            raise ValueError(f"comparison {comparison}: the {what} is {n_tokens} tokens, more than "
                             f"max_length={self.max_length} (shorten the responses or raise max_length)")

    # ------------------------------------------------------------ judging

    def judge_shown(self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str], *,
                    criterion: str, comparison: Sequence[int]) -> list[tuple[float, str | None]]:
        texts = [self.prompt_text(self.template.message(p, x, y, criterion, cot=self.cot))
                 for p, x, y in zip(prompts, first, second)]
        rationales: list[str | None] = [None] * len(texts)
        if self.cot:
            seqs = [encode_prompt(self.tokenizer, t) for t in texts]
            for seq, c in zip(seqs, comparison):
                self._check_length(len(seq), c, "judge prompt")
            written = [self._cut_at_verdict(r) for r in self.reason(seqs)]
            rationales = [r.strip() for r in written]
            texts = [t + r + self.template.verdict_prefix for t, r in zip(texts, written)]
        encoded = [self.choice_ids(t) for t in texts]
        for (ids, _), c in zip(encoded, comparison):
            self._check_length(len(ids), c, "judge prompt with its reasoning" if self.cot else "judge prompt")
        probs = self.first_choice_probs([ids for ids, _ in encoded], [pair for _, pair in encoded])
        return list(zip(probs, rationales))

    def _cut_at_verdict(self, text: str) -> str:
        """The reasoning up to where the judge began a verdict itself (ours is appended after it); the
        marker counts only at the start of a word ("so:" is not the end of "also:")."""
        marker = self.template.verdict_prefix.strip()
        found = re.search(r"(?:^|(?<=\s))" + re.escape(marker), text) if marker else None
        return text[: found.start()].rstrip() if found else text.rstrip()

    def _autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self, seqs: list[list[int]]) -> list[list[int]]:
        """Index batches, longest prompts first, so each batch pads little (and memory peaks early)."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        return [order[s: s + self.batch_size] for s in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def first_choice_probs(self, seqs: list[list[int]], choices: list[tuple[int, int]]) -> list[float]:
        """P(first choice) = σ(l₁ − l₂) after each prompt, from one forward pass per batch."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        decoder, head = decoder_and_head(self.model)
        was_training = self.model.training
        self.model.eval()
        out = [0.0] * len(seqs)
        batches = self._batches(seqs)
        for number, idx in enumerate(batches, start=1):
            ids, mask = pad_batch([seqs[i] for i in idx], pad)  # (B, T), right-padded
            ids, mask = ids.to(device), mask.to(device)
            rows = torch.arange(len(idx), device=device)
            last = mask.sum(1) - 1  # (B,) each row's last real token
            with self._autocast(device):
                if decoder is None:
                    logits = self.model(input_ids=ids, attention_mask=mask,
                                        position_ids=position_ids(mask)).logits[rows, last]  # (B, V)
                else:
                    hidden = hidden_states(decoder, ids, mask)  # (B, T, H)
                    logits = head(hidden[rows, last])  # (B, V): the head on B positions only
            picked = logits.float().gather(1, torch.tensor([choices[i] for i in idx], device=device)).cpu()  # (B, 2)
            for row, i in enumerate(idx):
                out[i] = two_choice_probability(float(picked[row, 0]), float(picked[row, 1]))
            if len(batches) > self.log_every and number % self.log_every == 0:
                log.info("judge %s: %d/%d batches", self.name, number, len(batches))
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def reason(self, seqs: list[list[int]]) -> list[str]:
        """The judge's reasoning after each prompt: greedy, up to ``cot_max_new_tokens``, to EOS."""
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stops = stop_token_ids(self.model, tok)
        was_training = self.model.training
        self.model.eval()
        out = [""] * len(seqs)
        for idx in self._batches(seqs):
            ids, mask = pad_batch([seqs[i] for i in idx], pad, side="left")
            with self._autocast(device):
                generated = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                    max_new_tokens=self.cot_max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                    temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(idx):
                new = generated[row, ids.shape[1]:].tolist()
                ends = [k for k, t in enumerate(new) if t in stops]
                if ends:
                    new = new[: ends[0]]
                out[i] = tok.decode(new, skip_special_tokens=True)
        self.model.train(was_training)
        return out
