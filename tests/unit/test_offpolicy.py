"""The sampler/trainer gap and truncated importance sampling (Yao et al. 2025), by hand; the
server generator's pure helpers (groups, choices, the rollout it builds); the LoRA merge of the
serving side."""

import math

import pytest
import torch

from rlhfkit.losses import grpo_policy_loss, ppo_policy_loss
from rlhfkit.rollout.server import ServerError, choice_tokens, group_size, to_rollout
from rlhfkit.serve.weights import lora_deltas
from rlhfkit.train.rl.offpolicy import logprob_gap, tis_advantages, tis_weights

T = torch.tensor


def test_logprob_gap_by_hand():
    sampler = T([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    trainer = T([[-1.1, -2.0, -2.5], [-0.5, -0.2, -9.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # |diffs| on the 5 unmasked tokens: 0.1, 0, 0.5, 0, 0.3 (the masked 9.0 is ignored)
    gap = logprob_gap(sampler, trainer, mask)
    assert gap["rollout/logprob_diff_mean"] == pytest.approx((0.1 + 0 + 0.5 + 0 + 0.3) / 5, abs=1e-6)
    assert gap["rollout/logprob_diff_max"] == pytest.approx(0.5, abs=1e-6)
    assert logprob_gap(sampler, sampler, mask)["rollout/logprob_diff_max"] == 0.0  # identity


def test_tis_weights_by_hand():
    old = T([[math.log(0.5), math.log(0.2), math.log(0.9)]])
    sampler = T([[math.log(0.25), math.log(0.4), math.log(0.1)]])
    mask = T([[1.0, 1.0, 0.0]])
    # 0.5 / 0.25 = 2 capped at 1.5; 0.2 / 0.4 = 0.5 kept; the padded token (ratio 9) is 0
    w = tis_weights(old, sampler, mask, cap=1.5)
    assert torch.allclose(w, T([[1.5, 0.5, 0.0]]), atol=1e-6)
    assert torch.equal(tis_weights(old, old, mask, cap=2.0), mask)  # on-policy: every weight is 1
    with pytest.raises(ValueError, match="cap must be > 0"):
        tis_weights(old, sampler, mask, cap=0.0)


def test_tis_advantages_weight_each_tokens_policy_loss():
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = T([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    w = torch.rand(3, 4, generator=g) * 2 * mask
    adv = torch.randn(3, generator=g)
    # w·max(−Aρ, −A·clip ρ) per token, aggregated by hand (token_mean) ...
    ratio = torch.exp(logp - old)
    A = adv[:, None].expand(3, 4)
    per_token = torch.maximum(-A * ratio, -A * ratio.clamp(0.8, 1.2)) * w
    expected = (per_token * mask).sum() / mask.sum()
    # ... equals the loss with TIS-scaled advantages, through both losses
    scaled = tis_advantages(adv, w)
    assert scaled.shape == (3, 4)
    grpo = grpo_policy_loss(logp, old, scaled, mask, cliprange=0.2, loss_aggregation="token_mean")
    ppo = ppo_policy_loss(logp, old, scaled, mask, cliprange=0.2, loss_aggregation="token_mean")
    assert grpo.losses.mean() == pytest.approx(float(expected), abs=1e-6)
    assert ppo.losses.mean() == pytest.approx(float(expected), abs=1e-6)
    assert tis_advantages(adv, None) is adv  # off: unchanged


def test_group_size_finds_grpo_groups_and_falls_back_to_one():
    a, b, c = [1, 2], [3], [4, 5]
    assert group_size([a, a, a, b, b, b]) == 3
    assert group_size([a, b, c]) == 1
    assert group_size([a, a, b, c]) == 1  # a chance duplicate in a PPO batch: sent one by one
    assert group_size([a, a, a, a]) == 4


def test_choice_tokens_reads_token_ids_or_vllm_token_id_strings():
    lp = {"token_logprobs": [-0.5, -1.0], "tokens": ["token_id:7", "token_id:2"]}
    assert choice_tokens({"token_ids": [7, 2], "logprobs": lp}) == ([7, 2], [-0.5, -1.0])
    assert choice_tokens({"logprobs": lp}) == ([7, 2], [-0.5, -1.0])
    with pytest.raises(ServerError, match="token_id:N"):
        choice_tokens({"logprobs": {"token_logprobs": [-0.5], "tokens": ["hello"]}})
    with pytest.raises(ServerError, match="2 tokens but 1 log-probs"):
        choice_tokens({"token_ids": [7, 2], "logprobs": {"token_logprobs": [-0.5]}})


def test_to_rollout_pads_and_cuts_after_the_first_stop_token():
    eos, pad = 2, 0
    roll = to_rollout([[5, 6], [7]], [([9, eos, 9], [-1.0, -2.0, -3.0]), ([8, 8], [-0.5, -0.25])],
                      stop_ids=[eos], pad_token_id=pad)
    assert roll.prompt_ids.tolist() == [[5, 6], [pad, 7]] and roll.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert roll.response_ids.tolist() == [[9, eos, pad], [8, 8, pad]]  # the token after EOS is cut
    assert roll.response_mask.tolist() == [[1, 1, 0], [1, 1, 0]]
    assert roll.logprobs.tolist() == [[-1.0, -2.0, 0.0], [-0.5, -0.25, 0.0]]
    assert roll.has_eos.tolist() == [True, False]


def test_lora_delta_by_hand():
    # B (2×1) @ A (1×2) = [[1, 2], [3, 6]] ; α / r = 4 / 1 → ×4 ; rsLoRA α / √r is the same for r = 1
    tensors = {"base_model.model.layer.q_proj.lora_A.weight": T([[1.0, 2.0]]),
               "base_model.model.layer.q_proj.lora_B.weight": T([[1.0], [3.0]])}
    deltas = lora_deltas(tensors, {"r": 1, "lora_alpha": 4})
    assert list(deltas) == ["layer.q_proj.weight"]
    assert torch.equal(deltas["layer.q_proj.weight"], T([[4.0, 8.0], [12.0, 24.0]]))
    with pytest.raises(ValueError, match="use_dora"):
        lora_deltas(tensors, {"r": 1, "lora_alpha": 4, "use_dora": True})


def test_rollout_config_is_checked_and_read_from_overrides():
    from rlhfkit.config import ConfigError, from_dict, parse_overrides
    from rlhfkit.rollout.server import RolloutConfig
    from rlhfkit.train.rl.ppo import PPOConfig

    with pytest.raises(ConfigError, match="rollout.backend=server needs rollout.url"):
        RolloutConfig(backend="server").validate()
    with pytest.raises(ConfigError, match="rollout.sync=http streams weights to rlhfkit serve only"):
        RolloutConfig(backend="server", url="http://h:1", server_kind="vllm", sync="http").validate()
    with pytest.raises(ConfigError, match="tis_cap must be >= 0"):
        RolloutConfig(tis_cap=-1.0).validate()
    config = from_dict(PPOConfig, parse_overrides(["rollout.backend=server", "rollout.url=http://h:8000",
                                                   "rollout.server_kind=sglang", "rollout.tis_cap=2"]))
    assert (config.rollout.backend, config.rollout.server_kind, config.rollout.tis_cap) == ("server", "sglang", 2.0)


def test_a_server_that_never_comes_back_stops_the_trainer_with_a_clear_error(tiny_model_dir, tiny_tokenizer, tmp_path):
    import socket

    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.rollout.base import SamplingConfig
    from rlhfkit.rollout.server import RolloutConfig, ServerDown, ServerGenerator

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = RolloutConfig(backend="server", url=f"http://127.0.0.1:{port}", max_wait_s=0.3, retry_backoff_s=0.1)
    gen = ServerGenerator(load_causal_lm(tiny_model_dir), tiny_tokenizer, SamplingConfig(), config, sync_dir=tmp_path)
    with pytest.raises(ServerDown, match=r"did not come back within rollout.max_wait_s=0.3 s"):
        gen.generate([[1, 2, 3]])
