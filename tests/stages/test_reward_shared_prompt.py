"""A preference record's prompt through the reward model once (``shared_prompt``): the packed layout
by hand, the block mask by hand, and the same loss, LM term and gradients as a row per response."""

import pytest
import torch

from rlhfkit.data.rankings import expand_ranking
from rlhfkit.data.tokenize import lm_positions, pack_shared_prompt
from rlhfkit.models.forward import segment_attention_mask
from rlhfkit.models.reward_model import load_reward_model
from rlhfkit.train.reward_model import Group, group_loss
from rlhfkit.train.reward_passes import shared_prompt_agrees


def test_pack_shared_prompt_by_hand():
    # prompt [7, 8] then responses [1, 2] and [3, 4, 5]: the prompt once, positions go on from it
    (pack,) = pack_shared_prompt([[7, 8, 1, 2], [7, 8, 3, 4, 5]], [2, 2])
    assert pack.ids == [7, 8, 1, 2, 3, 4, 5]
    assert pack.positions == [0, 1, 2, 3, 2, 3, 4]
    assert pack.segments == [0, 0, 1, 1, 2, 2, 2]
    assert (pack.starts, pack.ends, pack.members) == ([2, 4], [3, 6], [0, 1])
    # LM term: token 1 predicted from the prompt's last token (index 1), 2 from 1 (index 2); the second
    # response's first token 3 from the prompt's end too (index 1), then 4 from index 4, 5 from index 5
    assert lm_positions(pack, 0) == ([1, 2], [1, 2])
    assert lm_positions(pack, 1) == ([1, 4, 5], [3, 4, 5])
    # 11 tokens as two rows (4 + 5 = 9 here; a 4-way ranking saves three prompts)
    assert len(pack.ids) == 7 < 4 + 5


def test_pack_falls_back_to_a_row_per_sequence():
    # truncation cut the prompt differently: two packs, each its own sequence
    packs = pack_shared_prompt([[7, 8, 1], [8, 3, 4]], [2, 1])
    assert [p.ids for p in packs] == [[7, 8, 1], [8, 3, 4]]
    assert [p.members for p in packs] == [[0], [1]]
    assert [p.ends for p in packs] == [[2], [2]]
    assert lm_positions(packs[1], 0) == ([0, 1], [3, 4])
    # same prompt tokens but one response empty, or no prompt at all: no sharing either
    assert len(pack_shared_prompt([[7, 8], [7, 8, 3]], [2, 2])) == 2
    (alone,) = pack_shared_prompt([[5, 6, 7]], [0])
    assert lm_positions(alone, 0) == ([0, 1], [6, 7])  # nothing predicts the first token


def test_segment_attention_mask_by_hand():
    # prompt (0, 0), response 1 (one token), response 2 (two tokens), one pad
    allowed = segment_attention_mask(torch.tensor([[0, 0, 1, 2, 2, -1]]))[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # prompt: causal on the prompt
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # response 1: the prompt and itself
        [1, 1, 0, 1, 0, 0],  # response 2: the prompt and itself, not response 1
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # a pad: itself only (no empty row)
    ]


def test_segment_attention_mask_with_a_sliding_window_by_hand():
    # prompt of 2 at positions 0, 1; response 1 of 3 tokens at positions 2, 3, 4; window 3: a token sees
    # keys less than 3 positions back, so position 4 no longer sees position 1 or 0
    segments = torch.tensor([[0, 0, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4]])
    allowed = segment_attention_mask(segments, positions, window=3)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],  # position 3 − 0 = 3: out of the window
        [0, 0, 1, 1, 1],
    ]


def test_one_mask_must_serve_every_layer():
    from types import SimpleNamespace

    from rlhfkit.models.forward import supports_segment_mask

    def backbone(**config):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", **config))

    assert supports_segment_mask(backbone(sliding_window=None))
    assert supports_segment_mask(backbone(sliding_window=4096, use_sliding_window=False))  # Qwen2's default
    assert supports_segment_mask(backbone(sliding_window=16))  # Mistral: every layer windowed
    assert not supports_segment_mask(backbone(sliding_window=16, layer_types=["sliding_attention", "full_attention"]))
    assert not supports_segment_mask(SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2")))


def _groups(prompt_len=3):
    prompt = [3, 40, 41, 42][:prompt_len]
    lengths = [2, 30, 5, 24, 3, 18, 6, 9]
    seqs = [prompt + [50 + k] * (n - 1) + [2] for k, n in enumerate(lengths)]
    pair = Group(seqs=seqs[:2], pairs=[(1, 0, 2 / 3)], margin=None, prompt="p", responses=["a", "b"],
                 prompt_lens=[prompt_len] * 2)
    ranking = Group(seqs=seqs[2:6], pairs=expand_ranking([1, 3, 0, 2], 4), margin=None, prompt="q",
                    responses=["c", "d", "e", "f"], prompt_lens=[prompt_len] * 4)
    # a pair whose prompt was truncated differently: a row per response inside a shared-prompt step
    ragged = Group(seqs=[seqs[6], seqs[7][1:]], pairs=[(0, 1, 1.0)], margin=None, prompt="r",
                   responses=["g", "h"], prompt_lens=[prompt_len, prompt_len - 1])
    margin = Group(seqs=[prompt + [60, 61, 2], prompt + [62, 2]], pairs=[(0, 1, 1.0)], margin=1.5, prompt="s",
                   responses=["i", "j"], prompt_lens=[prompt_len] * 2)
    return [pair, ranking, ragged, margin]


@pytest.mark.parametrize("buckets", [False, True])
def test_shared_prompt_group_loss_equals_a_row_per_response(tiny_model_dir, tiny_tokenizer, buckets):
    """The same loss, LM term and gradients (pairs, a 4-way ranking, a margin pair, and a pair whose
    prompts differ and so falls back to rows), with and without length buckets."""
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir).eval()
    weight = model.get_input_embeddings().weight
    results = {}
    for shared in (False, True):
        model.zero_grad()
        loss, stats = group_loss(model, _groups(), pad_token_id=tiny_tokenizer.pad_token_id, center_coef=0.01,
                                 device="cpu", lm_coef=0.5, lm_weight=weight, buckets=buckets, shared_prompt=shared)
        loss.backward()
        results[shared] = (float(loss.detach()), stats["lm_loss"], stats["reward_mean"],
                           [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-5)
    assert results[True][1] == pytest.approx(results[False][1], abs=1e-5)
    assert results[True][2] == pytest.approx(results[False][2], abs=1e-5)
    assert len(results[True][3]) == len(results[False][3])
    for shared, separate in zip(results[True][3], results[False][3]):
        torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-4)


def test_the_check_catches_a_model_that_ignores_the_mask(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """shared_prompt_agrees holds on the tiny Llama and fails when the mask is dropped (each response
    then sees its siblings)."""
    import rlhfkit.models.forward as forward

    model = load_reward_model(tiny_model_dir).train()
    pad = tiny_tokenizer.pad_token_id
    assert shared_prompt_agrees(model, _groups(), pad_token_id=pad)
    assert model.training  # its mode is given back
    monkeypatch.setattr(forward, "segment_attention_mask", lambda segments, *_: torch.ones(
        segments.shape[0], 1, segments.shape[1], segments.shape[1], dtype=torch.bool).tril())
    assert not shared_prompt_agrees(model, _groups(), pad_token_id=pad)
