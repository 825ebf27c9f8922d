"""Every stage on a tiny random model of each family — GPT-2, Qwen2, Gemma, Llama-3, Mistral — with
that family's tokenizer conventions (rlhfkit.models.families): learned absolute positions, no pad
token, pad == EOS == BOS, a template that writes BOS while the tokenizer adds one, a sliding window.

Per family: the token conventions (one BOS where the family has one, none added otherwise, one EOS),
the sampler's log-probs on left-padded prompts of mixed lengths equal the training forward's, then
SFT, reward model, DPO, KTO, ORPO, SimPO, PPO (critic from the reward model, and a value head),
GRPO and RLOO for 1–2 steps each: PPO's first KL is 0 and its first ratio 1 on those left-padded
batches, and every final folder loads with plain transformers."""

import json

import pytest
import torch

from rlhfkit.data.tokenize import encode_completion, encode_prompt, pad_batch
from rlhfkit.models.families import CONVENTIONS, FAMILIES, create_tiny_family
from rlhfkit.models.forward import sequence_logprobs
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.train.rl.reward_sources import RewardSettings
from rlhfkit.rollout.base import SamplingConfig
from rlhfkit.rollout.hf import HFGenerator
from rlhfkit.train.optim import OptimConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

NAMES = ["dax", "wug", "zorp", "fep"]
SHORT = "User: dax?\nAssistant:"
LONG = ("User: i think the zorp is blue and the wug lives in the cave, the dax is red and the fep eats berries. "
        "what color is the zorp?\nAssistant:")
CHAT = [{"role": "user", "content": "what color is the wug?"}]
OPTIM = OptimConfig(learning_rate=1e-3, warmup_ratio=0.0, min_lr_ratio=1.0)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def has_template(family):
    return CONVENTIONS[family].chat_template is not None


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def model_dir(family, tiny_texts, tmp_path_factory):
    return create_tiny_family(family, tiny_texts, tmp_path_factory.mktemp(family) / "model")


@pytest.fixture(scope="session")
def data(family, tmp_path_factory):
    """SFT, preference, unpaired and prompt files; conversational records too where the family has
    a chat template; RL prompts of clearly different token lengths (left padding in every batch)."""
    root = tmp_path_factory.mktemp(f"{family}-data")
    sft = [{"prompt": f"User: what color is the {n}?\nAssistant:", "completion": f" the {n} is red."} for n in NAMES]
    prefs = [{"prompt": f"User: what color is the {n}?\nAssistant:", "chosen": f" the {n} is red.",
              "rejected": f" it is blue, i think, the {n} is blue."} for n in NAMES]
    prompts = [{"prompt": SHORT}, {"prompt": LONG}, {"prompt": SHORT.replace("dax", "wug")}]
    if has_template(family):
        sft.append({"messages": CHAT + [{"role": "assistant", "content": "the wug is red."}]})
        prefs.append({"prompt": CHAT, "chosen": [{"role": "assistant", "content": "red."}],
                      "rejected": [{"role": "assistant", "content": "blue."}]})
        prompts.append({"prompt": CHAT})
    else:
        prompts.append({"prompt": LONG.replace("zorp?", "dax?")})
    kto = [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
           for p in prefs for key in ("chosen", "rejected")]
    return {"sft": write(root / "sft.jsonl", sft * 2), "prefs": write(root / "prefs.jsonl", prefs * 2),
            "kto": write(root / "kto.jsonl", kto), "prompts": write(root / "prompts.jsonl", prompts)}


def reward_config(model_dir, data, out):
    from rlhfkit.train.reward_model import RewardConfig

    return RewardConfig(model=str(model_dir), data=str(data["prefs"]), output_dir=str(out), batch_size=4,
                        max_length=64, max_steps=2, optim=OPTIM, eval_fraction=0.0, log_every=1, save_every=0,
                        progress=False, precision="fp32")


@pytest.fixture(scope="session")
def reward_dir(model_dir, data, tmp_path_factory):
    from rlhfkit.train.reward_model import run_reward

    return run_reward(reward_config(model_dir, data, tmp_path_factory.mktemp("rm") / "run"))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- token conventions


def test_one_bos_where_the_family_has_one_and_one_eos(family, model_dir):
    tok = load_tokenizer(model_dir)
    conv = CONVENTIONS[family]
    expected_bos = 1 if conv.add_bos else 0  # GPT-2's BOS (= EOS) and Qwen2 (none) add nothing
    prompts = [SHORT] + ([CHAT] if has_template(family) else [])
    for prompt in prompts:
        ids = encode_prompt(tok, prompt)
        if tok.bos_token_id is not None:
            assert ids.count(tok.bos_token_id) == expected_bos, (family, prompt, tok.convert_ids_to_tokens(ids))
            assert (ids[0] == tok.bos_token_id) == conv.add_bos
        completion = encode_completion(tok, prompt, " the dax is red." if isinstance(prompt, str)
                                       else [{"role": "assistant", "content": "red."}])
        assert completion[-1] == tok.eos_token_id and completion.count(tok.eos_token_id) == 1
        assert tok.bos_token_id is None or tok.bos_token_id not in completion or family == "gpt2"


def test_packed_documents_have_one_separator(family, model_dir):
    from rlhfkit.data.tokenize import pack_documents

    tok = load_tokenizer(model_dir)
    flat = [t for b in pack_documents(tok, ["the dax.", "the wug."], block_size=1000) for t in b]
    words = [tok(t, add_special_tokens=False)["input_ids"] for t in ("the dax.", "the wug.")]
    bos = [tok.bos_token_id] if CONVENTIONS[family].add_bos else []  # GPT-2: <|endoftext|> only between
    assert flat == bos + words[0] + [tok.eos_token_id] + bos + words[1] + [tok.eos_token_id]


def test_conversational_record_without_a_chat_template_names_the_model(family, model_dir, data, tmp_path):
    if has_template(family):
        pytest.skip("the family has a chat template")
    from rlhfkit.train.sft import SFTConfig, run_sft

    chat = write(tmp_path / "chat.jsonl", [{"messages": CHAT + [{"role": "assistant", "content": "red."}]}] * 4)
    with pytest.raises(ValueError, match=r"(?s)model.*chat template") as err:
        run_sft(SFTConfig(model=str(model_dir), data=str(chat), output_dir=str(tmp_path / "sft"), batch_size=4,
                          max_steps=1, optim=OPTIM, eval_fraction=0.0, save_every=0, eval_every=0, progress=False, precision="fp32"))
    assert str(model_dir) in str(err.value)


def test_sampler_logprobs_equal_the_training_forward_on_left_padded_prompts(family, model_dir):
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    prompts = [encode_prompt(tok, p) for p in (SHORT, LONG, SHORT, LONG)]
    assert len(prompts[1]) > 2 * len(prompts[0])  # clearly different lengths: two of four rows left-padded
    torch.manual_seed(0)
    rollout = HFGenerator(model, tok, SamplingConfig(max_new_tokens=8, temperature=0.9, batch_size=4)).generate(prompts)
    P = rollout.prompt_ids.shape[1]
    train = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                              temperature=0.9)[:, P - 1:]
    assert torch.allclose(train * rollout.response_mask, rollout.logprobs, atol=1e-4)


def test_shared_prompt_scores_equal_a_row_per_response(family, model_dir):
    """The reward model's shared-prompt passes (a ranking's prompt once, its responses packed after
    it) score like a row per response on every family: GPT-2's learned positions, and Mistral's
    sliding window (16 tokens here, shorter than this prompt), which the packed mask then carries."""
    from rlhfkit.data.rankings import expand_ranking
    from rlhfkit.models.forward import backbone_and_score, supports_segment_mask
    from rlhfkit.models.reward_model import load_reward_model
    from rlhfkit.train.reward_model import Group
    from rlhfkit.train.reward_passes import shared_prompt_agrees

    tok = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, tokenizer=tok)
    prompt = encode_prompt(tok, LONG)
    responses = [" the zorp is blue.", " red.", " i do not know what color the zorp is.", " blue"]
    seqs = [prompt + encode_completion(tok, LONG, r) for r in responses]
    group = Group(seqs=seqs, pairs=expand_ranking([0, 3, 1, 2], 4), margin=None, prompt=LONG, responses=responses,
                  prompt_lens=[len(prompt)] * 4)
    assert len(seqs[0]) > 16  # past Mistral's window
    assert supports_segment_mask(backbone_and_score(model)[0])
    assert shared_prompt_agrees(model, [group], pad_token_id=tok.pad_token_id, atol=1e-5)


# ---------------------------------------------------------------- supervised stages


def test_sft(family, model_dir, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhfkit.train.sft import SFTConfig, run_sft

    final = run_sft(SFTConfig(model=str(model_dir), data=str(data["sft"]), output_dir=str(tmp_path / "sft"),
                              batch_size=4, max_length=64, max_steps=2, optim=OPTIM, eval_fraction=0.0,
                              log_every=1, save_every=0, eval_every=0, progress=False, precision="fp32"))
    losses = [m["train/loss"] for m in metrics(tmp_path / "sft") if "train/loss" in m]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert AutoModelForCausalLM.from_pretrained(final).config.model_type == load_causal_lm(model_dir).config.model_type


def test_reward_model_loads_with_plain_transformers_and_scores_where_rlhfkit_does(family, reward_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.reward_model import encode_pair_texts, load_scorer, reward_forward

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    tok = load_tokenizer(reward_dir)
    # a pad id in the config (transformers refuses batch > 1 without one), and not EOS: transformers'
    # pooling reads the last non-pad token, which with pad == EOS is the one before the final EOS
    assert model.config.pad_token_id == tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    seqs = [encode_pair_texts(tok, p, r, max_length=512, max_prompt_length=None)
            for p, r in ((SHORT, " the dax is red."), (LONG, " blue."))]
    assert all(s[-1] == tok.eos_token_id for s in seqs)
    ids, mask = pad_batch(seqs, tok.pad_token_id)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits[:, 0]  # transformers' own pooling
        ours = reward_forward(model, ids, mask)  # at the last real token, from the mask
    assert torch.allclose(plain, ours, atol=1e-5)
    bias = model.config.rlhfkit_reward_bias
    scores = load_scorer(reward_dir, max_length=512).score([SHORT, LONG], [" the dax is red.", " blue."])
    assert torch.allclose(scores, ours + bias, atol=1e-5)


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo"])
def test_direct_method(family, model_dir, data, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from rlhfkit.train import direct as P

    cls, run = {"dpo": (P.DPOConfig, P.run_dpo), "kto": (P.KTOConfig, P.run_kto),
                "orpo": (P.ORPOConfig, P.run_orpo), "simpo": (P.SimPOConfig, P.run_simpo)}[method]
    out = tmp_path / method
    config = cls(model=str(model_dir), data=str(data["kto" if method == "kto" else "prefs"]), output_dir=str(out),
                 batch_size=4, max_length=64, max_steps=2, optim=OPTIM, log_every=1, save_every=0, progress=False, precision="fp32")
    final = run(config)
    rows = [m for m in metrics(out) if "train/loss" in m]
    assert len(rows) == 2
    if method in ("dpo", "kto"):  # policy == reference before the first update: every log-ratio is 0
        assert rows[0]["train/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == len(load_tokenizer(model_dir))


# ---------------------------------------------------------------- online RL


def rl_rows(out):
    return metrics(out)[1:]  # row 0: data counts


@pytest.mark.parametrize("value_model", ["reward", "head"])
def test_ppo_first_kl_zero_and_ratio_one_on_left_padded_batches(family, model_dir, data, reward_dir, tmp_path,
                                                                 value_model):
    from transformers import AutoModelForCausalLM

    from rlhfkit.train.rl.ppo import PPOConfig, run_ppo

    out = tmp_path / "ppo"
    final = run_ppo(PPOConfig(model=str(model_dir), prompts=str(data["prompts"]), output_dir=str(out),
                              reward=RewardSettings(model=str(reward_dir)), value_model=value_model,
                              sampling=SamplingConfig(max_new_tokens=8, batch_size=4), batch_size=4,
                              num_minibatches=1, num_ppo_epochs=2, total_steps=1, optim=OPTIM, progress=False, precision="fp32",
                              save_every=0, seed=1))
    (m,) = rl_rows(out)
    assert m["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6)
    assert m["policy/approxkl_first_minibatch"] < 1e-9
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == len(load_tokenizer(model_dir))


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_group_method(family, model_dir, data, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from rlhfkit.train.rl.grpo import GRPOConfig, run_grpo
    from rlhfkit.train.rl.rloo import RLOOConfig, run_rloo

    cls, run = (GRPOConfig, run_grpo) if method == "grpo" else (RLOOConfig, run_rloo)
    out = tmp_path / method
    final = run(cls(model=str(model_dir), prompts=str(data["prompts"]), output_dir=str(out),
                    sampling=SamplingConfig(max_new_tokens=8, batch_size=8), batch_size=8, num_generations=2,
                    num_ppo_epochs=2, num_minibatches=1, total_steps=1, optim=OPTIM, progress=False, precision="fp32",
                    save_every=0, seed=1),
                reward_fns=[lambda prompts, responses: [float(len(r)) for r in responses]])
    (m,) = rl_rows(out)
    assert m["policy/ratio_mean_first_minibatch"] == pytest.approx(1.0, abs=1e-6)
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == len(load_tokenizer(model_dir))


@pytest.mark.slow
def test_sampling_stops_at_every_stop_token_of_the_generation_config(tiny_texts, tmp_path):
    # Gemma's generation config lists <end_of_turn> beside <eos>; a rollout must end at either, and
    # the decoded text must not carry it
    from rlhfkit.models.loading import stop_token_ids
    from rlhfkit.rollout.hf import decode_responses

    model_dir = create_tiny_family("gemma", tiny_texts, tmp_path / "gemma")
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    stops = stop_token_ids(model, tok)
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in stops and tok.eos_token_id in stops
    # make <end_of_turn> the likeliest next token everywhere: every response is then that one token
    with torch.no_grad():
        model.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.get_output_embeddings().bias[end_of_turn] = 50.0
    rollout = HFGenerator(model, tok, SamplingConfig(max_new_tokens=6, batch_size=4)).generate([[tok.bos_token_id]] * 4)
    assert rollout.has_eos.all() and rollout.response_mask.sum(1).tolist() == [1, 1, 1, 1]
    assert decode_responses(tok, rollout) == [""] * 4
