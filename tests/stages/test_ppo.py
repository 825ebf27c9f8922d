"""PPO: rollouts (EOS, sampler log-probs), the missing-EOS penalty, where the score lands, the LoRA
reference, per-token values, the first-minibatch invariants and the KL controller through the
trainer, a reward that rises, and an exact --resume."""

import json

import pytest
import torch

from rlhfkit.config import ConfigError, describe
from rlhfkit.models.forward import sequence_logprobs, token_values
from rlhfkit.models.loading import LoraSettings, load_causal_lm
from rlhfkit.train.rl.reward_sources import PythonRewardSource
from rlhfkit.rollout.base import Rollout, SamplingConfig
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.train.rl.policy import ActorCritic, Reference
from rlhfkit.train.rl.ppo import PPOConfig, run_ppo, token_rewards
from rlhfkit.train.rl.rollout import collect
from rlhfkit.train.rl.run import RLConfig
from rlhfkit.train.optim import OptimConfig

PROMPTS = [f"User: what color is the {n}?\nAssistant:" for n in ("dax", "wug", "zorp", "fep")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def letters(prompts, responses):
    """Fraction of response characters that are ASCII lowercase letters (random tokens: ~10%)."""
    return [sum(c.islower() and c.isascii() for c in r) / max(len(r), 1) for r in responses]


def spaces(prompts, responses):
    return [float(r.count(" ")) for r in responses]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 8))
    return path


def encode(tokenizer, prompts):
    from rlhfkit.data.tokenize import encode_prompt

    return [encode_prompt(tokenizer, p) for p in prompts]


# ---------------------------------------------------------------------------- rollouts


def test_generator_cuts_after_first_eos_and_logprobs_match_training_forward(tiny_model_dir, tiny_tokenizer):
    tok = tiny_tokenizer
    model = load_causal_lm(tiny_model_dir)
    # untie the head and favour EOS (+2 logits, ~5% a step at T = 0.7) so that some rows stop
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.copy_(model.get_output_embeddings().weight.data)
    head.bias.data.zero_()
    head.bias.data[tok.eos_token_id] = 2.0
    model.lm_head = head
    torch.manual_seed(0)
    gen = HFGenerator(model, tok, SamplingConfig(max_new_tokens=10, temperature=0.7, batch_size=16))
    rollout = gen.generate(encode(tok, PROMPTS * 8))  # two generate calls of 16, concatenated
    ids, mask, eos = rollout.response_ids, rollout.response_mask, tok.eos_token_id
    assert 0 < int(rollout.has_eos.sum()) < 32  # both kinds of rows are present
    for row in range(ids.shape[0]):
        hits = (ids[row] == eos).nonzero().flatten().tolist()
        assert bool(rollout.has_eos[row]) == bool(hits)
        end = hits[0] + 1 if hits else ids.shape[1]  # kept: up to and including the first EOS
        assert mask[row].tolist() == [1] * end + [0] * (ids.shape[1] - end)
        assert all(t == tok.pad_token_id for t in ids[row, end:].tolist())
        assert hits[1:] == [] or tok.pad_token_id == eos
    # the training forward at the same temperature reproduces the sampler's log-probs
    P = rollout.prompt_ids.shape[1]
    train = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                              temperature=0.7)[:, P - 1:]
    assert torch.allclose(train * mask, rollout.logprobs, atol=1e-4)


def test_top_k_zero_samples_the_full_distribution(tiny_model_dir, tiny_tokenizer):
    # transformers turns top_k=None into 50; 0 must switch filtering off. The random tiny model is
    # near-uniform over ~300 tokens: 256 first tokens hit far more than 50 distinct ids.
    torch.manual_seed(0)
    gen = HFGenerator(load_causal_lm(tiny_model_dir), tiny_tokenizer,
                      SamplingConfig(max_new_tokens=1, top_k=0, batch_size=256))
    first = gen.generate(encode(tiny_tokenizer, PROMPTS[:1] * 256)).response_ids[:, 0]
    assert len(set(first.tolist())) > 80


class _FixedGenerator:
    """Returns a hand-made rollout: row 0 ends with EOS at position 2, row 1 runs out of tokens."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, prompt_ids):
        t, eos, pad = self.tok, self.tok.eos_token_id, self.tok.pad_token_id
        word = t(" the", add_special_tokens=False)["input_ids"][0]
        from rlhfkit.data.tokenize import pad_batch

        pids, pmask = pad_batch(prompt_ids, pad, side="left")
        response = torch.tensor([[word, word, eos, pad], [word, word, word, word]])
        mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
        return Rollout(prompt_ids=pids, prompt_mask=pmask, response_ids=response, response_mask=mask,
                       logprobs=torch.zeros(2, 4), has_eos=torch.tensor([True, False]))


def test_missing_eos_penalty_and_score_on_last_response_token(tiny_model_dir, tiny_tokenizer):
    tok = tiny_tokenizer
    policy = load_causal_lm(tiny_model_dir)
    config = RLConfig(missing_eos_penalty=1.5)
    exp = collect(ActorCritic(policy), Reference(policy, str(tiny_model_dir)), _FixedGenerator(tok), tok,
                  PythonRewardSource(lambda p, r: [2.0] * len(r)), PROMPTS[:2], encode(tok, PROMPTS[:2]), config)
    assert exp.scores.tolist() == [2.0, 0.5]  # 2 − 1.5 for the row without EOS
    assert exp.mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    # same weights: the reference log-probs equal the policy's, KL = 0 exactly
    assert torch.equal(exp.logprobs, exp.ref_logprobs) and bool((exp.logprobs[:, :3] < 0).all())
    # score at the last non-pad response token (index 2 and 3); −kl_coef·KL everywhere else
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.1, 0.1, 0.1, 0.1]])
    rewards = token_rewards(exp, exp.scores, kl, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.10, -0.15 + 2.0, 0.0],  # pad position: no KL, no score
                             [-0.05, -0.05, -0.05, -0.05 + 0.5]])
    assert torch.allclose(rewards, expected)


# ---------------------------------------------------------------------------- models


def test_lora_reference_is_the_base_model(tiny_model_dir, tiny_tokenizer):
    policy = load_causal_lm(tiny_model_dir, lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a trained-looking adapter
    reference = Reference(policy, str(tiny_model_dir))
    assert reference.model is None  # no second copy of the weights
    rollout = _FixedGenerator(tiny_tokenizer).generate(encode(tiny_tokenizer, PROMPTS[:2]))
    args = (rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
    P = rollout.prompt_ids.shape[1]
    base = sequence_logprobs(load_causal_lm(tiny_model_dir), *args)[:, P - 1:]
    ref = reference.logprobs(policy, *args, P, temperature=1.0)
    assert torch.allclose(ref, base, atol=1e-6)
    mine = ActorCritic(policy).forward(*args, P, temperature=1.0).logprobs
    assert (mine - base).abs().max() > 1e-3  # the adapter is on again outside the reference


def test_critic_values_match_the_reward_model_at_the_last_token(tiny_model_dir, tiny_tokenizer):
    from rlhfkit.data.tokenize import pad_batch
    from rlhfkit.models.reward_model import load_reward_model, reward_forward

    critic = load_reward_model(tiny_model_dir)
    ids, mask = pad_batch(encode(tiny_tokenizer, PROMPTS[:3]), tiny_tokenizer.pad_token_id)
    values = token_values(critic, ids, mask)  # (B, L)
    last = mask.sum(1) - 1
    with torch.no_grad():
        assert torch.allclose(values[torch.arange(3), last], reward_forward(critic, ids, mask), atol=1e-5)


# ---------------------------------------------------------------------------- the trainer


def ppo_config(model, prompts, out, **kw):
    base = dict(model=str(model), prompts=str(prompts), output_dir=str(out), value_model="head",
                sampling=SamplingConfig(max_new_tokens=8, batch_size=16), batch_size=16, num_minibatches=2,
                gradient_accumulation_steps=2, num_ppo_epochs=2, total_steps=12, progress=False, save_every=0,
                optim=OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0), seed=1)
    base.update(kw)
    return PPOConfig(**base)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]


@pytest.mark.slow
def test_ppo_raises_a_python_reward_with_sane_invariants(tiny_model_dir, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    final = run_ppo(ppo_config(tiny_model_dir, prompt_file, out, target_kl=0.5, kl_horizon=32),
                    reward_fns=[letters], gold_fn=spaces)
    m = rows(out)
    assert len(m) == 12
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
                "objective/kl_coef", "policy/clipfrac", "policy/approxkl", "policy/ratio_mean", "val/clipfrac",
                "val/explained_variance", "response/length", "response/no_eos_fraction", "time/generate",
                "time/score", "time/reference", "time/train", "gold/reward"):
        assert key in m[0], key
    # first minibatch of every batch: the policy that sampled is the one being scored
    assert all(r["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6) for r in m)
    assert all(r["policy/approxkl_first_minibatch"] < 1e-9 for r in m)
    assert max(r["policy/approxkl"] for r in m) > 1e-5  # later minibatches did move
    assert m[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    # the adaptive controller: KL above target raises kl_coef, below lowers it (Ziegler et al. 2019)
    for before, after in zip(m, m[1:]):
        direction = after["objective/kl_coef"] - before["objective/kl_coef"]
        assert direction > 0 if before["objective/kl"] > 0.5 else direction < 0
    assert any(r["objective/kl"] > 0.5 for r in m) and any(r["objective/kl"] < 0.5 for r in m)
    first, last = sum(r["objective/scores"] for r in m[:3]) / 3, sum(r["objective/scores"] for r in m[-3:]) / 3
    assert last > first + 0.1, (first, last)
    # the demo's proxy-vs-gold table reads the same metrics
    from rlhfkit.demo.steps.rl import curve_section, read_curve

    curve = read_curve(out)
    assert [r["gold"] for r in curve] == [r["gold/reward"] for r in m]
    assert "| 12 | " in curve_section({"ppo": curve})

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size > 0


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_model_dir, tiny_tokenizer, prompt_file, tmp_path):
    # critic from a reward-model folder, adaptive KL, running score normalisation and PPO-ptx: every
    # piece of state must come back. 2 steps + resume 2 more == 4 steps uninterrupted (fp32, CPU).
    from rlhfkit.models.reward_model import load_reward_model

    load_reward_model(tiny_model_dir).save_pretrained(tmp_path / "critic")
    tiny_tokenizer.save_pretrained(tmp_path / "critic")
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p, "completion": " the thing is red."}) + "\n" for p in PROMPTS))
    kw = dict(value_model=str(tmp_path / "critic"), target_kl=0.1, kl_horizon=16, normalize_scores=True,
              score_clip=3.0, whiten_rewards=True, ptx_data=str(sft), ptx_coef=0.5, ptx_batch_size=2,
              optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0, min_lr_ratio=1.0), num_ppo_epochs=1)
    full = run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "full", total_steps=4, **kw),
                   reward_fns=[letters])
    run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "half", total_steps=2, **kw), reward_fns=[letters])
    resumed = run_ppo(ppo_config(tiny_model_dir, prompt_file, tmp_path / "half", total_steps=4, **kw),
                      resume=True, reward_fns=[letters])
    a, b = load_causal_lm(full).state_dict(), load_causal_lm(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("time/",)  # wall-clock times differ
    clean = [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows(tmp_path / "full")]
    assert clean == [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows(tmp_path / "half")]
    assert "loss/ptx" in clean[0]


def test_config_errors_are_clear(tiny_model_dir, prompt_file, tmp_path):
    from rlhfkit.train.rl.reward_sources import RewardSettings

    reward = RewardSettings(functions=["os.path:join"])
    with pytest.raises(ConfigError, match="value_model=reward needs reward.model"):
        ppo_config(tiny_model_dir, prompt_file, tmp_path, value_model="reward", reward=reward).validate()
    with pytest.raises(ConfigError, match="divisible by num_minibatches"):
        ppo_config(tiny_model_dir, prompt_file, tmp_path, batch_size=10, num_minibatches=4, reward=reward).validate()
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        ppo_config(tiny_model_dir, prompt_file, tmp_path, batch_size=8, num_minibatches=2,
                   gradient_accumulation_steps=3, reward=reward).validate()
    text = describe(PPOConfig)  # what `rlhfkit ppo --help` prints
    assert "kl_estimator" in text and "reward.ensemble_std_coef" in text and "sampling.temperature" in text
