"""``rlhfkit demo``: the whole pipeline on the built-in task, into one run folder.

Stages (each cached: a stage whose ``final/`` folder exists is not run again):

1. the task: world, pre-training corpus, demonstrations, prompts (``task.json``, ``data/``)
2. a tiny tokenizer + Llama initialised from scratch (``init/``)
3. pre-training on the corpus (``pretrain/``)
4. SFT on the demonstrations (``sft/``)
5. evaluation of every policy on held-out prompts, scored by the gold reward
6. ``summary.json`` (one entry per method, stable keys) and ``report.md``
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.config import require, save_config
from rlhfkit.data.records import write_jsonl
from rlhfkit.models.tiny import TinyModelSpec


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
    precision: str = "bf16"
    """bf16 autocast for training (fp32 for exact arithmetic)"""

    def validate(self) -> None:
        require(self.precision in ("fp32", "bf16"), "precision must be fp32 or bf16")
        require(self.eval_samples >= 1, "eval_samples must be >= 1")

    def scaled(self) -> "DemoConfig":
        """The --quick version: same stages, a fraction of the work."""
        if not self.quick:
            return self
        from dataclasses import replace

        return replace(
            self, n_pretrain_docs=1500, n_sft=400, n_eval_prompts=24, eval_samples=1, max_new_tokens=24,
            model=replace(self.model, vocab_size=384, hidden_size=64, intermediate_size=192, num_hidden_layers=2),
            pretrain=replace(self.pretrain, max_steps=40), sft=replace(self.sft, max_steps=20),
        )


def _stage_done(path: Path) -> bool:
    return (path / "final" / "config.json").exists()


def run_demo(config: DemoConfig, *, resume: bool = False) -> Path:
    from rlhfkit.evaluate.policy import sample_and_score, summarize
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.tiny import create_tiny_model
    from rlhfkit.tasks import FactsTask
    from rlhfkit.train.sft import OptimConfig, PretrainConfig, SFTConfig, run_pretrain, run_sft

    config = config.scaled()
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
    eval_prompts = task.prompts(config.n_eval_prompts, rng_seed=config.seed + 3, split="eval")
    write_jsonl(eval_prompts, out / "data" / "eval_prompts.jsonl")
    timings["task"] = time.time() - t0

    # 2. tokenizer + tiny model from scratch
    if not (out / "init" / "config.json").exists():
        create_tiny_model(corpus, out / "init", spec=config.model, seed=config.seed)

    # 3. pre-training, 4. SFT
    def supervised(stage_cls, run, name: str, model: Path, data: Path, budget: DemoStageConfig, **extra) -> Path:
        stage_dir = out / name
        if not _stage_done(stage_dir):
            t = time.time()
            stage = stage_cls(model=str(model), data=str(data), output_dir=str(stage_dir),
                              max_steps=budget.max_steps, batch_size=budget.batch_size, precision=config.precision,
                              optim=OptimConfig(learning_rate=budget.learning_rate, warmup_ratio=0.05),
                              log_every=10, eval_every=0, save_every=100, seed=config.seed, **extra)
            run(stage, resume=resume)
            timings[name] = time.time() - t
        return stage_dir / "final"

    pretrained = supervised(PretrainConfig, run_pretrain, "pretrain", out / "init", out / "data" / "pretrain.jsonl",
                            config.pretrain, max_length=128)
    sft = supervised(SFTConfig, run_sft, "sft", pretrained, out / "data" / "sft.jsonl", config.sft, max_length=128)

    # 5. evaluation
    t = time.time()
    prompts = [p["prompt"] for p in eval_prompts]
    tokenizer = load_tokenizer(sft)
    samples = {}
    for name, folder in (("pretrained", pretrained), ("sft", sft)):
        model = load_causal_lm(folder)
        samples[name] = sample_and_score(model, tokenizer, task, prompts, n=config.eval_samples,
                                         max_new_tokens=config.max_new_tokens, seed=config.seed + 7)
    methods = {
        "pretrained": summarize(task, samples["pretrained"]),
        "sft": summarize(task, samples["sft"], baseline=samples["pretrained"], baseline_name="pretrained"),
    }
    timings["evaluate"] = time.time() - t
    timings["total"] = time.time() - t0

    # 6. summary and report
    summary = {"task": "facts", "seed": config.seed, "quick": config.quick, "methods": methods,
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_samples(out / "samples.jsonl", task, samples)
    from rlhfkit.evaluate.report import write_report

    report = write_report(out, summary, samples, task)
    print(f"report: {report}")
    print(f"summary: {out / 'summary.json'}")
    return report


def write_samples(path: Path, task, samples: dict) -> None:
    rows = []
    for method, s in samples.items():
        for prompt, responses, golds in zip(s.prompts, s.responses, s.gold):
            for response, gold in zip(responses, golds):
                rows.append({"method": method, "prompt": prompt, "response": response, "gold": gold})
    write_jsonl(rows, path)
