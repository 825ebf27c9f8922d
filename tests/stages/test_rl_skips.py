"""The passes the online loops skip when nothing needs them change no number: the old-policy pass when a
batch serves one update (GRPO / RLOO), the reference pass when kl_coef = 0 and log_kl is off."""

import json
import math

import pytest
import torch

from rlhfkit.data.tokenize import encode_prompt, pad_batch
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.rollout.base import Rollout, SamplingConfig
from rlhfkit.train.rl.grpo import GRPOConfig, clipped_loss, run_grpo
from rlhfkit.train.rl.policy import ActorCritic, Reference
from rlhfkit.train.rl.ppo import PPOConfig, run_ppo
from rlhfkit.train.rl.reward_sources import PythonRewardSource
from rlhfkit.train.rl.rloo import RLOOConfig, run_rloo
from rlhfkit.train.rl.rollout import collect, complete_experience
from rlhfkit.train.rl.update import optimise
from rlhfkit.train.optim import OptimConfig, optimizer_and_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["User: what color is the dax?\nAssistant:", "User: where does the wug live?\nAssistant:"]


class _Fixed:
    """Four hand-made responses (two per prompt) of uneven lengths, one without EOS."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, prompt_ids):
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        a, b = (self.tok(w, add_special_tokens=False)["input_ids"][0] for w in (" the", " red"))
        pids, pmask = pad_batch(prompt_ids, pad, side="left")
        response = torch.tensor([[a, b, eos, pad, pad], [b, b, a, a, b], [a, eos, pad, pad, pad], [b, a, b, eos, pad]])
        mask = (torch.arange(5)[None] < torch.tensor([3, 5, 2, 4])[:, None]).long()
        return Rollout(prompt_ids=pids, prompt_mask=pmask, response_ids=response, response_mask=mask,
                       logprobs=torch.zeros(4, 5), has_eos=torch.tensor([True, False, True, True]))


def _one_update(tiny_model_dir, tok, *, skip_old: bool):
    torch.manual_seed(0)
    policy = load_causal_lm(tiny_model_dir)
    actor = ActorCritic(policy)
    config = GRPOConfig(num_generations=2, batch_size=4, kl_coef=0.05, optim=OptimConfig(learning_rate=1e-2))
    prompts = [p for p in PROMPTS for _ in range(2)]
    exp = collect(actor, Reference(policy, str(tiny_model_dir)), _Fixed(tok), tok,
                  PythonRewardSource(lambda p, r: [0.0] * len(r)), prompts,
                  [encode_prompt(tok, p) for p in prompts], config, old_logprobs=not skip_old)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    optimizer, scheduler = optimizer_and_schedule(actor.parameters(), config.optim, total_steps=1)
    seen = {"logprobs": torch.zeros_like(exp.mask), "entropy": torch.zeros_like(exp.mask)}

    def record(idx, out):
        seen["logprobs"][idx], seen["entropy"][idx] = out.logprobs.detach(), out.entropy

    stats = optimise(actor, exp, config, optimizer, scheduler, torch.Generator().manual_seed(0),
                     lambda out, idx: clipped_loss(out, exp, idx, advantages, config), values=False,
                     on_forward=record if skip_old else None)
    if skip_old:
        complete_experience(exp, seen["logprobs"], seen["entropy"])
    return exp, stats, [p.detach().clone() for p in policy.parameters()]


def test_skipping_the_old_policy_pass_gives_the_same_loss_gradients_and_metrics(tiny_model_dir, tiny_tokenizer):
    full, full_stats, full_params = _one_update(tiny_model_dir, tiny_tokenizer, skip_old=False)
    skip, skip_stats, skip_params = _one_update(tiny_model_dir, tiny_tokenizer, skip_old=True)
    # the update's forward (train mode, dropout off) on the rollout's weights recomputes the old pass's
    # numbers: the same kernels on the same rows, so equal to float rounding (1e-6 on log-probs of ~-5)
    assert torch.allclose(full.logprobs, skip.logprobs, atol=1e-6)
    assert torch.allclose(full.entropy, skip.entropy, atol=1e-6)
    assert bool((skip.logprobs[skip.mask.bool()] < 0).all())  # filled in, on every response token
    # ratio 1 either way, so the loss, its KL term and the gradient step are the same
    assert skip_stats["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    for key in ("loss/total", "policy/kl_k3", "policy/ratio_mean", "policy/clipfrac", "policy/grad_norm"):
        assert skip_stats[key] == pytest.approx(full_stats[key], abs=1e-6), key
    start = [p.detach() for p in load_causal_lm(tiny_model_dir).parameters()]
    for a, b, s in zip(full_params, skip_params, start):
        assert torch.allclose(a, b, atol=1e-6)
    assert max(float((a - s).abs().max()) for a, s in zip(full_params, start)) > 1e-3  # the update moved them


def letters(prompts, responses):
    return [sum(c.islower() and c.isascii() for c in r) / max(len(r), 1) for r in responses]


def _metrics(tiny_model_dir, tmp_path, name, cls, run, **kw):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
    config = cls(model=str(tiny_model_dir), prompts=str(prompts), output_dir=str(tmp_path / name),
                 sampling=SamplingConfig(max_new_tokens=6, batch_size=8), batch_size=8, total_steps=3,
                 progress=False, save_every=0, seed=1,
                 optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0), **kw)
    run(config, reward_fns=[letters])
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()][1:]


def _same(a: list[dict], b: list[dict], *, except_keys=()):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        keys = {k for k in ra if not k.startswith("time/") and k not in except_keys}
        assert keys == {k for k in rb if not k.startswith("time/") and k not in except_keys}
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], abs=1e-5, rel=1e-5), k


@pytest.mark.parametrize("cls,run,kw", [(GRPOConfig, run_grpo, {}),
                                        (RLOOConfig, run_rloo, {"kl_coef": 0.0})])
def test_group_runs_without_the_old_pass_log_what_the_full_passes_logged(tiny_model_dir, tmp_path, monkeypatch,
                                                                       cls, run, kw):
    kw = dict(num_generations=4, **kw)
    config = cls(**kw)
    assert config.old_logprobs_from_update  # GRPO's defaults; RLOO's when the KL is not in the reward
    fast = _metrics(tiny_model_dir, tmp_path, "fast", cls, run, **kw)
    monkeypatch.setattr(cls, "old_logprobs_from_update", property(lambda self: False))  # the code before
    full = _metrics(tiny_model_dir, tmp_path, "full", cls, run, **kw)
    _same(fast, full)
    assert all(r["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6) for r in fast)


def test_when_the_old_pass_is_still_needed():
    assert not GRPOConfig(num_ppo_epochs=2).old_logprobs_from_update  # a second epoch needs fixed old log-probs
    assert not GRPOConfig(num_minibatches=2, batch_size=8).old_logprobs_from_update
    assert not RLOOConfig().old_logprobs_from_update  # RLOO's KL is in the reward: needed before the update
    assert not GRPOConfig(disable_dropout=False).old_logprobs_from_update  # train-mode dropout ≠ the old pass
    config = GRPOConfig()
    config.rollout.tis_cap = 2.0
    assert not config.old_logprobs_from_update  # TIS weighs the advantages by the old log-probs


@pytest.mark.parametrize("cls,run,kw", [(GRPOConfig, run_grpo, {"num_generations": 4}),
                                        (PPOConfig, run_ppo, {"value_model": "head", "num_ppo_epochs": 2})])
def test_kl_coef_zero_without_log_kl_skips_the_reference_and_logs_no_kl(tiny_model_dir, tmp_path, cls, run, kw):
    assert not cls(kl_coef=0.0, log_kl=False).needs_reference and cls(kl_coef=0.0).needs_reference
    logged = _metrics(tiny_model_dir, tmp_path, "log", cls, run, kl_coef=0.0, **kw)
    skipped = _metrics(tiny_model_dir, tmp_path, "skip", cls, run, kl_coef=0.0, log_kl=False, **kw)
    # log_kl (the default) keeps objective/kl with kl_coef = 0 (the demo's ppo_no_kl reads it)
    assert all(math.isfinite(r["objective/kl"]) for r in logged)
    assert all("objective/kl" not in r for r in skipped)  # not computed, so not logged (not a fake 0)
    assert all(r["objective/non_score_reward"] == 0.0 for r in skipped)
    _same(logged, skipped, except_keys=("objective/kl",))
