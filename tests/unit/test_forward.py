"""The one decoder forward (rlhfkit.models.forward): a left-padded row gets the same log-probs,
values and scores as the same row run alone, on a model with learned absolute positions (GPT-2),
through every path — the sampler's, the reference's, the policy + value head's, a critic's and a
reward model's. (Before positions were passed everywhere the value-head path and the critic were
off by 0.04–0.05 nats a token on such a row, so PPO's first KL to the reference was not 0.)"""

import pytest
import torch

from rlhfkit.data.tokenize import pad_batch
from rlhfkit.models.forward import last_token_scores, policy_forward, sequence_logprobs, token_values
from rlhfkit.models.reward_model import reward_forward
from rlhfkit.train.rl.policy import ActorCritic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 64


def tiny_gpt2(cls_name: str = "GPT2LMHeadModel", seed: int = 0):
    import transformers

    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0, num_labels=1)
    torch.manual_seed(seed)
    return getattr(transformers, cls_name)(config).eval()


@pytest.fixture
def batch():
    """Three prompts of 2, 5 and 9 tokens, each + a 4-token response: prompts left-padded to 9,
    responses right-padded (the last row's response is 2 tokens), as a rollout lays them out."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (2, 5, 9)]
    responses = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (4, 4, 2)]
    p_ids, p_mask = pad_batch(prompts, 0, side="left")
    r_ids, r_mask = pad_batch(responses, 0, side="right")
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    completion = torch.cat([torch.zeros_like(p_mask), r_mask], 1)
    return prompts, responses, ids, mask, completion


def alone(prompt, response):
    """One row, unpadded: (1, L) ids, mask, completion mask."""
    ids = torch.tensor([prompt + response])
    completion = torch.tensor([[0] * len(prompt) + [1] * len(response)])
    return ids, torch.ones_like(ids), completion


def test_left_padded_logprobs_and_head_values_equal_unpadded_row(batch):
    prompts, responses, ids, mask, completion = batch
    policy = tiny_gpt2()
    head = torch.nn.Linear(32, 1)
    actor = ActorCritic(policy, value_head=head)
    P = ids.shape[1] - 4
    with torch.no_grad():
        padded = actor.forward(ids, mask, completion, P, temperature=0.7, entropy=True)
        reference = sequence_logprobs(policy, ids, mask, completion, temperature=0.7)[:, P - 1:]
    # the value-head path and the reference path give the same log-probs: PPO's first KL is 0
    assert torch.equal(padded.logprobs, reference)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        one_ids, one_mask, one_comp = alone(p, r)
        with torch.no_grad():
            one = actor.forward(one_ids, one_mask, one_comp, len(p), temperature=0.7, entropy=True)
        n = len(r)
        assert torch.allclose(padded.logprobs[row, :n], one.logprobs[0, :n], atol=1e-5)
        assert torch.allclose(padded.entropy[row, :n], one.entropy[0, :n], atol=1e-5)
        assert torch.allclose(padded.values[row, :n], one.values[0, :n], atol=1e-5)


def test_left_padded_critic_values_and_reward_equal_unpadded_row(batch):
    prompts, responses, ids, mask, completion = batch
    critic = tiny_gpt2("GPT2ForSequenceClassification", seed=1)
    actor = ActorCritic(tiny_gpt2(), critic=critic)
    P = ids.shape[1] - 4
    with torch.no_grad():
        padded = actor.forward(ids, mask, completion, P, temperature=1.0)
        values = token_values(critic, ids, mask)  # (B, L)
        scores = reward_forward(critic, ids, mask)  # (B,) at each row's last real token
    for row, (p, r) in enumerate(zip(prompts, responses)):
        one_ids, one_mask, one_comp = alone(p, r)
        with torch.no_grad():
            one = actor.forward(one_ids, one_mask, one_comp, len(p), temperature=1.0)
            one_values = token_values(critic, one_ids, one_mask)[0]
            one_score = last_token_scores(critic, one_ids, one_mask)[0]
        n = len(r)
        assert torch.allclose(padded.values[row, :n], one.values[0, :n], atol=1e-5)
        real = mask[row].bool()
        assert torch.allclose(values[row][real], one_values, atol=1e-5)
        assert abs(float(scores[row]) - float(one_score)) < 1e-5


def test_pad_equal_to_eos_does_not_move_the_reward_position():
    # GPT-2 has no pad token: pad = EOS. A response ending in EOS, right-padded with EOS, is read at
    # its own EOS (from the mask), not at the last EOS of the row nor the first.
    critic = tiny_gpt2("GPT2ForSequenceClassification", seed=2)
    seqs = [[5, 6, 7, 0], [5, 6, 7, 8, 9, 0]]  # 0 = EOS = pad
    ids, mask = pad_batch(seqs, 0)
    with torch.no_grad():
        scores = reward_forward(critic, ids, mask)
        single = [float(reward_forward(critic, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)))
                  for s in seqs]
    assert torch.allclose(scores, torch.tensor(single), atol=1e-5)


def test_policy_forward_hidden_states_are_the_decoders(batch):
    _, _, ids, mask, completion = batch
    policy = tiny_gpt2()
    with torch.no_grad():
        out = policy_forward(policy, ids, mask, completion, hidden=True)
        full = policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      output_hidden_states=True)
    assert torch.allclose(out.hidden, full.hidden_states[-1], atol=1e-6)


def test_a_classifier_without_a_score_head_is_scored_by_its_own_forward():
    # DistilBERT has no `score` head and its forward takes no position_ids: the fallback path must
    # call it as it is (it raised TypeError when position ids were passed)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32, num_labels=1)).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad():
        scores = last_token_scores(model, ids, mask)
        assert torch.allclose(scores, model(input_ids=ids, attention_mask=mask).logits[:, 0])
