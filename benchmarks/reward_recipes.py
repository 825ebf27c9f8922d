"""Reward-model recipes on a demo run's panel labels, scored against gold (the issue-11 exploration).

    python benchmarks/reward_recipes.py RUN [--pool last|sum|mean] [--lm-coef C] [--lm-on preferred|all|full]
                                            [--steps N] [--lr LR] [--batch B] [--seed S] [--out preds.json]

RUN is a finished ``rlhfkit demo`` folder: its ``sft/final`` is the initial model, ``data/prefs_all.jsonl``
(the panel's pairs and rankings) the training set, ``data/prefs_heldout.jsonl`` (pairs of SFT samples of
eval prompts, each with gold's preference) the test set. Prints accuracy against gold overall and per
prompt kind × what gold separates the pair by (correctness or style), next to the ideal a reward model
could learn from these labels: the sign of the panel's mean Bradley–Terry probability.

This is an exploration loop, not the product's trainer: uniformly random batches of ``--batch``
records (the trainer groups by length), fp32 unless ``--bf16``, and pooling variants the trainer does not
offer (per-token head summed or averaged over the completion). What it shares with the trainer: the
encoding, the ranking loss, the optimiser and its schedule. ``--lm-on preferred`` with ``--pool last``
is what ``rlhfkit reward lm_loss_coef=C`` trains; ``all`` puts the LM loss on every response, ``full``
on every token of every sequence, prompts included.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rlhfkit.data.layouts import LayoutOptions  # noqa: E402
from rlhfkit.data.rankings import expand_ranking  # noqa: E402
from rlhfkit.data.records import load_records  # noqa: E402
from rlhfkit.data.tokenize import TruncationStats, encode_completion, encode_prompt, fit_lengths, pad_batch  # noqa: E402
from rlhfkit.losses import ranking_loss  # noqa: E402
from rlhfkit.models.forward import backbone_and_score, hidden_states  # noqa: E402
from rlhfkit.models.loading import disable_dropout, load_tokenizer  # noqa: E402
from rlhfkit.models.reward_model import load_reward_model, with_distinct_pad  # noqa: E402
from rlhfkit.ops import last_token_index  # noqa: E402
from rlhfkit.train.optim import OptimConfig, optimizer_and_schedule  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--pool", choices=["last", "sum", "mean"], default="last")
    ap.add_argument("--lm-coef", type=float, default=0.0)
    ap.add_argument("--lm-on", choices=["preferred", "all", "full"], default="preferred")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", type=Path, help="where to write the held-out margins (one per pair)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    sft = args.run / "sft" / "final"
    tok = with_distinct_pad(load_tokenizer(sft))
    model = load_reward_model(sft, tokenizer=tok)
    disable_dropout(model)
    backbone, head = backbone_and_score(model)
    records = load_records(args.run / "data" / "prefs_all.jsonl", "preference",
                           layout=LayoutOptions.for_tokenizer(tok)).records
    held = [json.loads(line) for line in (args.run / "data" / "prefs_heldout.jsonl").read_text().splitlines()]

    def encode(prompt, response):
        prompt_ids, completion_ids = fit_lengths(encode_prompt(tok, prompt), encode_completion(tok, prompt, response),
                                                 max_length=128, max_prompt_length=None, stats=TruncationStats())[:2]
        return prompt_ids + completion_ids, len(prompt_ids)

    groups = []  # (encoded responses, comparisons (better, worse, P(better)))
    for r in records:
        if "ranking" in r:
            responses, pairs = r["responses"], expand_ranking(r["ranking"], len(r["responses"]), ties="skip")
        else:
            responses, pairs = [r["chosen"], r["rejected"]], [(0, 1, float(r.get("label_prob") or 1.0))]
        if pairs:
            groups.append(([encode(r["prompt"], x) for x in responses], pairs))

    def forward(seqs, lm_rows=None):
        """Scores (B,) with the chosen pooling and, when ``lm_rows`` is given, the LM loss on those rows."""
        ids, mask = pad_batch([s for s, _ in seqs], tok.pad_token_id)
        hidden = hidden_states(backbone, ids, mask)  # (B, T, H)
        per_token = head(hidden)[..., 0].float()  # (B, T)
        prompt_len = torch.tensor([n for _, n in seqs])[:, None]
        completion = (torch.arange(ids.shape[1])[None] >= prompt_len) & mask.bool()  # (B, T)
        if args.pool == "last":
            scores = per_token[torch.arange(len(seqs)), last_token_index(mask)]
        elif args.pool == "sum":
            scores = (per_token * completion).sum(-1)
        else:
            scores = (per_token * completion).sum(-1) / completion.sum(-1).clamp(min=1)
        if lm_rows is None:
            return scores, None
        select = (mask.bool() if args.lm_on == "full" else completion)[:, 1:].clone()  # (B, T-1)
        keep = torch.zeros(len(seqs), dtype=torch.bool)
        keep[lm_rows] = True
        select &= keep[:, None]
        logits = hidden[:, :-1][select] @ backbone.get_input_embeddings().weight.T  # tied embeddings
        return scores, torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][select])

    optimizer, scheduler = optimizer_and_schedule(list(model.parameters()),
                                                  OptimConfig(learning_rate=args.lr, warmup_ratio=0.05),
                                                  total_steps=args.steps)
    order: list[int] = []
    start = time.time()
    for step in range(args.steps):
        if len(order) < args.batch:
            order += rng.sample(range(len(groups)), len(groups))
        batch, order = order[:args.batch], order[args.batch:]
        seqs, index, probs, group_ids, lm_rows = [], [], [], [], []
        for k, g in enumerate(batch):
            encoded, pairs = groups[g]
            offset = len(seqs)
            seqs += encoded
            index += [(offset + i, offset + j) for i, j, _ in pairs]
            probs += [p for _, _, p in pairs]
            group_ids += [k] * len(pairs)
            lm_rows += [offset + pairs[0][0]] if args.lm_on == "preferred" else list(range(offset, len(seqs)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            scores, lm = forward(seqs, lm_rows if args.lm_coef > 0 else None)
        loss = ranking_loss(scores, torch.tensor(index), torch.tensor(probs), torch.tensor(group_ids),
                            num_groups=len(batch)).losses.mean()
        if lm is not None:
            loss = loss + args.lm_coef * lm
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            print(f"step {step} loss {float(loss):.4f} {time.time() - start:.0f}s", flush=True)

    model.eval()
    margins = []
    with torch.no_grad():
        for i in range(0, len(held), 64):
            part = held[i:i + 64]
            scores, _ = forward([encode(h["prompt"], h["chosen"]) for h in part]
                                + [encode(h["prompt"], h["rejected"]) for h in part])
            margins += (scores[:len(part)] - scores[len(part):]).tolist()
    if args.out:
        args.out.write_text(json.dumps(margins))
    result = {**{k: v for k, v in vars(args).items() if k not in ("run", "out")}, "run": str(args.run),
              "accuracy_vs_gold": by_category(args.run, held, margins), "seconds": round(time.time() - start)}
    print(json.dumps(result))
    return result


def by_category(run: Path, held: list[dict], margins: list[float]) -> dict:
    """Accuracy against gold per prompt kind × (correctness | style) and overall, with the ideal's."""
    from rlhfkit.demo.steps.labels_and_reward_model import panel_mean_prefers_gold, separated_by
    from rlhfkit.tasks import FactsTask

    task = FactsTask.from_dict(json.loads((run / "task.json").read_text()))
    counts = defaultdict(lambda: [0, 0, 0])  # pairs, model right, ideal right
    for h, margin in zip(held, margins):
        for key in ("all", f"{task.info(h['prompt']).kind}/{separated_by(task, h)}"):
            counts[key][0] += 1
            counts[key][1] += (margin > 0) == h["gold_prefers_chosen"]
            counts[key][2] += panel_mean_prefers_gold(task, h)
    return {k: {"pairs": n, "model": round(right / n, 3), "ideal": round(ideal / n, 3)}
            for k, (n, right, ideal) in sorted(counts.items())}


if __name__ == "__main__":
    main()
