"""``rlhfkit demo``: the whole pipeline on the built-in task, into one run folder.

Stages, in this order (each cached: a stage whose ``final/`` folder or output file exists is not run again):

1. the task: world, pre-training corpus, demonstrations, prompts (``task.json``, ``data/``)
2. a tiny tokenizer + Llama initialised from scratch (``init/``)
3. pre-training on the corpus (``pretrain/``)
4. SFT on the demonstrations (``sft/``)
5. the simulated annotator panel labels pairs and K-way rankings of SFT samples (``data/prefs_*.jsonl``)
6. a reward model on those preferences (``reward/``), checked against gold and the panel's own ceiling
   (5 and 6: ``steps/labels_and_reward_model.py``); 6b. only when asked for (``methods`` naming
   ``reward_ensemble`` or ``ppo_ensemble``), an ensemble of reward models on the same labels (``reward_ensemble/``)
7. every further method, step by step in the order of ``METHOD_STEPS``: the DPO family
   (``steps/preference.py``), PPO / GRPO / RLOO (``steps/rl.py``), RLAIF and CAI (``steps/ai_feedback.py``)
7b. RLHF's limitations measured on the run (``steps/limitations.py``: over-optimisation, labelling
   cost, annotator disagreement), into ``summary.json``'s ``limitations``
8. the baselines' evaluation; 9. with ``seeds``, the DPO family and RL methods retrained on each
   training seed (``rlhfkit.demo.seeds``, ``seeds.json``)
10. ``summary.json`` (one entry per method, stable keys; ``intervals`` says how win-rate intervals
   are computed), ``report.md`` and ``report.html``

What lives here: that order and ``run_demo``. What does not: the config and the context the steps
share (``rlhfkit.demo.context``), the methods (``rlhfkit.demo.steps``), any training code.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from rlhfkit.config import save_config
from rlhfkit.data.records import write_jsonl
from rlhfkit.demo.context import DemoConfig, DemoStageConfig, make_context, stage_done, train_stage
from rlhfkit.demo.steps import ai_feedback, labels_and_reward_model, limitations, preference, rl
from rlhfkit.models.precision import resolve_precision

__all__ = ["DemoConfig", "METHOD_STEPS", "run_demo"]

# Step 7: the method steps, run after the reward model in this order. Each is a module with
# NAMES (the methods it can add) and run(ctx) -> {method name: summary entry}.
METHOD_STEPS = (preference, rl, ai_feedback)


def run_demo(config: DemoConfig, *, resume: bool = False) -> Path:
    from rlhfkit.models.tiny import create_tiny_model
    from rlhfkit.tasks import FactsTask
    from rlhfkit.train.sft import PretrainConfig, SFTConfig, run_pretrain, run_sft

    config = config.scaled()
    # auto -> bf16 or fp32 once, said in the log; every stage then gets the explicit choice
    config = replace(config, precision=resolve_precision(config.precision, announce=True))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    timings: dict[str, float] = {}
    t0 = time.time()

    # 1. the task and its data
    task = FactsTask.from_seed(config.seed)
    (out / "task.json").write_text(json.dumps(task.to_dict(), indent=1))
    corpus = task.pretrain_corpus(config.n_pretrain_docs, rng_seed=config.seed + 1)
    write_jsonl(({"text": t} for t in corpus), out / "data" / "pretrain.jsonl")
    write_jsonl(task.sft_records(config.n_sft, rng_seed=config.seed + 2), out / "data" / "sft.jsonl")
    write_jsonl(task.prompts(config.n_eval_prompts, rng_seed=config.seed + 3, split="eval"),
                out / "data" / "eval_prompts.jsonl")
    write_jsonl(task.prompts(config.n_rl_prompts, rng_seed=config.seed + 4, split="train"),
                out / "data" / "rl_prompts.jsonl")
    timings["task"] = time.time() - t0

    # 2. tokenizer + tiny model from scratch
    if not (out / "init" / "config.json").exists():
        create_tiny_model(corpus, out / "init", spec=config.model, seed=config.seed)

    # 3. pre-training, 4. SFT
    def supervised(stage_cls, run, name: str, model: Path, data: Path, budget: DemoStageConfig, **extra) -> Path:
        if not stage_done(out / name):
            t = time.time()
            train_stage(out, config, stage_cls, run, name, model, data, budget, resume=resume, **extra)
            timings[name] = time.time() - t
        return out / name / "final"

    pretrained = supervised(PretrainConfig, run_pretrain, "pretrain", out / "init", out / "data" / "pretrain.jsonl",
                            config.pretrain, max_length=128)
    sft = supervised(SFTConfig, run_sft, "sft", pretrained, out / "data" / "sft.jsonl", config.sft, max_length=128)
    ctx = make_context(out, config)

    # 5. the simulated panel labels SFT samples, 6. the reward model
    t = time.time()
    reward_entry = None
    if config.wants("reward"):
        labels_and_reward_model.label_preferences(ctx)
        reward_entry = labels_and_reward_model.train_reward_model(ctx, config.reward, resume=resume)
        ctx.reward = out / "reward" / "final"
        timings["reward"] = time.time() - t
    # 6b. opt-in: an ensemble of reward models on the same labels (what ppo_ensemble optimises)
    ensemble_entry = None
    if config.wants("reward_ensemble") or config.wants("ppo_ensemble"):
        t = time.time()
        labels_and_reward_model.label_preferences(ctx)
        ensemble_entry = labels_and_reward_model.train_reward_model(
            ctx, config.reward, resume=resume, name="reward_ensemble", ensemble_size=rl.ENSEMBLE_SIZE)
        ctx.reward_ensemble = out / "reward_ensemble" / "final"
        ctx.add_report_section(labels_and_reward_model.ensemble_section(ensemble_entry))
        timings["reward_ensemble"] = time.time() - t

    # 7. every other method, from the same SFT model and the same preferences
    methods = {"pretrained": None, "sft": None}
    for step in METHOD_STEPS:
        t = time.time()
        entries = step.run(ctx) if any(config.wants(n) for n in step.NAMES) else {}
        for name, entry in entries.items():
            if config.wants(name):
                methods[name] = entry
        timings[step.__name__.rsplit(".", 1)[-1]] = time.time() - t

    # 7b. RLHF's limitations measured on this run (steps/limitations.py; summary.json's "limitations")
    t = time.time()
    limits = limitations.run(ctx) if config.wants("limitations") else None
    timings["limitations"] = time.time() - t

    # 8. evaluation of the baselines, summary and report
    t = time.time()
    pre = ctx.samples(pretrained, "pretrained")
    from rlhfkit.evaluate.policy import summarize

    methods["pretrained"] = summarize(task, pre)
    methods["sft"] = summarize(task, ctx.samples(sft, "sft"), baseline=pre, baseline_name="pretrained")
    if ctx.reward is not None:
        for name, folder in (("pretrained", pretrained), ("sft", sft)):
            methods[name]["proxy_reward"] = ctx.proxy_reward(ctx.samples(folder, name))
    timings["evaluate"] = time.time() - t

    # 9. with --seeds: the DPO family and RL methods retrained on other training seeds
    seed_results = None
    if config.seeds:
        from rlhfkit.demo.seeds import run_seeds, seeds_section

        t = time.time()
        seed_results = run_seeds(ctx, config.seeds, methods)
        ctx.add_report_section(seeds_section(seed_results))
        timings["seeds"] = time.time() - t
    timings["total"] = time.time() - t0

    from rlhfkit.evaluate.policy import INTERVALS

    summary = {"task": "facts", "seed": config.seed, "quick": config.quick, "precision": config.precision,
               "methods": methods, "intervals": dict(INTERVALS),
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    if reward_entry is not None:
        summary["methods"]["reward_model"] = reward_entry
    if ensemble_entry is not None:
        summary["methods"]["reward_ensemble"] = ensemble_entry
    if seed_results is not None:
        summary["seeds"] = seed_results
    if limits is not None:
        summary["limitations"] = limits
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from rlhfkit.evaluate.report import write_report

    samples = ctx.sampled(methods)
    report = write_report(out, summary, samples, task, extra_sections=ctx.report_sections)
    from rlhfkit.evaluate.html_report import write_html_report

    print(f"report: {report} and {write_html_report(out, summary)}")
    print(f"summary: {out / 'summary.json'}")
    return report

