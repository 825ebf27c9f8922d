"""What every direct preference method shares: its config fields, what a method is, and the one run.

The DPO family (sigmoid, IPO, hinge, robust; :mod:`.dpo`), ORPO (:mod:`.orpo`), SimPO (:mod:`.simpo`)
and KTO (:mod:`.kto`) each define a config and an :class:`Objective`: the roles of an example that go
through the policy with gradients (``chosen`` and ``rejected`` in ONE concatenated forward pass;
KTO's ``completion``), the roles that only need the policy's value (KTO's mismatched ``kl`` pairs),
whether it needs reference log-probs, and a few lines of glue to its pure loss in
:mod:`rlhfkit.losses`. :func:`train_preference` runs any of them; its optimisation loop is
:func:`rlhfkit.train.supervised.train_loop`, shared with SFT and reward models (accumulation,
clipping, logging, checkpoints, exact ``--resume``). Records → examples, the batched log-prob
forward and the reference cache live in :mod:`rlhfkit.train.direct.batches`.

``run_dpo`` / ``run_orpo`` / ``run_simpo`` / ``run_kto`` → :func:`train_preference`:

1. load the records (pairwise or ranking; KTO also unpaired), hold out ``eval_fraction``, encode;
2. reference log-probs of the sequences the run will use (the examples its batches touch, known
   before training, and the held-out ones), ONCE, with the initial model in eval mode (with LoRA:
   the adapter disabled), cached by token hash in ``output_dir/reference_logps.pt`` (a rerun,
   ``--resume`` or a longer run computes only what the file lacks); no reference model stays in
   memory. With ``precompute_ref_logps=false`` they are computed in every step instead, by the model
   with its LoRA adapter disabled or, without LoRA, by a frozen copy of the initial model kept
   beside it. ORPO and SimPO need none;
3. train: per micro-batch one forward over [chosen; rejected], log-probs on completion tokens only,
   the method's loss; logged: rewards/chosen, rewards/rejected, rewards/accuracies,
   rewards/margins, logps/chosen, logps/rejected and the loss's own statistics;
4. held-out metrics, a warning when chosen log-probs fell steadily (likelihood displacement, a
   known DPO failure: both log-probs fall and the margin grows only because rejected falls
   faster), ``eval.json`` and ``final/``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from rlhfkit.data.layouts import LayoutOptions
from rlhfkit.data.tokenize import TruncationStats
from rlhfkit.losses import LossOutput
from rlhfkit.models.loading import disable_dropout, is_peft, load_causal_lm, load_tokenizer
from rlhfkit.train.direct import batches
from rlhfkit.train.direct.batches import Example, ReferenceLogps, RoleLogps
from rlhfkit.train import distributed
from rlhfkit.train.run import MetricsLogger, enable_gradient_checkpointing, make_accelerator, start_run
from rlhfkit.train.optim import OptimConfig, optimizer_and_schedule
from rlhfkit.train.supervised import SupervisedConfig, held_out_indices, items_used, train_loop

log = logging.getLogger("rlhfkit")

REFERENCE_FILE = "reference_logps.pt"


# ============================================================================================
# configs
# ============================================================================================


@dataclass
class PreferenceConfig(SupervisedConfig):
    """Fields every direct preference method shares (the rest come from SupervisedConfig)."""

    model: str = ""
    """initial policy, usually the SFT model folder; it is also the reference policy"""
    data: str = ""
    """preferences: JSONL or HF dataset of pairwise {prompt, chosen, rejected[, label_prob]} and/or ranking records (KTO also reads unpaired {prompt, completion, label})"""
    eval_fraction: float = 0.05
    """fraction of records held out for held-out rewards/accuracies when ``eval_data`` is unset (0: none)"""
    output_dir: str = "runs/dpo"
    """run folder: config.yaml, metrics.jsonl, reference_logps.pt, eval.json, checkpoints/, final/"""
    batch_size: int = 8
    """preference pairs (KTO: examples) per micro-batch"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-6, warmup_ratio=0.1))
    """optimiser and schedule"""
    seed: int = 0
    """seed of the data order, the held-out split and KTO's mismatched pairs"""
    ties: Literal["skip", "soft"] = "skip"
    """tied responses of a ranking: not trained on, or kept as label_prob = 0.5 pairs (soft-label DPO only)"""
    hh_raw_text: bool = False
    """Anthropic HH transcripts (Human: … Assistant: … turns) stay raw text, the prompt ending in "Assistant:"; by default they become chat messages when the tokenizer has a chat template"""


# ============================================================================================
# objectives: log-probs of a batch → a loss of rlhfkit.losses
# ============================================================================================

Logps = dict[str, RoleLogps]


@dataclass(frozen=True)
class Objective:
    name: str
    roles: tuple[str, ...]
    """roles through the policy with gradients, in one concatenated forward pass; the first is the "chosen" one"""
    loss: Callable[[Logps, Logps | None, list[Example]], LossOutput]
    """(policy log-probs, reference log-probs or None, the batch's examples) → per-example losses"""
    nograd_roles: tuple[str, ...] = ()
    """roles whose policy log-probs are needed without gradients (KTO's mismatched pairs)"""
    reference: bool = True
    """needs reference log-probs"""
    soft_labels: bool = False
    """reads each pair's label_prob (otherwise pairs are oriented and ties dropped)"""


def logps_stats(chosen, rejected) -> dict[str, torch.Tensor]:
    return {"logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}


# ============================================================================================
# the falling-chosen-log-probs check
# ============================================================================================


class ChosenLogpsWatch:
    """Warns (once) when the chosen responses' log-probs fall steadily.

    The signal is the mean per-token log-prob of chosen (KTO: desirable) responses minus the
    reference's (raw, for reference-free methods), averaged over blocks of ``block`` micro-batches.
    It fires when the last ``falls`` block means each fell and the latest lies ``min_drop`` nats per
    token below the first block's.
    """

    def __init__(self, *, block: int, falls: int = 3, min_drop: float = 0.1):
        self.block, self.falls, self.min_drop = max(1, block), falls, min_drop
        self.current: list[float] = []
        self.means: list[float] = []
        self.fired = False

    def update(self, value: float) -> None:
        if math.isnan(value):
            return
        self.current.append(value)
        if len(self.current) < self.block:
            return
        self.means.append(sum(self.current) / len(self.current))
        self.current = []
        last = self.means[-(self.falls + 1):]
        falling = len(last) == self.falls + 1 and all(b < a for a, b in zip(last, last[1:]))
        if not self.fired and falling and self.means[-1] < self.means[0] - self.min_drop:
            self.fired = True
            log.warning("chosen log-probs have fallen steadily (%.3f → %.3f nats/token against the start): "
                        "the margin grows because rejected falls faster (likelihood displacement). Consider a "
                        "larger beta, a lower learning rate, fewer steps, or an SFT term (ORPO-style).",
                        self.means[0], self.means[-1])


def _chosen_shift(objective: Objective, policy: Logps, ref: Logps | None, batch: list[Example]) -> float:
    role = objective.roles[0]
    keep = torch.tensor([ex.label is not False for ex in batch], device=policy[role].sum.device)
    if not bool(keep.any()):
        return math.nan
    shift = policy[role].avg.detach() - (ref[role].avg if ref is not None else 0.0)
    return float(shift[keep].mean())


# ============================================================================================
# data
# ============================================================================================


def _split(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole source records (a ranking's pairs, a pair's two KTO examples stay together):
    at least 20 of them to hold any out; both parts keep the records' order."""
    groups = sorted({r.get("group", i) for i, r in enumerate(records)})
    held = {groups[k] for k in held_out_indices(len(groups), fraction, seed, min_items=20)}
    keys = [r.get("group", i) for i, r in enumerate(records)]
    return [r for r, k in zip(records, keys) if k not in held], [r for r, k in zip(records, keys) if k in held]


def load_splits(config: PreferenceConfig, objective: Objective, tokenizer) -> tuple[dict[str, list[Example]], dict]:
    """({"train": examples, "eval": examples}, the data/* counts logged at step 0)."""
    counts: dict[str, int] = {}
    layout = LayoutOptions.for_tokenizer(tokenizer, hh_raw_text=config.hh_raw_text)

    def records(path: str) -> list[dict]:
        if objective.roles == ("completion",):
            return batches.load_unpaired_records(path, layout=layout)
        pairs = batches.load_pair_records(path, ties=config.ties, layout=layout)
        if objective.soft_labels:
            return pairs
        pairs, ties = batches.orient_pairs(pairs)
        counts["data/ties_dropped"] = counts.get("data/ties_dropped", 0) + ties
        return pairs

    train = records(config.data)
    if config.eval_data:
        held = records(config.eval_data)
    else:
        train, held = _split(train, config.eval_fraction, config.seed)
    stats = TruncationStats()
    kw = dict(max_length=config.max_length, max_prompt_length=config.max_prompt_length, stats=stats)
    train_kw, held_kw = dict(kw, source=config.data), dict(kw, source=config.eval_data or config.data)
    if objective.roles == ("completion",):
        splits = {"train": batches.encode_unpaired(tokenizer, train, seed=config.seed, **train_kw),
                  "eval": batches.encode_unpaired(tokenizer, held, seed=config.seed + 1, **held_kw) if held else []}
        n_good = sum(1 for ex in splits["train"] if ex.label)
        n_bad = len(splits["train"]) - n_good
        ratio = (config.desirable_weight * n_good) / max(config.undesirable_weight * n_bad, 1e-9)
        if not 1.0 <= ratio <= 4 / 3:
            log.warning("KTO: λ_D·n_D / (λ_U·n_U) = %.2f lies outside [1, 4/3], the range Ethayarajh et al. "
                        "recommend; adjust desirable_weight / undesirable_weight", ratio)
    else:
        splits = {"train": batches.encode_pairs(tokenizer, train, **train_kw),
                  "eval": batches.encode_pairs(tokenizer, held, **held_kw) if held else []}
    if not splits["train"]:
        raise ValueError(f"{config.data}: no training examples left (all pairs tied?)")
    counts.update({f"data/{k}": v for k, v in stats.as_dict().items()})
    counts.update({"data/train_examples": len(splits["train"]), "data/eval_examples": len(splits["eval"])})
    return splits, counts


# ============================================================================================
# the loop
# ============================================================================================


def train_preference(config: PreferenceConfig, objective: Objective, *, resume: bool = False) -> Path:
    out_dir = start_run(config)
    accelerator = make_accelerator(config.precision)

    # 1. records → encoded examples (train / held-out)
    tokenizer = load_tokenizer(config.model)
    splits, first_metrics = load_splits(config, objective, tokenizer)
    train, held = splits["train"], splits["eval"]
    total_steps = config.total_steps(len(train), processes=accelerator.num_processes)

    model = load_causal_lm(config.model, lora=config.lora)
    if config.disable_dropout:  # as TRL: the policy's step-0 log-probs then equal the reference's, which
        disable_dropout(model)    # are computed without it (GPT-2 ships with p = 0.1 in three places)
    enable_gradient_checkpointing(model, config.gradient_checkpointing)
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), config.optim, total_steps=total_steps)
    model, optimizer = distributed.prepare_model(accelerator, model, optimizer)
    device, pad_id = accelerator.device, tokenizer.pad_token_id
    roles = objective.roles + objective.nograd_roles

    # 2. reference log-probs, once, with the initial weights (before a checkpoint is loaded), of what the
    #    run will use: the examples its batches touch (train_loop's batches are known in advance) and held-out
    cache: ReferenceLogps | None = None
    frozen = None  # precompute_ref_logps=false without LoRA: a frozen copy of the initial model
    if objective.reference and getattr(config, "precompute_ref_logps", True):
        namespace, meta = batches.reference_namespace(model=config.model, precision=config.precision)
        needed = {"train": items_used(config, [len(ex) for ex in train], world=accelerator.num_processes),
                  "eval": list(range(len(held)))}
        # with several processes the main one computes and writes the cache first, then the others read it
        with accelerator.main_process_first():
            cache, computed = batches.cached_reference(
                out_dir / REFERENCE_FILE, namespace=namespace, meta=meta, splits=splits, needed=needed,
                compute=lambda missing: batches.compute_reference(
                    distributed.unwrap(accelerator, model), splits, pad_token_id=pad_id, device=device,
                    batch_size=2 * config.batch_size, autocast=accelerator.autocast, needed=missing))
        first_metrics["data/reference_from_cache"] = int(computed == 0)
        first_metrics["data/reference_computed"] = computed
        print(f"reference log-probs: {computed} of {len(needed['train']) + len(needed['eval'])} examples computed, "
              f"the rest reused from {out_dir / REFERENCE_FILE}")
    elif objective.reference and not is_peft(distributed.unwrap(accelerator, model)):
        frozen = load_causal_lm(config.model).to(device).eval().requires_grad_(False)
        disable_dropout(frozen)

    def reference(split: str, indices: list[int], batch: list[Example]) -> Logps | None:
        if not objective.reference:
            return None
        if cache is not None:
            return cache.select(split, indices, device)
        with torch.no_grad():
            if frozen is not None:
                return batches.batch_logps(frozen, batch, roles, pad_token_id=pad_id, device=device)
            with batches.reference_mode(distributed.unwrap(accelerator, model)):  # LoRA: adapter off
                return batches.batch_logps(model, batch, roles, pad_token_id=pad_id, device=device)

    def forward(model, split: str, indices: list[int]) -> tuple[LossOutput, Logps, Logps | None, list[Example]]:
        batch = [splits[split][i] for i in indices]
        policy = batches.batch_logps(model, batch, objective.roles, pad_token_id=pad_id, device=device)
        with torch.no_grad():
            policy.update(batches.batch_logps(model, batch, objective.nograd_roles, pad_token_id=pad_id, device=device))
        ref = reference(split, indices, batch)
        return objective.loss(policy, ref, batch), policy, ref, batch

    # 3. train
    watch = ChosenLogpsWatch(block=max(1, total_steps * config.gradient_accumulation_steps // 10))

    def step_fn(model, indices):
        out, policy, ref, batch = forward(model, "train", indices)
        watch.update(_chosen_shift(objective, policy, ref, batch))
        return out.losses.mean(), {k: float(v) for k, v in out.stats.items()}

    held_metrics: dict[str, float] = {}

    def eval_fn(model):
        totals: dict[str, float] = {}
        for start in range(0, len(held), 2 * config.batch_size):
            indices = list(range(start, min(start + 2 * config.batch_size, len(held))))
            with accelerator.autocast():
                out = forward(model, "eval", indices)[0]
            for k, v in {"loss": out.losses.mean(), **out.stats}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(indices)
        held_metrics.update({f"eval/{k}": v / len(held) for k, v in totals.items()})
        return dict(held_metrics)

    train_loop(config, accelerator, model, optimizer, scheduler, name=objective.name, out_dir=out_dir,
               lengths=[len(ex) for ex in train], first_metrics=first_metrics, step_fn=step_fn,
               weight_fn=lambda idx: float(len(idx)), eval_fn=eval_fn if held else None, resume=resume)

    # 4. report and save
    report = {**held_metrics, "chosen_logps_falling": watch.fired,
              "chosen_logps_shift_per_block": [round(m, 4) for m in watch.means], "objective": objective.name,
              "steps": total_steps, **first_metrics}
    if accelerator.is_main_process:
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    MetricsLogger(out_dir, resume=True).log("final", {**held_metrics,
                                                          "warning/chosen_logps_falling": int(watch.fired)})
    return distributed.save_final(accelerator, model, tokenizer, out_dir / "final",
                                  save_adapter_only=config.lora.save_adapter_only)
