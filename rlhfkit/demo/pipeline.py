"""``rlhfkit demo``: the whole pipeline on the built-in task, into one run folder.

Stages (each cached: a stage whose ``final/`` folder or output file exists is not run again):

1. the task: world, pre-training corpus, demonstrations, prompts (``task.json``, ``data/``)
2. a tiny tokenizer + Llama initialised from scratch (``init/``)
3. pre-training on the corpus (``pretrain/``)
4. SFT on the demonstrations (``sft/``)
5. the simulated annotator panel labels pairs and K-way rankings of SFT samples (``data/prefs_*.jsonl``)
6. a reward model on those preferences (``reward/``), checked against gold and the panel's own ceiling
7. every further method (DPO family, PPO / GRPO / RLOO, ...) from ``rlhfkit.demo.steps``
8. ``summary.json`` (one entry per method, stable keys; ``intervals`` says how win-rate intervals
   are computed) and ``report.md``
"""

from __future__ import annotations

import importlib
import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhfkit.config import require, save_config
from rlhfkit.data.records import write_jsonl
from rlhfkit.models.precision import PRECISIONS, resolve_precision
from rlhfkit.models.tiny import TinyModelSpec

# Demo steps run after the reward model, in this order; each is a module with run(ctx) -> entries.
METHOD_STEPS = ("rlhfkit.demo.steps.preference", "rlhfkit.demo.steps.rl", "rlhfkit.demo.steps.ai_feedback")


@dataclass
class DemoStageConfig:
    """Budget of one supervised stage of the demo."""

    max_steps: int = 300
    """optimiser steps"""
    learning_rate: float = 3e-3
    """peak learning rate"""
    batch_size: int = 32
    """examples (or packed blocks) per step"""


@dataclass
class DemoConfig:
    output_dir: str = "runs/demo"
    """run folder: every stage writes its own sub-folder; finished stages are reused"""
    quick: bool = False
    """a much smaller run (for tests): fewer documents, steps and evaluation prompts"""
    seed: int = 0
    """seed of the task, the model initialisation and every stage"""
    n_pretrain_docs: int = 12000
    """documents in the pre-training corpus"""
    n_sft: int = 3000
    """demonstrations for SFT"""
    n_pref_prompts: int = 6000
    """prompts whose SFT samples the simulated panel labels (half as pairs, half as 4-way rankings)"""
    n_rm_eval_prompts: int = 1000
    """held-out prompts whose SFT sample pairs measure the reward model against gold and the panel"""
    n_rl_prompts: int = 2000
    """prompt-only records for PPO / GRPO / RLOO"""
    n_eval_prompts: int = 200
    """held-out prompts every policy is evaluated on"""
    eval_samples: int = 2
    """responses sampled per evaluation prompt (baselines are compared sample against sample)"""
    max_new_tokens: int = 40
    """longest sampled response, in tokens"""
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    """shape of the tiny Llama"""
    pretrain: DemoStageConfig = field(default_factory=lambda: DemoStageConfig(max_steps=700, learning_rate=3e-3))
    """pre-training budget"""
    sft: DemoStageConfig = field(default_factory=lambda: DemoStageConfig(max_steps=200, learning_rate=1e-3))
    """SFT budget"""
    reward: DemoStageConfig = field(default_factory=lambda: DemoStageConfig(max_steps=500, learning_rate=1e-3,
                                                                            batch_size=32))
    """reward-model budget"""
    methods: list[str] = field(default_factory=lambda: ["all"])
    """which method steps to run after the reward model ("all", or names such as dpo, ppo)"""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it natively, else fp32), bf16 autocast, or fp32 for every stage"""

    def validate(self) -> None:
        require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        require(self.eval_samples >= 1, "eval_samples must be >= 1")

    def scaled(self) -> "DemoConfig":
        """The --quick version: same stages, a fraction of the work."""
        if not self.quick:
            return self
        return replace(
            self, n_pretrain_docs=3000, n_sft=800, n_pref_prompts=60, n_rm_eval_prompts=48, n_rl_prompts=64,
            n_eval_prompts=48,
            eval_samples=1, max_new_tokens=24,
            model=replace(self.model, vocab_size=384, hidden_size=64, intermediate_size=192, num_hidden_layers=2),
            pretrain=replace(self.pretrain, max_steps=400, batch_size=16), sft=replace(self.sft, max_steps=100, batch_size=16),
            reward=replace(self.reward, max_steps=10),
        )


@dataclass
class DemoContext:
    """What a method step needs from the run: folders, data, the task, and one evaluation."""

    out: Path
    config: DemoConfig
    task: Any
    sft: Path
    reward: Path | None = None
    prefs: Path | None = None
    """pairwise panel preferences (prompt, chosen, rejected, label_prob, annotator)"""
    prefs_all: Path | None = None
    """pairs and 4-way rankings together (what the reward model trains on)"""
    rl_prompts: Path | None = None
    eval_prompts: list[str] = field(default_factory=list)
    report_sections: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.config.quick

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def precision(self) -> str:
        return self.config.precision

    def add_report_section(self, markdown: str) -> None:
        self.report_sections.append(markdown)

    def samples(self, policy_dir: Path, name: str):
        """Samples of a policy on the eval prompts, scored by gold (cached per name)."""
        from rlhfkit.evaluate.policy import load_samples, sample_and_score, save_samples
        from rlhfkit.models.loading import load_causal_lm, load_tokenizer

        if name in self._cache:
            return self._cache[name]
        path = self.out / "eval" / f"{name}.samples.json"
        if path.exists() and path.stat().st_mtime >= (Path(policy_dir) / "config.json").stat().st_mtime:
            samples = load_samples(path)
        else:
            samples = sample_and_score(load_causal_lm(policy_dir), load_tokenizer(policy_dir), self.task,
                                       self.eval_prompts, n=self.config.eval_samples,
                                       max_new_tokens=self.config.max_new_tokens, seed=self.seed + 7)
            save_samples(samples, path)
        self._cache[name] = samples
        return samples

    def evaluate(self, policy_dir: Path, name: str) -> dict:
        """The standard summary entry of a policy: gold, win rate vs SFT, KL to SFT, proxy, ..."""
        from rlhfkit.evaluate.policy import sequence_kl, summarize
        from rlhfkit.models.loading import load_causal_lm, load_tokenizer

        samples = self.samples(policy_dir, name)
        entry = summarize(self.task, samples, baseline=self.samples(self.sft, "sft"), baseline_name="sft")
        flat_prompts, flat_responses = samples.flat()
        tokenizer = load_tokenizer(self.sft)
        flat_ids = [i for ids in samples.response_ids for i in ids] if samples.response_ids else None
        entry["kl_to_sft"] = sequence_kl(load_causal_lm(policy_dir), self._model("sft_model", self.sft),
                                         tokenizer, flat_prompts, flat_responses, response_ids=flat_ids)
        if self.reward is not None:
            entry["proxy_reward"] = self.proxy_reward(samples)
        return entry

    def proxy_reward(self, samples) -> float:
        """Mean score of the run's learned reward model on a policy's samples."""
        return float(self._scorer().score(*samples.flat()).mean())

    def _model(self, key: str, folder: Path):
        from rlhfkit.models.loading import load_causal_lm

        if key not in self._cache:
            self._cache[key] = load_causal_lm(folder)
        return self._cache[key]

    def _scorer(self):
        from rlhfkit.models.reward import load_scorer

        if "scorer" not in self._cache:
            self._cache["scorer"] = load_scorer(self.reward)
        return self._cache["scorer"]


def stage_done(path: Path) -> bool:
    return (path / "final" / "config.json").exists()


def train_stage(out: Path, config: DemoConfig, stage_cls, run, name: str, model: Path, data: Path,
                budget: DemoStageConfig, *, resume: bool, save_every: int = 100, **extra) -> Path:
    """One supervised stage of the demo (pre-training, SFT, the AI-feedback models) into
    ``<out>/<name>/final``; a stage whose final folder exists is not run again."""
    from rlhfkit.train.options import OptimConfig

    stage_dir = out / name
    if not stage_done(stage_dir):
        stage = stage_cls(model=str(model), data=str(data), output_dir=str(stage_dir),
                          max_steps=budget.max_steps, batch_size=budget.batch_size, precision=config.precision,
                          optim=OptimConfig(learning_rate=budget.learning_rate, warmup_ratio=0.05),
                          log_every=10, eval_every=0, save_every=save_every, seed=config.seed, **extra)
        run(stage, resume=resume)
    return stage_dir / "final"


def make_context(out: Path, config: DemoConfig | None = None) -> DemoContext:
    """Context over an existing run folder (for method steps run on their own, and for tuning)."""
    from rlhfkit.config import from_dict
    from rlhfkit.data.records import load_records
    from rlhfkit.tasks import FactsTask

    import yaml

    out = Path(out)
    if config is None:
        config = from_dict(DemoConfig, yaml.safe_load((out / "config.yaml").read_text()))
    task = FactsTask.from_dict(json.loads((out / "task.json").read_text()))
    eval_prompts = [r["prompt"] for r in load_records(out / "data" / "eval_prompts.jsonl", "prompt")]
    reward = out / "reward" / "final"
    return DemoContext(out=out, config=config, task=task, sft=out / "sft" / "final",
                       reward=reward if (reward / "config.json").exists() or (reward / "ensemble.json").exists() else None,
                       prefs=out / "data" / "prefs_pairs.jsonl", prefs_all=out / "data" / "prefs_all.jsonl",
                       rl_prompts=out / "data" / "rl_prompts.jsonl", eval_prompts=eval_prompts)


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
    if _wanted(config, "reward"):
        from rlhfkit.demo.steps.labels_and_reward_model import label_preferences, train_reward_model

        label_preferences(ctx)
        reward_entry = train_reward_model(ctx, config.reward, resume=resume)
        ctx.reward = out / "reward" / "final"
        timings["reward"] = time.time() - t

    # 7. every other method, from the same SFT model and the same preferences
    methods = {"pretrained": None, "sft": None}
    for module_name in METHOD_STEPS:
        if importlib.util.find_spec(module_name) is None:
            continue
        step = importlib.import_module(module_name)
        t = time.time()
        entries = step.run(ctx) if getattr(step, "NAMES", None) is None or any(
            _wanted(config, n) for n in step.NAMES) else {}
        for name, entry in entries.items():
            if _wanted(config, name):
                methods[name] = entry
        timings[module_name.rsplit(".", 1)[-1]] = time.time() - t

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
    timings["total"] = time.time() - t0

    from rlhfkit.evaluate.policy import INTERVALS

    summary = {"task": "facts", "seed": config.seed, "quick": config.quick, "precision": config.precision,
               "methods": methods, "intervals": dict(INTERVALS),
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    if reward_entry is not None:
        summary["methods"]["reward_model"] = reward_entry
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from rlhfkit.evaluate.report import write_report

    samples = {name: ctx._cache[name] for name in methods if name in ctx._cache}
    report = write_report(out, summary, samples, task, extra_sections=ctx.report_sections)
    print(f"report: {report}")
    print(f"summary: {out / 'summary.json'}")
    return report


def _wanted(config: DemoConfig, name: str) -> bool:
    return "all" in config.methods or name in config.methods


def random_for(seed: int, salt: str) -> random.Random:
    return random.Random(f"{seed}:{salt}")
