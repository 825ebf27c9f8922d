"""One algorithm on the TRL side (TRL 1.16, the ``bench`` extra), configured for the same work as
:mod:`benchmarks.side_rlhfkit`: same model folder and data files, batch, max lengths, steps, constant
learning rate with no warm-up, AdamW betas / eps, no weight decay, fp32 on the CPU, no checkpoints.

The step-1 loss is taken from the trainer's first ``compute_loss`` call at full precision (the
Trainer's logged ``loss`` is rounded to 4 digits).
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.workload import BenchSpec, gold_reward

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _args(spec: BenchSpec, out_dir: Path) -> dict:
    return dict(output_dir=str(out_dir), per_device_train_batch_size=spec.batch_size, max_steps=spec.steps,
                learning_rate=spec.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                adam_beta1=spec.adam_betas[0], adam_beta2=spec.adam_betas[1], adam_epsilon=spec.adam_eps,
                max_grad_norm=1.0, logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
                disable_tqdm=True, seed=spec.seed, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
                train_sampling_strategy="sequential")


def _dataset(path: str):
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train")


def _record_first_loss(trainer, sink: dict) -> None:
    original = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        out = original(*args, **kwargs)
        if "step1_loss" not in sink:
            loss = out[0] if isinstance(out, tuple) else out
            sink["step1_loss"] = float(loss.detach())
        return out

    trainer.compute_loss = compute_loss


def run(algo: str, spec: BenchSpec, paths: dict, out_dir: Path) -> dict:
    """Train ``algo`` for ``spec.steps`` steps, reading the records in the file's order; returns {step1_loss}."""
    import trl
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    args = _args(spec, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    if algo == "sft":
        config = trl.SFTConfig(**args, max_length=spec.max_length, completion_only_loss=True, packing=False)
        trainer = trl.SFTTrainer(model=paths["model"], args=config, train_dataset=_dataset(paths["sft"]),
                                 processing_class=tokenizer)
    elif algo == "reward":
        config = trl.RewardConfig(**args, max_length=spec.max_length, center_rewards_coefficient=None)
        trainer = trl.RewardTrainer(model=paths["reward_init"], args=config,
                                    train_dataset=_dataset(paths["pairs"]), processing_class=tokenizer)
    elif algo == "dpo":
        config = trl.DPOConfig(**args, max_length=spec.max_length, beta=spec.beta, loss_type=["sigmoid"],
                               precompute_ref_log_probs=True)
        trainer = trl.DPOTrainer(model=paths["model"], args=config, train_dataset=_dataset(paths["pairs"]),
                                 processing_class=tokenizer)
    elif algo in ("orpo", "simpo"):
        if algo == "orpo":
            from trl.experimental.orpo import ORPOConfig as Config
            from trl.experimental.orpo import ORPOTrainer as Trainer

            config = Config(**args, max_length=spec.max_length, beta=spec.beta)
        else:
            from trl.experimental.cpo import CPOConfig as Config
            from trl.experimental.cpo import CPOTrainer as Trainer

            config = Config(**args, max_length=spec.max_length, loss_type="simpo", cpo_alpha=0.0,
                            beta=spec.simpo_beta, simpo_gamma=spec.simpo_gamma)
        trainer = Trainer(model=paths["model"], args=config, train_dataset=_dataset(paths["pairs"]),
                          processing_class=tokenizer)
    elif algo == "kto":
        config = trl.KTOConfig(**args, max_length=spec.max_length, beta=spec.beta, precompute_ref_log_probs=True)
        trainer = trl.KTOTrainer(model=paths["model"], args=config, train_dataset=_dataset(paths["unpaired"]),
                                 processing_class=tokenizer)
    elif algo in ("grpo", "rloo"):
        online = dict(num_generations=spec.num_generations, max_completion_length=spec.max_new_tokens,
                      temperature=1.0, top_p=1.0, top_k=0, beta=spec.kl_coef, num_iterations=1)
        if algo == "grpo":
            config = trl.GRPOConfig(**args, **online, loss_type="grpo", scale_rewards="group")
            cls = trl.GRPOTrainer
        else:
            config = trl.RLOOConfig(**args, **online)
            cls = trl.RLOOTrainer
        trainer = cls(model=paths["model"], reward_funcs=[gold_reward], args=config,
                      train_dataset=_dataset(paths["prompts"]), processing_class=tokenizer)
    else:
        raise ValueError(f"TRL 1.16 has no {algo!r} trainer in this harness")
    sink: dict = {}
    _record_first_loss(trainer, sink)
    trainer.train()
    trainer.save_model(str(out_dir / "final"))
    return {"step1_loss": sink.get("step1_loss"), "time_split": {}}
