"""How a reward-model step's sequences go through the model: a row per response
(:func:`separate_passes`), or each record's prompt once with its responses packed after it
(:func:`shared_prompt_passes`); both optionally cut into passes of similar lengths. Each returns the
rewards in the groups' order and, for GRM's LM term, the logits and target tokens; the loss itself
lives in :mod:`rlhfkit.train.reward_model`."""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

import torch

from rlhfkit.data.tokenize import length_buckets, lm_positions, pack_shared_prompt, pad_batch
from rlhfkit.models.forward import (backbone_and_score, scores_and_lm_logits, segment_hidden_states,
                                   supports_segment_mask)
from rlhfkit.models.reward_model import reward_forward

if TYPE_CHECKING:
    from rlhfkit.train.reward_model import Group


def group_offsets(groups: list[Group]) -> list[int]:
    """Index of each group's first sequence in the step's flat list of sequences."""
    offsets, total = [], 0
    for g in groups:
        offsets.append(total)
        total += len(g.seqs)
    return offsets


def separate_passes(model, groups: list[Group], *, pad_token_id: int, device, lm_weight: torch.Tensor | None,
                    buckets: bool):
    """Every sequence on its own row: (rewards (N,) in the groups' order, LM logits (M, V) and their
    target tokens (M,), or None, None without ``lm_weight``)."""
    seqs = [s for g in groups for s in g.seqs]
    # one forward pass per run of similar lengths (a ranking's four responses, say, differ a lot):
    # the same scores and LM tokens as one padded pass, on fewer padded tokens
    runs = length_buckets([len(s) for s in seqs]) if buckets else [list(range(len(seqs)))]
    select_all = completion_select(groups, max(len(s) for s in seqs)) if lm_weight is not None else None  # (N, T)
    run_rewards, run_logits, run_targets = [], [], []
    for run in runs:
        ids, mask = pad_batch([seqs[i] for i in run], pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        if lm_weight is not None:
            select = select_all[run, :ids.shape[1]].to(device)  # (n, T_run)
            rewards, logits = scores_and_lm_logits(model, ids, mask, select, lm_weight)  # (n,), (m, V)
            run_logits.append(logits)
            run_targets.append(ids[:, 1:][select[:, 1:]])  # (m,)
        else:
            rewards = reward_forward(model, ids, mask)  # (n,)
        run_rewards.append(rewards)
    position = torch.tensor([i for run in runs for i in run], device=device)  # run order -> sequence
    rewards = torch.cat(run_rewards)[torch.argsort(position)]  # (N,) back in the groups' order
    if lm_weight is None:
        return rewards, None, None
    return rewards, torch.cat(run_logits), torch.cat(run_targets)


def shared_prompt_passes(model, groups: list[Group], *, pad_token_id: int, device, lm_weight: torch.Tensor | None,
                         buckets: bool):
    """Each record's prompt through the model once (:func:`pack_shared_prompt`; records whose
    sequences do not share it fall back to a row per sequence): the same outputs as
    :func:`separate_passes`, the LM tokens in another order (the loss is their mean)."""
    backbone, head = backbone_and_score(model)
    offsets = group_offsets(groups)
    packs = []  # (pack, global index of each packed response)
    for k, g in enumerate(groups):
        for pack in pack_shared_prompt(g.seqs, g.prompt_lens):
            packs.append((pack, [offsets[k] + i for i in pack.members]))
    preferred = {offsets[k] + i for k, g in enumerate(groups) for i in g.preferred()} if lm_weight is not None else set()
    runs = length_buckets([len(p.ids) for p, _ in packs]) if buckets else [list(range(len(packs)))]
    run_rewards, order, run_logits, run_targets = [], [], [], []
    for run in runs:
        chunk = [packs[i] for i in run]
        ids, _ = pad_batch([p.ids for p, _ in chunk], pad_token_id)
        positions, _ = pad_batch([p.positions for p, _ in chunk], 0)
        segments, _ = pad_batch([p.segments for p, _ in chunk], -1)
        hidden = segment_hidden_states(backbone, ids.to(device), positions.to(device), segments.to(device))
        rows, cols, lm_rows, lm_cols, targets = [], [], [], [], []
        for row, (pack, members) in enumerate(chunk):
            for k, seq_index in enumerate(members):
                rows.append(row)
                cols.append(pack.ends[k])
                order.append(seq_index)
                if seq_index in preferred:
                    sources, tokens = lm_positions(pack, k)
                    lm_rows += [row] * len(sources)
                    lm_cols += sources
                    targets += tokens
        run_rewards.append(head(hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)])[:, 0].float())
        if lm_weight is not None:
            picked = hidden[torch.tensor(lm_rows, device=device, dtype=torch.long),
                            torch.tensor(lm_cols, device=device, dtype=torch.long)]  # (m, H)
            run_logits.append(torch.nn.functional.linear(picked, lm_weight))
            run_targets.append(torch.tensor(targets, device=device, dtype=torch.long))
    rewards = torch.cat(run_rewards)[torch.argsort(torch.tensor(order, device=device))]
    if lm_weight is None:
        return rewards, None, None
    return rewards, torch.cat(run_logits), torch.cat(run_targets)


def shared_prompt_agrees(model, groups: list[Group], *, pad_token_id: int, atol: float = 1e-4) -> bool:
    """Whether :func:`shared_prompt_passes` gives :func:`separate_passes`' scores on ``groups``
    (fp32, no gradients, dropout off): False for a backbone whose attention drops the custom mask
    or the position ids (and so would score a packed response against its siblings)."""
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shared = shared_prompt_passes(model, groups, pad_token_id=pad_token_id, device=device, lm_weight=None,
                                          buckets=False)[0]
            separate = separate_passes(model, groups, pad_token_id=pad_token_id, device=device, lm_weight=None,
                                       buckets=False)[0]
    finally:
        model.train(training)
    return bool(torch.allclose(shared, separate, atol=atol, rtol=1e-3))


def shared_prompt_ok(model, groups: list[Group], *, pad_token_id: int) -> bool:
    """Decide ``shared_prompt`` for this run, with one line saying so when it is turned off."""
    backbone, _ = backbone_and_score(model)
    if backbone is None or not supports_segment_mask(backbone):
        print("shared_prompt: off, this model takes no custom attention mask (a row per response)")
        return False
    sample = list(islice((g for g in groups if len(pack_shared_prompt(g.seqs, g.prompt_lens)) == 1), 8))
    if sample and not shared_prompt_agrees(model, sample, pad_token_id=pad_token_id):
        print("shared_prompt: off, packed responses scored differently from separate rows on this model "
              "(a row per response)")
        return False
    return True


def completion_select(groups: list[Group], width: int) -> torch.Tensor:
    """(N, width) bool over the groups' sequences, padded on the right: True on the completion tokens
    (EOS included) of each group's preferred responses, False on prompts, pads and other responses."""
    rows = []
    for g in groups:
        preferred = set(g.preferred())
        for k, (seq, prompt_len) in enumerate(zip(g.seqs, g.prompt_lens)):
            row = torch.zeros(width, dtype=torch.bool)
            if k in preferred:
                row[prompt_len:len(seq)] = True
            rows.append(row)
    return torch.stack(rows)
