"""Reward model from human rankings (stage 2 of RLHF; Stiennon et al. 2020, Ouyang et al. 2022).

Each batch element is one preference record: a pair (2 responses, 1 comparison) or a K-way ranking
(K responses, C(K,2) comparisons, averaged per prompt, InstructGPT §3.5). All responses of a batch
go through the model in one forward pass. After training: the normalisation bias (mean 0 on a
reference set), then held-out evaluation (accuracy, calibration before and after temperature
scaling, per-annotator accuracy, length correlation) into ``metrics.jsonl`` and ``eval.json``, and
the temperature fitted on the held-out pairs into the final folder (1 when there are none).

Here: RewardConfig, encoding records into groups, the group loss, the training run and the held-out
evaluation. Not here: the folder format and scoring API every consumer uses
(:mod:`rlhfkit.models.reward_model`), the loop (:func:`rlhfkit.train.supervised.train_loop`), the
losses (:mod:`rlhfkit.losses`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import require
from rlhfkit.data.rankings import expand_ranking
from rlhfkit.data.layouts import LayoutOptions
from rlhfkit.data.records import DataError, at_record, load_records
from rlhfkit.data.tokenize import TruncationStats, encode_completion, encode_prompt, fit_lengths
from rlhfkit.losses import bradley_terry_loss, ranking_loss, reward_centering_penalty
from rlhfkit.models.loading import disable_dropout, load_tokenizer, save_model
from rlhfkit.models.reward_model import (BIAS_KEY, TEMPERATURE_KEY, RewardScorer, load_reward_model, load_scorer,
                                         frozen_lm_head, with_distinct_pad, write_temperature)
from rlhfkit.train import distributed
from rlhfkit.train.run import (MetricsLogger, enable_gradient_checkpointing, make_accelerator, process_index, set_seed,
                               start_run, wait_for_everyone)
from rlhfkit.train.optim import OptimConfig, optimizer_and_schedule
from rlhfkit.train.reward_passes import group_offsets, separate_passes, shared_prompt_ok, shared_prompt_passes
from rlhfkit.train.supervised import SupervisedConfig, held_out_indices, train_loop


@dataclass
class RewardConfig(SupervisedConfig):
    model: str = ""
    """initial model: the SFT policy folder (a new scalar head is added) or a reward model folder"""
    data: str = ""
    """preferences: JSONL or HF dataset of pairwise {prompt, chosen, rejected} and/or ranking records"""
    eval_fraction: float = 0.1
    """fraction of records held out for evaluation when ``eval_data`` is unset"""
    output_dir: str = "runs/reward"
    """run folder: config.yaml, metrics.jsonl, eval.json, checkpoints/, final/"""
    batch_size: int = 8
    """preference records per micro-batch (a ranking counts as one)"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-5))
    """optimiser and schedule"""
    ties: Literal["skip", "soft"] = "skip"
    """tied responses in a ranking: not trained on, or trained with a 0.5 soft label"""
    center_rewards_coefficient: float = 0.0
    """weight of the centring penalty mean((r_c + r_r)^2) (Eisenstein et al. 2023); 0 disables"""
    ensemble_size: int = 1
    """members trained with different seeds and data orders; scoring returns their mean and std"""
    reference_data: str | None = None
    """records whose (prompt, completion) or (prompt, chosen) define reward 0 (InstructGPT normalisation); default: the chosen responses of ``data``"""
    margin_from_scores: bool = False
    """pairwise records train with margin = score_chosen - score_rejected (UltraFeedback's ratings; Llama 2's margin loss); every pairwise record then needs both columns and no ``margin``"""
    hh_raw_text: bool = False
    """Anthropic HH transcripts (Human: … Assistant: … turns) stay raw text, the prompt ending in "Assistant:"; by default they become chat messages when the tokenizer has a chat template"""
    lm_loss_coef: float = 0.0
    """weight of a next-token loss on each record's preferred responses, through the initial model's LM head (GRM, Yang et al. 2024: keeps the hidden states able to generate text while the score head learns); 0 disables"""
    length_buckets: bool = True
    """score each step's sequences in a few forward passes of similar lengths instead of one padded to
    the longest (same loss, fewer padded tokens: the responses of one ranking can differ a lot in
    length); single-process runs only, several processes keep one pass per step"""
    shared_prompt: bool = True
    """a record's prompt goes through the model once, its responses packed after it with a block mask
    (each sees the prompt and itself: the same scores on fewer tokens; the demo's prompts are half of
    its tokens); checked against a row per response on a few records before training and turned off,
    with a message, for a backbone where they differ or that takes no custom mask"""

    def validate(self) -> None:
        super().validate()
        require(self.ensemble_size >= 1, "ensemble_size must be >= 1")
        require(self.lm_loss_coef >= 0, "lm_loss_coef must be >= 0")
        require(self.center_rewards_coefficient >= 0, "center_rewards_coefficient must be >= 0")


@dataclass
class Group:
    """One preference record, encoded: its responses and the comparisons between them."""

    seqs: list[list[int]]
    pairs: list[tuple[int, int, float]]  # (better, worse, P(better))
    margin: float | None
    prompt: object
    responses: list
    annotator: object = None
    prompt_lens: list[int] = field(default_factory=list)
    """tokens of the prompt at the start of each of ``seqs`` (after truncation)"""

    def preferred(self) -> list[int]:
        """Responses that win a decisive comparison and lose none: a pair's chosen one (or the other when
        P(chosen) < 0.5), a ranking's top (all of a tied top)."""
        wins, losses = set(), set()
        for i, j, p in self.pairs:
            if p != 0.5:
                better, worse = (i, j) if p > 0.5 else (j, i)
                wins.add(better)
                losses.add(worse)
        return sorted(wins - losses)


def encode_groups(tokenizer, records, lines, source: str, config: RewardConfig) -> tuple[list[Group], TruncationStats]:
    stats = TruncationStats()
    groups = []
    for record, line in zip(records, lines):
        with at_record(source, line):
            prompt_ids = encode_prompt(tokenizer, record["prompt"])
        if "ranking" in record:
            responses = record["responses"]
            pairs = expand_ranking(record["ranking"], len(responses), ties=config.ties)
            margin = None
        else:
            responses = [record["chosen"], record["rejected"]]
            pairs = [(0, 1, float(record.get("label_prob", 1.0) if record.get("label_prob") is not None else 1.0))]
            margin = record.get("margin")
            if margin is not None and record.get("label_prob") is not None:
                how = " (margin_from_scores=true made it from score_chosen - score_rejected)" if config.margin_from_scores else ""
                raise DataError(source, line, "margin", f"cannot be combined with label_prob in one record{how}")
        if not pairs:
            continue  # a ranking whose responses are all tied, with ties="skip": nothing to learn
        seqs, prompt_lens = [], []
        names = ["chosen", "rejected"] if "ranking" not in record else [f"responses[{i}]" for i in range(len(responses))]
        for name, response in zip(names, responses):
            with at_record(source, line, completion=name):
                completion_ids = encode_completion(tokenizer, record["prompt"], response)
            fitted = fit_lengths(prompt_ids, completion_ids, max_length=config.max_length,
                                 max_prompt_length=config.max_prompt_length, stats=stats)
            seqs.append(fitted[0] + fitted[1])
            prompt_lens.append(len(fitted[0]))
        groups.append(Group(seqs, pairs, margin, record["prompt"], responses, record.get("annotator"), prompt_lens))
    return groups, stats


def group_loss(model, groups: list[Group], *, pad_token_id: int, center_coef: float, device,
               lm_coef: float = 0.0, lm_weight: torch.Tensor | None = None,
               buckets: bool = False, shared_prompt: bool = False) -> tuple[torch.Tensor, dict]:
    """Mean loss over records: margin pairs via Bradley–Terry, the rest (pairs with soft labels and
    rankings) via the per-prompt-averaged ranking loss; plus the optional centring penalty; plus, with
    ``lm_coef`` > 0, ``lm_coef`` × the mean next-token cross-entropy over the completion tokens of
    every record's preferred responses (GRM's SFT regulariser), predicted through ``lm_weight``.

    ``buckets``: passes of similar lengths (:func:`rlhfkit.data.tokenize.length_buckets`); ``shared_prompt``:
    each record's prompt once, its responses packed after it (:mod:`rlhfkit.train.reward_passes`). Neither changes the
    loss beyond float rounding."""
    offsets = group_offsets(groups)
    passes = shared_prompt_passes if shared_prompt else separate_passes
    rewards, logits, targets = passes(model, groups, pad_token_id=pad_token_id, device=device,
                                      lm_weight=lm_weight if lm_coef > 0 else None, buckets=buckets)
    if lm_coef > 0:
        lm_loss = torch.nn.functional.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0
    losses, stats = [], {}
    plain = [(k, g) for k, g in enumerate(groups) if g.margin is None]
    with_margin = [(k, g) for k, g in enumerate(groups) if g.margin is not None]
    all_pairs = []
    if plain:
        index, probs, group_ids = [], [], []
        for slot, (k, g) in enumerate(plain):
            for i, j, p in g.pairs:
                index.append((offsets[k] + i, offsets[k] + j))
                probs.append(p)
                group_ids.append(slot)
        out = ranking_loss(rewards, torch.tensor(index, device=device), torch.tensor(probs, device=device),
                           torch.tensor(group_ids, device=device), num_groups=len(plain))
        losses.append(out.losses)
        stats["accuracy"] = float(out.stats["accuracy"])
        all_pairs += index
    if with_margin:
        chosen = torch.stack([rewards[offsets[k]] for k, _ in with_margin])
        rejected = torch.stack([rewards[offsets[k] + 1] for k, _ in with_margin])
        margins = torch.tensor([float(g.margin) for _, g in with_margin], device=device)
        out = bradley_terry_loss(chosen, rejected, margin=margins)
        losses.append(out.losses)
        all_pairs += [(offsets[k], offsets[k] + 1) for k, _ in with_margin]
    loss = torch.cat(losses).mean()
    if lm_coef > 0:
        loss = loss + lm_coef * lm_loss
        stats["lm_loss"] = float(lm_loss.detach())
    if center_coef > 0 and all_pairs:
        pair_index = torch.tensor(all_pairs, device=device)
        center = reward_centering_penalty(rewards[pair_index[:, 0]], rewards[pair_index[:, 1]], coef=center_coef)
        loss = loss + center.losses.mean()
    stats["reward_mean"] = float(rewards.detach().mean())
    return loss, stats


def _split(records, lines, fraction: float, seed: int):
    """((train records, lines), (held-out records, lines)): at least 10 records to hold any out; both
    parts keep the file's order."""
    held = set(held_out_indices(len(records), fraction, seed, min_items=10))
    train = [i for i in range(len(records)) if i not in held]
    test = sorted(held)
    return ([records[i] for i in train], [lines[i] for i in train]), ([records[i] for i in test], [lines[i] for i in test])


def run_reward(config: RewardConfig, *, resume: bool = False) -> Path:
    """Train ``ensemble_size`` reward models; returns the final folder (a member or an ensemble)."""
    out_dir = start_run(config)
    tokenizer = load_tokenizer(config.model)
    if not config.lora.save_adapter_only:  # an adapter folder cannot carry a grown embedding
        tokenizer = with_distinct_pad(tokenizer)
    layout = LayoutOptions.for_tokenizer(tokenizer, hh_raw_text=config.hh_raw_text,
                                         margin_from_scores=config.margin_from_scores)
    data = load_records(config.data, "preference", layout=layout)
    if config.eval_data:
        held = load_records(config.eval_data, "preference", layout=layout)
        (train_records, train_lines), (eval_records, eval_lines) = (data.records, data.lines), (held.records, held.lines)
        eval_source = config.eval_data
    else:
        (train_records, train_lines), (eval_records, eval_lines) = _split(data.records, data.lines,
                                                                          config.eval_fraction, config.seed)
        eval_source = config.data
    train_groups, trunc = encode_groups(tokenizer, train_records, train_lines, config.data, config)
    eval_groups, _ = encode_groups(tokenizer, eval_records, eval_lines, eval_source, config)
    skipped = len(train_records) - len(train_groups)
    if skipped:
        print(f"{skipped} ranking records with all responses tied were skipped (ties=skip)")
    reference = _reference_set(config, train_records, LayoutOptions(hh_messages=layout.hh_messages))

    member_dirs = []
    for k in range(config.ensemble_size):
        member_out = out_dir if config.ensemble_size == 1 else out_dir / f"member-{k}"
        member_dirs.append(_train_member(config, k, member_out, tokenizer, train_groups, eval_groups, reference,
                                         {**{f"data/{key}": v for key, v in trunc.as_dict().items()},
                                          "data/train_records": len(train_groups),
                                          "data/eval_records": len(eval_groups),
                                          "data/skipped_all_tied": skipped}, resume))
    final = out_dir / "final"
    if process_index() != 0:  # several processes: the main one assembles, evaluates and writes; the others wait
        wait_for_everyone()
        return final
    if config.ensemble_size > 1:
        final.mkdir(parents=True, exist_ok=True)
        members = []
        for k, member in enumerate(member_dirs):
            target = final / f"member-{k}"
            if target.exists():
                import shutil

                shutil.rmtree(target)
            member.rename(target)
            members.append(target.name)
        (final / "ensemble.json").write_text(json.dumps({"members": members}, indent=1))
    report = evaluate_reward(load_scorer(final, max_length=config.max_length), eval_groups)
    write_temperature(final, report.get("temperature", 1.0))
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    MetricsLogger(out_dir, resume=True).log("final", {f"eval/{k}": v for k, v in report.items()
                                                        if isinstance(v, (int, float))})
    wait_for_everyone()
    return final


def _reference_set(config: RewardConfig, train_records, layout: LayoutOptions) -> list[tuple]:
    if config.reference_data:
        records = load_records(config.reference_data, "sft" if "completion" in _peek(config.reference_data) else "pairwise",
                               layout=layout)
        return [(r["prompt"], r.get("completion", r.get("chosen"))) for r in records][:512]
    pairs = [(r["prompt"], r["chosen"]) for r in train_records if "chosen" in r]
    pairs += [(r["prompt"], r["responses"][_best(r["ranking"])]) for r in train_records if "ranking" in r]
    return pairs[:512]


def _peek(path: str) -> dict:
    with open(path) as handle:
        return json.loads(handle.readline())


def _best(ranking) -> int:
    first = ranking[0]
    return first[0] if isinstance(first, list) else first


def _train_member(config: RewardConfig, k: int, out_dir: Path, tokenizer, groups, eval_groups, reference,
                  first_metrics, resume) -> Path:

    out_dir.mkdir(parents=True, exist_ok=True)
    seed = config.seed + k
    set_seed(seed)
    accelerator = make_accelerator(config.precision)
    model = load_reward_model(config.model, lora=config.lora, tokenizer=tokenizer)
    if config.disable_dropout:
        disable_dropout(model)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    total_steps = config.total_steps(len(groups), processes=accelerator.num_processes)
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), config.optim, total_steps=total_steps)
    # GRM's LM head: an untied one is read from the initial folder once, here, so a missing one fails
    # before training; tied embeddings are read inside each step (the wrapped model's own, whole there)
    frozen_head = frozen_lm_head(model, config.model) if config.lm_loss_coef > 0 else None
    if frozen_head is not None:
        frozen_head = frozen_head.to(accelerator.device)
    pad_id = tokenizer.pad_token_id
    shared_prompt = config.shared_prompt and shared_prompt_ok(model, groups, pad_token_id=pad_id)
    model, optimizer = distributed.prepare_model(accelerator, model, optimizer)
    # several forward passes per step only in one process: DDP marks each parameter ready once per
    # backward, and FSDP / ZeRO-3 gather parameters in lockstep, so every rank must make the same calls
    buckets = config.length_buckets and accelerator.num_processes == 1

    def step_fn(model, indices):
        lm_weight = None
        if config.lm_loss_coef > 0:
            lm_weight = frozen_head if frozen_head is not None else model.get_input_embeddings().weight
        return group_loss(model, [groups[i] for i in indices], pad_token_id=pad_id,
                          center_coef=config.center_rewards_coefficient, device=accelerator.device,
                          lm_coef=config.lm_loss_coef, lm_weight=lm_weight, buckets=buckets,
                          shared_prompt=shared_prompt)

    def eval_fn(model):
        if not eval_groups:
            return {}
        scorer = RewardScorer([distributed.unwrap(accelerator, model)], tokenizer, max_length=config.max_length,
                              max_prompt_length=config.max_prompt_length, biases=[0.0])
        return {"eval/accuracy": evaluate_reward(scorer, eval_groups)["accuracy"]}

    train_loop(config, accelerator, model, optimizer, scheduler, name=f"reward[{k}]" if config.ensemble_size > 1
               else "reward", out_dir=out_dir, lengths=[sum(len(s) for s in g.seqs) for g in groups], seed=seed,
               first_metrics=first_metrics, step_fn=step_fn, weight_fn=lambda idx: float(len(idx)),
               eval_fn=eval_fn if config.eval_every else None, resume=resume)
    model = distributed.unwrap(accelerator, model)
    # normalisation: reward 0 = the mean of the reference set (InstructGPT)
    scorer = RewardScorer([model], tokenizer, max_length=config.max_length,
                          max_prompt_length=config.max_prompt_length, biases=[0.0])
    bias = -float(scorer.score([p for p, _ in reference], [r for _, r in reference]).mean()) if reference else 0.0
    final = out_dir / "final"
    if not accelerator.is_main_process:  # several processes: the main one writes final/
        accelerator.wait_for_everyone()
        return final
    save_model(model, tokenizer, final, save_adapter_only=config.lora.save_adapter_only)
    cfg_path = final / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[BIAS_KEY] = bias
    cfg.pop(TEMPERATURE_KEY, None)  # one inherited from an initial reward model does not fit this one
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (final / "rlhfkit_scoring.json").write_text(json.dumps({"max_length": config.max_length,
                                                            "max_prompt_length": config.max_prompt_length}))
    accelerator.wait_for_everyone()
    return final


def evaluate_reward(scorer: RewardScorer, groups: list[Group]) -> dict:
    """Held-out accuracy, calibration, per-annotator accuracy, and the Pearson correlation of reward with
    response length in words (a length-hacking sign).

    Every decisive pair (label P(better) ≠ 0.5; tied pairs are skipped) of every group counts. Its
    label is the record's: a pair's ``label_prob`` (e.g. the share of a panel that preferred "chosen";
    1 when absent) or 1 for each pair of a ranking (better, worse). Accuracy counts the model right when
    its margin has the label's sign; calibration compares P = σ(r_better − r_worse) with the soft label.

    - ``ece``: :func:`pairwise_ece` of the raw σ(margin) (each pair counted in both orders);
    - ``temperature``: T fitted on all these pairs (:func:`fit_temperature`), what
      :func:`run_reward` stores in the folder;
    - ``ece_calibrated``: the ECE of σ(margin / T) with T cross-fitted, so no pair is scored with a
      temperature fitted on it: the groups are split by position (even / odd index) into two folds,
      T is fitted on one fold and applied to the other, both ways, and ECE is taken over all pairs.
      A group's pairs (a ranking's) stay in one fold.
    """
    from rlhfkit.evaluate.metrics import fit_temperature, pairwise_ece, pearson, sigmoid

    if not groups:
        return {}
    prompts, responses = [], []
    for g in groups:
        prompts += [g.prompt] * len(g.responses)
        responses += list(g.responses)
    rewards = scorer.score(prompts, responses).tolist()
    margins, labels, folds, correct, per_annotator = [], [], [], [], {}
    offset = 0
    for k, g in enumerate(groups):
        for i, j, p in g.pairs:
            if p == 0.5:
                continue
            margin = rewards[offset + i] - rewards[offset + j]
            win = (margin > 0) == (p > 0.5)
            margins.append(margin)
            labels.append(float(p))
            folds.append(k % 2)
            correct.append(float(win))
            names = g.annotator if isinstance(g.annotator, list) else [g.annotator]
            for name in names:
                if name is not None:
                    per_annotator.setdefault(str(name), []).append(float(win))
        offset += len(g.responses)
    # 2-fold cross-fitted temperature: fold f's pairs are scaled by the T of the other fold
    fold_t = [fit_temperature([m for m, f in zip(margins, folds) if f != fold],
                              [y for y, f in zip(labels, folds) if f != fold]) for fold in (0, 1)]
    lengths = [len(_text(r).split()) for r in responses]
    return {
        "accuracy": sum(correct) / max(len(correct), 1),
        "ece": pairwise_ece([sigmoid(m) for m in margins], labels),
        "ece_calibrated": pairwise_ece([sigmoid(m / fold_t[f]) for m, f in zip(margins, folds)], labels),
        "temperature": fit_temperature(margins, labels),
        "length_correlation": pearson(lengths, rewards),
        "pairs": len(correct),
        "accuracy_per_annotator": {k: sum(v) / len(v) for k, v in sorted(per_annotator.items())},
        "reward_mean": sum(rewards) / len(rewards),
    }


def _text(x) -> str:
    if isinstance(x, str):
        return x
    return " ".join(m["content"] for m in x)
