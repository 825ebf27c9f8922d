"""GRPO and RLOO: advantages by hand, the KL in the reward, config errors, and short runs that raise
a Python reward on the tiny model."""

import json
import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.train.rl.reward_sources import RewardSettings
from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.train.rl import grpo, rloo
from rlhfkit.train.rl.grpo import GRPOConfig, run_grpo, sequence_scores
from rlhfkit.train.rl.rloo import RLOOConfig, run_rloo
from rlhfkit.train.optim import OptimConfig

REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])  # two prompts, n = 3, group-contiguous


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grpo_advantages_by_hand():
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1      → [−1, 0, 1] / (1 + 1e-4)
    # group 2: mean 1, unbiased std sqrt((1 + 1 + 4) / 2) = √3     → [−1, −1, 2] / (√3 + 1e-4)
    adv = grpo.sequence_advantages(GRPOConfig(num_generations=3), REWARDS)
    s3 = math.sqrt(3) + 1e-4
    expected = torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, -1 / s3, -1 / s3, 2 / s3])
    assert torch.allclose(adv, expected, atol=1e-6)
    # Dr. GRPO: centred only
    adv = grpo.sequence_advantages(GRPOConfig(num_generations=3, scale_by_std=False), REWARDS)
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]))


def test_rloo_advantages_by_hand():
    # r_i − mean of the other two: 1 − (2+3)/2 = −1.5, 2 − 2 = 0, 3 − 1.5 = 1.5 ;
    # 0 − (0+3)/2 = −1.5 (twice), 3 − 0 = 3
    adv = rloo.sequence_advantages(RLOOConfig(num_generations=3), REWARDS)
    assert torch.allclose(adv, torch.tensor([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]))


def test_kl_in_the_reward_is_a_sequence_penalty():
    scores = torch.tensor([1.0, 1.0])
    kl = torch.tensor([[0.5, 0.5, 9.0], [0.2, 0.2, 0.2]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # 1 − 0.1·(0.5 + 0.5) = 0.9 (the padded 9.0 does not count) ; 1 − 0.1·0.6 = 0.94
    out = sequence_scores(scores, kl, mask, kl_coef=0.1, kl_in="reward")
    assert torch.allclose(out, torch.tensor([0.9, 0.94]))
    assert torch.equal(sequence_scores(scores, kl, mask, kl_coef=0.1, kl_in="loss"), scores)


def test_batch_not_divisible_by_n_is_a_config_error():
    config = GRPOConfig(model="m", prompts="p.jsonl", reward=RewardSettings(functions=["os.path:join"]),
                        batch_size=10, num_generations=4)
    with pytest.raises(ConfigError, match=r"batch_size \(10\) must be a multiple of num_generations \(4\)"):
        config.validate()
    with pytest.raises(ConfigError, match="at least 2"):
        RLOOConfig(model="m", prompts="p.jsonl", reward=config.reward, num_generations=1).validate()


def letters(prompts, responses):
    return [sum(c.islower() and c.isascii() for c in r) / max(len(r), 1) for r in responses]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_group_method_raises_a_python_reward(method, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"User: what color is the {n}?\nAssistant:"}) + "\n"
                               for n in ("dax", "wug", "zorp", "fep") * 4))
    cls, run = (GRPOConfig, run_grpo) if method == "grpo" else (RLOOConfig, run_rloo)
    config = cls(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / method),
                 sampling=SamplingConfig(max_new_tokens=8, batch_size=16), batch_size=16, num_generations=4,
                 num_ppo_epochs=2, num_minibatches=2, total_steps=10, progress=False, save_every=0, seed=1,
                 optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0))
    run(config, reward_fns=[letters])
    m = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(m) == 10
    assert all(r["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6) for r in m)
    assert ("policy/kl_k3" in m[0]) == (config.kl_in == "loss")
    first, last = sum(r["objective/scores"] for r in m[:3]) / 3, sum(r["objective/scores"] for r in m[-3:]) / 3
    assert last > first + 0.1, (first, last)
    assert (tmp_path / method / "final" / "config.json").exists()


def test_dr_grpo_needs_both_of_its_changes():
    from rlhfkit.demo.steps.rl import variant

    assert not GRPOConfig(scale_by_std=False).is_dr_grpo  # the per-response 1/|o_i| is still there
    assert not GRPOConfig(loss_aggregation="seq_sum_norm").is_dr_grpo  # the std scaling is still there
    dr = GRPOConfig(scale_by_std=False, loss_aggregation="seq_sum_norm")
    assert dr.is_dr_grpo and variant(dr).startswith("Dr. GRPO")
    assert variant(GRPOConfig(scale_by_std=False)) == "GRPO without std scaling, loss_aggregation=seq_mean_token_mean"
    # RLOO treats the whole response as one action: a token sum (over a constant), not a mean
    assert RLOOConfig().loss_aggregation == "seq_sum_norm"
    with pytest.raises(ConfigError, match="loss_aggregation must be one of"):
        GRPOConfig(model="m", prompts="p.jsonl", reward=RewardSettings(functions=["os.path:join"]),
                   loss_aggregation="sum").validate()


def test_token_mean_micro_batches_add_up_to_the_minibatch_token_mean():
    from rlhfkit.train.rl.update import micro_batch_weights

    # minibatch rows 0..3 with 3, 1, 2, 2 tokens, cut into two micro-batches [0, 1] and [2, 3]:
    # their token means are weighted by 4/8 and 4/8 (here equal), e.g. rows [0, 2] | [1, 3]: 5/8 and 3/8
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]])
    assert micro_batch_weights([torch.tensor([0, 2]), torch.tensor([1, 3])], mask, "token_mean") == [5 / 8, 3 / 8]
    assert micro_batch_weights([torch.tensor([0, 2]), torch.tensor([1, 3])], mask, "seq_sum_norm") == [0.5, 0.5]
    # and so the weighted micro-batch losses equal the minibatch's token mean exactly
    from rlhfkit.ops import aggregate_token_losses

    per_token = torch.arange(12.0).view(4, 3)
    whole = aggregate_token_losses(per_token, mask, mode="token_mean").mean()
    parts = [w * aggregate_token_losses(per_token[i], mask[i], mode="token_mean").mean()
             for i, w in zip([torch.tensor([0, 2]), torch.tensor([1, 3])], [5 / 8, 3 / 8])]
    assert torch.allclose(sum(parts), whole)


@pytest.mark.slow
def test_learning_rate_schedule_spans_every_optimiser_step(tiny_model_dir, tmp_path):
    # 3 iterations × 2 epochs × 2 minibatches = 12 optimiser steps; cosine from 1e-3 to 0.1 · 1e-3.
    # After iteration 1 (4 steps): progress 4/12 → 0.1 + 0.9 · ½(1 + cos(π/3)) = 0.775 → lr 7.75e-4;
    # the minimum is reached after the 12th step, not after the 3rd (the old schedule over iterations).
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"User: what color is the {n}?\nAssistant:"}) + "\n"
                               for n in ("dax", "wug", "zorp", "fep")))
    config = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / "grpo"),
                        reward=RewardSettings(functions=["tests.stages.test_group:letters"]),
                        sampling=SamplingConfig(max_new_tokens=4, batch_size=8), batch_size=8, num_generations=2,
                        num_ppo_epochs=2, num_minibatches=2, total_steps=3, progress=False, save_every=0,
                        optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.0, min_lr_ratio=0.1))
    assert config.optimizer_steps == 12
    run_grpo(config)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()[1:]]
    assert lrs[0] == pytest.approx(7.75e-4)
    assert lrs[-1] == pytest.approx(1e-4) and min(lrs[:-1]) > 1e-4 * 1.5
