"""GRPO and RLOO: advantages by hand, the KL in the reward, config errors, and short runs that raise
a Python reward on the tiny model."""

import json
import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.rewards import RewardSettings
from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.train.group import GRPOConfig, RLOOConfig, advantages_for, run_grpo, run_rloo, sequence_scores
from rlhfkit.train.options import OptimConfig

REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])  # two prompts, n = 3, group-contiguous


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grpo_advantages_by_hand():
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1      → [−1, 0, 1] / (1 + 1e-4)
    # group 2: mean 1, unbiased std sqrt((1 + 1 + 4) / 2) = √3     → [−1, −1, 2] / (√3 + 1e-4)
    adv = advantages_for(GRPOConfig(num_generations=3), REWARDS)
    s3 = math.sqrt(3) + 1e-4
    expected = torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, -1 / s3, -1 / s3, 2 / s3])
    assert torch.allclose(adv, expected, atol=1e-6)
    # Dr. GRPO: centred only
    adv = advantages_for(GRPOConfig(num_generations=3, scale_by_std=False), REWARDS)
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]))


def test_rloo_advantages_by_hand():
    # r_i − mean of the other two: 1 − (2+3)/2 = −1.5, 2 − 2 = 0, 3 − 1.5 = 1.5 ;
    # 0 − (0+3)/2 = −1.5 (twice), 3 − 0 = 3
    adv = advantages_for(RLOOConfig(num_generations=3), REWARDS)
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
