"""What an online RL run (PPO, GRPO, RLOO) is before and around its loop: the shared config, the
set-up, the prompt stream and the run folder.

- :class:`RLConfig`: the fields every method shares, with the batch sizes documented in one place;
- :func:`set_up`: what every method builds before its loop, in one order (run folder, tokenizer,
  prompts, policy (+ value function), reference, reward, generator);
- :class:`RLRun`: the run folder while the loop runs (:class:`rlhfkit.train.run.Run`) plus the
  prompt stream and the minibatch shuffle, both restored by ``--resume``; with N processes each rank
  takes its share of every global batch of prompts (whole groups).

Not here: the experience step (:mod:`.rollout`), the models (:mod:`.policy`), the update
(:mod:`.update`), each method's advantages, loss and loop (:mod:`.ppo`, :mod:`.grpo`, :mod:`.rloo`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import require
from rlhfkit.data.records import load_records
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.ops import LOSS_AGGREGATIONS, LossAggregation
from rlhfkit.rollout.base import Generator, SamplingConfig
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.rollout.server import RolloutConfig, ServerGenerator
from rlhfkit.train.rl.policy import ActorCritic, Reference
from rlhfkit.train.rl.reward_sources import PythonRewardSource, RewardSettings, RewardSource, build_reward_source
from rlhfkit.train.distributed import shard
from rlhfkit.train.run import Run, RunConfig, infinite_batches, partial_state, process_count, process_index, start_run
from rlhfkit.train.optim import OptimConfig


@dataclass
class RLConfig(RunConfig):
    """Fields every online RL method shares (PPO, GRPO, RLOO), beside those of
    :class:`~rlhfkit.train.run.RunConfig`.

    The batch sizes, from the one that defines an iteration to those that only bound memory:

    - ``batch_size`` = B, the **rollout batch**: responses generated, scored and trained on per
      iteration (GRPO / RLOO: B / num_generations prompts, num_generations responses each);
    - B / ``num_minibatches``, the **minibatch** (:attr:`minibatch_size`): rows per optimiser step.
      Each of the ``num_ppo_epochs`` passes shuffles the rollout batch and cuts it into
      ``num_minibatches`` minibatches, so an iteration takes num_ppo_epochs × num_minibatches steps;
    - minibatch / ``gradient_accumulation_steps``, the **micro-batch** (:attr:`micro_batch_size`):
      rows per forward + backward with gradients; memory only, the step is the minibatch's;
    - ``forward_batch_size``, the **forward chunk**: rows per no-grad forward pass of the rollout
      (old and reference log-probs, values); memory only;
    - ``sampling.batch_size``, the **generation chunk**: prompts per ``generate`` call; memory and speed;
    - ``reward.batch_size``, the **scoring chunk**: responses per reward-model forward pass or HTTP
      request; memory only.
    """

    model: str = ""
    """the SFT policy folder: the policy starts from it and it is the frozen KL reference"""
    prompts: str = ""
    """prompts: JSONL or HF dataset of {"prompt"} records"""
    output_dir: str = "runs/rl"
    """run folder: config.yaml, metrics.jsonl, checkpoints/, final/"""
    reward: RewardSettings = field(default_factory=RewardSettings)
    """reward sources (reward model / ensemble, HTTP endpoint, Python functions) and their weights"""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64, batch_size=64))
    """rollout sampling: max_new_tokens, temperature (also used by the training forward), top_p, top_k,
    batch_size (the generation chunk: prompts per generate call)"""
    max_prompt_length: int = 256
    """prompts longer than this many tokens are cut from the left (counted in data/prompts_truncated)"""
    missing_eos_penalty: float = 0.0
    """subtracted from the score of a response that hit max_new_tokens without EOS (Huang et al. 2024)"""
    total_steps: int = 100
    """policy iterations: each generates ``batch_size`` responses and trains on them"""
    batch_size: int = 64
    """the rollout batch: responses generated, scored and trained on per iteration"""
    num_ppo_epochs: int = 4
    """optimisation passes over each rollout batch"""
    num_minibatches: int = 1
    """optimiser steps per pass: the rollout batch is shuffled and cut into this many minibatches"""
    gradient_accumulation_steps: int = 1
    """micro-batches per minibatch (memory only: the update is the same)"""
    cliprange: float = 0.2
    """PPO ratio clip ε (Schulman et al. 2017)"""
    kl_coef: float = 0.05
    """coefficient β of the KL(policy ‖ reference) penalty"""
    log_kl: bool = True
    """compute and log objective/kl even when kl_coef is 0 (a reference pass per batch); false skips the
    reference pass when nothing else needs it, and objective/kl is then not logged"""
    loss_aggregation: LossAggregation = "token_mean"
    """how per-token losses become one: token_mean (every token of the minibatch weighs the same),
    seq_mean_token_mean (mean per response, then over responses: GRPO), seq_sum_norm (token sums over
    the constant sampling.max_new_tokens: Dr. GRPO); see rlhfkit.ops.aggregate_token_losses"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=3e-6, warmup_ratio=0.0,
                                                                   min_lr_ratio=1.0))
    """optimiser; the default schedule is constant (min_lr_ratio = 1)"""
    forward_batch_size: int = 64
    """the forward chunk: sequences per no-grad forward pass of the rollout (old, reference log-probs, values)"""
    gold_function: str | None = None
    """optional 'package.module:function' reward logged as gold/reward, never optimised"""
    save_every: int = 50
    """iterations between checkpoints (0: only at the end)"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """where rollouts are generated (backend=hf in process, or server: rlhfkit serve / vLLM / SGLang at url),
    how the server gets the weights after each update (sync, sync_dir) and the TIS correction (tis_cap)"""
    rollout_seed_per_chunk: bool = False
    """seed each generation chunk (``sampling.batch_size`` prompts) from (seed, iteration, its first row in the
    global batch), so the samples do not depend on the number of processes; always on with several
    processes (each rank then samples its own noise), off by default in one process (one RNG stream)"""

    @property
    def needs_reference(self) -> bool:
        """Whether each batch needs the reference log-probs: for the KL penalty, or to log the KL."""
        return self.kl_coef > 0 or self.log_kl

    @property
    def one_update_per_batch(self) -> bool:
        """Each rollout batch serves exactly one optimiser update (one epoch of one minibatch): that
        update's forward runs on the rollout's weights, so its detached log-probs are the old ones."""
        return self.num_ppo_epochs == 1 and self.num_minibatches == 1

    @property
    def minibatch_size(self) -> int:
        """Rows per optimiser step: ``batch_size / num_minibatches``."""
        return self.batch_size // self.num_minibatches

    @property
    def micro_batch_size(self) -> int:
        """Rows per forward + backward: ``minibatch_size / gradient_accumulation_steps``."""
        return self.minibatch_size // self.gradient_accumulation_steps

    @property
    def optimizer_steps(self) -> int:
        """Optimiser steps of the whole run: every iteration takes ``num_ppo_epochs`` ×
        ``num_minibatches`` of them, so the learning-rate schedule is built over this many."""
        return self.total_steps * self.num_ppo_epochs * self.num_minibatches

    def validate(self, *, extra_rewards: int = 0) -> None:
        require(bool(self.model), "model: set the SFT policy folder (model=path)")
        require(bool(self.prompts), "prompts: set the prompt file (prompts=path.jsonl)")
        self.reward.validate(callables=extra_rewards)
        require(self.total_steps > 0 and self.batch_size > 0, "total_steps and batch_size must be positive")
        require(self.num_ppo_epochs > 0, "num_ppo_epochs must be positive")
        self.optim.validate()
        require(self.num_minibatches > 0 and self.batch_size % self.num_minibatches == 0,
                f"batch_size ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})")
        mb = self.minibatch_size
        require(self.gradient_accumulation_steps > 0 and mb % self.gradient_accumulation_steps == 0,
                f"the minibatch ({mb} = batch_size / num_minibatches) must be divisible by "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps})")
        require(self.sampling.temperature > 0, "sampling.temperature must be > 0")
        require(self.sampling.max_new_tokens > 0, "sampling.max_new_tokens must be positive")
        require(self.cliprange > 0, "cliprange must be > 0")
        require(self.kl_coef >= 0, "kl_coef must be >= 0")
        require(self.max_prompt_length > 0, "max_prompt_length must be positive")
        self.rollout.validate()
        require(self.loss_aggregation in LOSS_AGGREGATIONS,
                f"loss_aggregation must be one of {', '.join(LOSS_AGGREGATIONS)}, got {self.loss_aggregation!r}")

    @property
    def aggregation(self) -> dict:
        """The keyword arguments that tell a policy loss how to aggregate its tokens."""
        return {"loss_aggregation": self.loss_aggregation, "max_length": self.sampling.max_new_tokens}


# ---------------------------------------------------------------- set-up


def load_prompts(path: str, tokenizer, *, max_prompt_length: int) -> tuple[list, list[list[int]], int]:
    """(prompt records' "prompt" fields, their token ids cut from the left, how many were cut)."""
    prompts = [r["prompt"] for r in load_records(path, "prompt")]
    ids, cut = [], 0
    for p in prompts:
        encoded = encode_prompt(tokenizer, p)
        if len(encoded) > max_prompt_length:
            encoded, cut = encoded[-max_prompt_length:], cut + 1
        ids.append(encoded)
    return prompts, ids, cut


@dataclass
class RLSetup:
    """What :func:`set_up` built."""

    out_dir: Path
    device: torch.device
    tokenizer: Any
    prompts: list
    prompt_ids: list[list[int]]
    prompts_truncated: int
    policy: Any
    actor: ActorCritic
    reference: Reference
    reward: RewardSource
    gold_fn: Callable | None
    generator: Generator


def build_generator(config: RLConfig, policy, tokenizer, out_dir: Path) -> Generator:
    """The rollout backend: in-process transformers, or a completions server that gets the policy's
    weights before every rollout (:class:`rlhfkit.rollout.server.ServerGenerator`)."""
    if config.rollout.backend == "server":
        sync_dir = Path(config.rollout.sync_dir) if config.rollout.sync_dir else out_dir / "weight_sync"
        return ServerGenerator(policy, tokenizer, config.sampling, config.rollout, sync_dir=sync_dir, seed=config.seed)
    return HFGenerator(policy, tokenizer, config.sampling)


def set_up(config: RLConfig, *, reward_fns: Sequence[Callable] = (), gold_fn: Callable | None = None,
           value_function: Callable[[Any], tuple[Any, Any]] | None = None) -> RLSetup:
    """Validate, start the run folder (config.yaml, seeds) and build, in this order (which fixes the
    random draws of initialisation): tokenizer, prompts, the policy (LoRA applied), the value
    function ``value_function(policy) -> (critic, value_head)`` if given (PPO), the actor, the frozen
    reference, the reward source (``reward_fns``: extra Python rewards given in code), the gold
    function (``gold_fn`` or ``config.gold_function``) and the generator."""
    config.validate(extra_rewards=len(reward_fns))
    out_dir = start_run(config)
    if process_count() > 1:  # each rank on its own device (accelerate's choice: cuda:LOCAL_RANK, or the CPU)
        device = partial_state().device
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = load_tokenizer(config.model)
    prompts, prompt_ids, n_cut = load_prompts(config.prompts, tokenizer, max_prompt_length=config.max_prompt_length)
    policy = load_causal_lm(config.model, lora=config.lora).to(device)
    critic, value_head = value_function(policy) if value_function is not None else (None, None)
    actor = ActorCritic(policy, critic=critic, value_head=value_head, disable_dropout=config.disable_dropout)
    reference = Reference(policy, config.model)
    reward = build_reward_source(config.reward, extra=reward_fns, device=device)
    if gold_fn is None and config.gold_function:
        gold_fn = PythonRewardSource(config.gold_function).fn
    generator = build_generator(config, policy, tokenizer, out_dir)
    return RLSetup(out_dir, device, tokenizer, prompts, prompt_ids, n_cut, policy, actor, reference, reward, gold_fn,
                   generator)


# ---------------------------------------------------------------- the run folder while the loop runs


class RLRun(Run):
    """:class:`~rlhfkit.train.run.Run` (position, metrics, progress, checkpoints) plus what an RL
    loop also resumes: the position in the prompt stream, the minibatch shuffle and
    method-specific positions (``extra``, e.g. the PPO-ptx data stream). ``--resume`` restores all
    ``modules`` (state_dict-ables: models, optimizer, scheduler, KL controller, running moments)."""

    def __init__(self, config: RLConfig, name: str, modules: dict, setup: RLSetup, *, prompts_per_step: int,
                 resume: bool):
        super().__init__(config.output_dir, name, modules, config=config, total_steps=config.total_steps,
                         resume=resume, first_metrics={"data/prompts": len(setup.prompts),
                                                       "data/prompts_truncated": setup.prompts_truncated})
        # every rank draws the same global batch of prompts (prompts_per_step per rank) and takes its share;
        # with several processes an epoch's incomplete last batch is dropped, so every rank holds batch_size rows
        self.rank, self.world = process_index(), process_count()
        require(self.world == 1 or len(setup.prompts) >= prompts_per_step * self.world,
                f"{config.prompts}: {len(setup.prompts)} prompts cannot fill one global batch of "
                f"{prompts_per_step} prompts × {self.world} processes")
        self.stream = infinite_batches([1] * len(setup.prompts), batch_size=prompts_per_step * self.world,
                                       seed=config.seed,
                                       start_epoch=self.state.epoch, start_batch=self.state.batch_in_epoch,
                                       group_by_length=False, drop_last=self.world > 1)
        self.extra: dict = dict(self.state.extra or {})
        """method-specific positions saved with every checkpoint (e.g. the PPO-ptx data stream)"""
        self.shuffle = torch.Generator().manual_seed(config.seed + 17)
        if "shuffle" in self.extra:
            self.shuffle.set_state(self.extra["shuffle"])

    def next_prompts(self, prompts: list, prompt_ids: list[list[int]], repeat: int = 1) -> tuple[list, list]:
        """This rank's prompts of the stream's next global batch, each repeated ``repeat`` times
        (group-contiguous: a GRPO / RLOO group stays on one rank)."""
        epoch, batch_index, idx = next(self.stream)
        self.state.epoch, self.state.batch_in_epoch = epoch, batch_index + 1
        idx = [i for i in shard(idx, self.rank, self.world) for _ in range(repeat)]
        return [prompts[i] for i in idx], [prompt_ids[i] for i in idx]

    def end_step(self, metrics: dict[str, float], show: Sequence[str]) -> None:
        """Log this iteration's metrics and checkpoint when due."""
        self.state.step += 1
        self.logger.log(self.state.step, metrics)
        self.progress.update(self.state.step, {k.replace("objective/", "").replace("/", "_"): metrics[k]
                                              for k in show if k in metrics})
        self.state.extra = {**self.extra, "shuffle": self.shuffle.get_state()}
        self.checkpoint_if_due()
