"""What every step of ``rlhfkit demo`` shares: the demo's config, the run's context, and the helpers
the steps have in common.

What lives here: ``DemoConfig`` (and ``DemoStageConfig``, one supervised stage's budget),
``DemoContext`` (the run folder, the task, the data files and the one evaluation every policy goes
through, with its caches), ``make_context`` (a context over an existing run folder), ``stage_done`` /
``train_stage`` (one cached supervised stage) and ``random_for`` (a seeded RNG per purpose).
What does not: the order of the stages (``rlhfkit.demo.pipeline``) and the methods themselves
(``rlhfkit.demo.steps``). This module imports no step and no pipeline, so both can import it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhfkit.config import require
from rlhfkit.models.precision import PRECISIONS
from rlhfkit.models.tiny import TinyModelSpec


OPT_IN = ("reward_ensemble", "ppo_calibrated", "ppo_ensemble")
"""experiments that ``methods=[all]`` leaves out (they cost minutes and answer one question each):
PPO on the reward model's temperature-calibrated reward, and on an ensemble's mean − λ·std."""


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
    n_pref_prompts: int = 12000
    """prompts whose SFT samples the simulated panel labels (half as voted pairs, half as 4-way rankings).
    Not 6,000: the reward model then fell 1.5–9 points short of the panel's agreement with gold, in
    either precision, depending on the draw; on twice the labels it is within 3.3 points on every draw
    tried (the README's reward-model section)"""
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
    reward: DemoStageConfig = field(default_factory=lambda: DemoStageConfig(max_steps=1500, learning_rate=1e-3,
                                                                            batch_size=32))
    """reward-model budget. Not 16 records per step, though that halves the stage's time: the reward
    model fell to 0.745 vs gold in both precisions (0.763 / 0.791 with 32) and PPO's seed-0 win rate
    with it (0.698 / 0.676 against 0.718 / 0.736); see the README's reward-model section"""
    reward_lm_loss_coef: float = 1.0
    """weight of the reward model's next-token loss on the preferred responses (GRM, Yang et al. 2024;
    ``lm_loss_coef`` of ``rlhfkit reward``): with it the reward model learns what separates a right answer
    from a near miss in the SFT samples; 0 trains the plain Bradley–Terry model"""
    methods: list[str] = field(default_factory=lambda: ["all"])
    """which method steps to run after the reward model ("all", or names such as dpo, ppo); the opt-in
    experiments reward_ensemble, ppo_calibrated and ppo_ensemble run only when named"""
    seeds: list[int] = field(default_factory=list)
    """training seeds to rerun every wanted DPO-family and RL method on (``--seeds 0,1,2``), reusing the task,
    SFT and reward model of ``seed``; each method's mean, spread and per-seed win rate go to ``seeds.json``
    and the report. Empty: one run on ``seed``."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it natively, else fp32), bf16 autocast, or fp32 for every stage"""

    def validate(self) -> None:
        require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        require(self.eval_samples >= 1, "eval_samples must be >= 1")
        require(len(set(self.seeds)) == len(self.seeds), "seeds must not repeat")

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

    def wants(self, name: str) -> bool:
        """Whether the method (or step) ``name`` is to run: ``methods`` holds that name, or "all" and the
        name is not one of the opt-in experiments (:data:`OPT_IN`)."""
        return name in self.methods or ("all" in self.methods and name not in OPT_IN)


@dataclass
class DemoContext:
    """What a method step needs from the run: folders, data, the task, and one evaluation."""

    out: Path
    config: DemoConfig
    task: Any
    sft: Path
    reward: Path | None = None
    reward_ensemble: Path | None = None
    """an ensemble of reward models on the same labels (the opt-in ``ppo_ensemble``'s reward)"""
    prefs: Path | None = None
    """pairwise panel preferences (prompt, chosen, rejected, label_prob, annotator)"""
    prefs_all: Path | None = None
    """pairs and 4-way rankings together (what the reward model trains on)"""
    rl_prompts: Path | None = None
    eval_prompts: list[str] = field(default_factory=list)
    report_sections: list[str] = field(default_factory=list)
    train_seed: int | None = None
    """seed of the method steps' training runs; None: the run's ``seed`` (see :meth:`for_train_seed`)"""
    _samples: dict = field(default_factory=dict)
    """policy name -> its evaluation samples (drawn once per run)"""
    _models: dict = field(default_factory=dict)
    """loaded models kept for the run (the SFT model every KL is measured against)"""
    _scorer: Any = None
    """the run's reward model, loaded on first use"""

    @property
    def quick(self) -> bool:
        return self.config.quick

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def precision(self) -> str:
        return self.config.precision

    @property
    def method_seed(self) -> int:
        """The seed every method step trains with: the run's seed unless this is a rerun on another."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def is_rerun(self) -> bool:
        return self.train_seed is not None and self.train_seed != self.seed

    def method_dir(self, name: str) -> Path:
        """Where method ``name`` trains: ``<run>/<name>``, or ``<run>/seeds/<s>/<name>`` on another training seed."""
        return self.out / "seeds" / str(self.train_seed) / name if self.is_rerun else self.out / name

    def run_name(self, name: str) -> str:
        """The name a method's evaluation samples are cached under (``ppo``, or ``ppo@seed1`` on a rerun)."""
        return f"{name}@seed{self.train_seed}" if self.is_rerun else name

    def for_train_seed(self, train_seed: int) -> "DemoContext":
        """This run's context with the method steps trained on ``train_seed``: same task, data, SFT model,
        reward model, evaluation prompts and baseline samples; its own report sections."""
        return replace(self, train_seed=train_seed, report_sections=[], _samples=self._samples,
                       _models=self._models, _scorer=self._scorer)

    def add_report_section(self, markdown: str) -> None:
        self.report_sections.append(markdown)

    def samples(self, policy_dir: Path, name: str):
        """Samples of a policy on the eval prompts, scored by gold (cached per name)."""
        from rlhfkit.evaluate.policy import load_samples, sample_and_score, save_samples
        from rlhfkit.models.loading import load_causal_lm, load_tokenizer

        if name in self._samples:
            return self._samples[name]
        path = self.out / "eval" / f"{name}.samples.json"
        if path.exists() and path.stat().st_mtime >= (Path(policy_dir) / "config.json").stat().st_mtime:
            samples = load_samples(path)
        else:
            samples = sample_and_score(load_causal_lm(policy_dir), load_tokenizer(policy_dir), self.task,
                                       self.eval_prompts, n=self.config.eval_samples,
                                       max_new_tokens=self.config.max_new_tokens, seed=self.seed + 7)
            save_samples(samples, path)
        self._samples[name] = samples
        return samples

    def sampled(self, names) -> dict:
        """``{name: samples}`` of those of ``names`` whose samples this run has drawn, in the order of
        ``names`` (what the report shows)."""
        return {name: self._samples[name] for name in names if name in self._samples}

    def evaluate(self, policy_dir: Path, name: str) -> dict:
        """The standard summary entry of a policy: gold, win rate vs SFT, KL to SFT, proxy, ..."""
        from rlhfkit.evaluate.policy import sequence_kl, summarize
        from rlhfkit.models.loading import load_causal_lm, load_tokenizer

        samples = self.samples(policy_dir, self.run_name(name))
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
        return float(self._reward_scorer().score(*samples.flat()).mean())

    def _model(self, key: str, folder: Path):
        from rlhfkit.models.loading import load_causal_lm

        if key not in self._models:
            self._models[key] = load_causal_lm(folder)
        return self._models[key]

    def _reward_scorer(self):
        from rlhfkit.models.reward_model import load_scorer

        if self._scorer is None:
            self._scorer = load_scorer(self.reward)
        return self._scorer


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
    def found(folder: Path) -> Path | None:
        return folder if (folder / "config.json").exists() or (folder / "ensemble.json").exists() else None

    return DemoContext(out=out, config=config, task=task, sft=out / "sft" / "final",
                       reward=found(out / "reward" / "final"),
                       reward_ensemble=found(out / "reward_ensemble" / "final"),
                       prefs=out / "data" / "prefs_pairs.jsonl", prefs_all=out / "data" / "prefs_all.jsonl",
                       rl_prompts=out / "data" / "rl_prompts.jsonl", eval_prompts=eval_prompts)


def stage_done(path: Path) -> bool:
    return (path / "final" / "config.json").exists()


def train_stage(out: Path, config: DemoConfig, stage_cls, run, name: str, model: Path, data: Path,
                budget: DemoStageConfig, *, resume: bool, save_every: int = 100, **extra) -> Path:
    """One supervised stage of the demo (pre-training, SFT, the AI-feedback models) into
    ``<out>/<name>/final``; a stage whose final folder exists is not run again."""
    from rlhfkit.train.optim import OptimConfig

    stage_dir = out / name
    if not stage_done(stage_dir):
        stage = stage_cls(model=str(model), data=str(data), output_dir=str(stage_dir),
                          max_steps=budget.max_steps, batch_size=budget.batch_size, precision=config.precision,
                          optim=OptimConfig(learning_rate=budget.learning_rate, warmup_ratio=0.05),
                          log_every=10, eval_every=0, save_every=save_every, seed=config.seed, **extra)
        run(stage, resume=resume)
    return stage_dir / "final"


def random_for(seed: int, salt: str) -> random.Random:
    """A ``random.Random`` of its own for one purpose of the run (``salt``), so that adding a draw
    elsewhere never shifts this one's numbers."""
    return random.Random(f"{seed}:{salt}")
