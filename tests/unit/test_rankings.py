"""Rankings → pairs, by hand."""

import pytest
import torch

from rlhfkit.data.rankings import expand_ranking, flatten_ranking_pairs


def test_strict_ranking_of_four_gives_six_pairs_in_order():
    # C(4, 2) = 6 ; ranking [2, 0, 3, 1] best first → (better, worse) in ranking order
    pairs = expand_ranking([2, 0, 3, 1], 4)
    assert pairs == [(2, 0, 1.0), (2, 3, 1.0), (2, 1, 1.0), (0, 3, 1.0), (0, 1, 1.0), (3, 1, 1.0)]
    assert len(expand_ranking([0, 1, 2, 3], 4)) == 6
    # a single-member group is the same as a bare index
    assert expand_ranking([[2], 0, [3], 1], 4) == pairs


def test_ties_are_skipped_by_default():
    # [2, [0, 1], 3]: 6 pairs minus the tie (0, 1) = 5
    assert expand_ranking([2, [0, 1], 3], 4) == [(2, 0, 1.0), (2, 1, 1.0), (2, 3, 1.0), (0, 3, 1.0), (1, 3, 1.0)]


def test_soft_ties_get_probability_one_half():
    # the tie (0, 1) comes back with p = 0.5, listed-first first; all C(4, 2) = 6 pairs present
    assert expand_ranking([2, [0, 1], 3], 4, ties="soft") == [
        (2, 0, 1.0),
        (2, 1, 1.0),
        (2, 3, 1.0),
        (0, 1, 0.5),
        (0, 3, 1.0),
        (1, 3, 1.0),
    ]
    # everything tied: skip → no pair ; soft → 3 pairs of 0.5
    assert expand_ranking([[0, 1, 2]], 3) == []
    assert expand_ranking([[0, 1, 2]], 3, ties="soft") == [(0, 1, 0.5), (0, 2, 0.5), (1, 2, 0.5)]


@pytest.mark.parametrize(
    ("ranking", "k", "message"),
    [
        ([0, 1, 1], 3, r"ranking\[2\]: response 1 appears more than once"),
        ([0, [1, 0], 2], 3, r"ranking\[1\]\[1\]: response 0 appears more than once"),
        ([0, 1, 3], 3, r"ranking\[2\] = 3 is out of range for 3 responses"),
        ([0, -1, 1], 3, r"ranking\[1\] = -1 is out of range"),
        ([0, 2], 3, r"does not rank response\(s\) \[1\] of 3"),
        ([0, 1.0, 2], 3, r"ranking\[1\] must be an integer response index, got 1.0"),
        ([0, "1", 2], 3, r"must be an integer response index, got '1'"),
        ([True, 0], 2, r"ranking\[0\] must be an integer response index, got True"),
        ([0, [], 1], 2, r"ranking\[1\] is an empty tie group"),
        ("012", 3, r"ranking must be a list"),
    ],
)
def test_invalid_rankings_raise_clear_errors(ranking, k, message):
    with pytest.raises(ValueError, match=message):
        expand_ranking(ranking, k)


def test_unknown_ties_mode_raises():
    with pytest.raises(ValueError, match="ties must be one of"):
        expand_ranking([0, 1], 2, ties="half")


def test_flatten_ranking_pairs_offsets_each_prompt():
    # prompt 0 has K=3 (flat rewards 0..2), prompt 1 has K=2 (flat rewards 3..4)
    # prompt 1's pair (1, 0) becomes (3+1, 3+0) = (4, 3)
    pairs = [expand_ranking([0, [1, 2]], 3, ties="soft"), expand_ranking([1, 0], 2)]
    index, probs, groups = flatten_ranking_pairs(pairs, [3, 2])
    assert index.tolist() == [[0, 1], [0, 2], [1, 2], [4, 3]]
    assert probs.tolist() == [1.0, 1.0, 0.5, 1.0]
    assert groups.tolist() == [0, 0, 0, 1]
    assert index.dtype == torch.long and groups.dtype == torch.long and probs.dtype == torch.float32
    with pytest.raises(ValueError, match="out of range for 2 responses"):
        flatten_ranking_pairs([[(0, 2, 1.0)]], [2])
    with pytest.raises(ValueError, match="pairs for 1 prompts but response counts for 2"):
        flatten_ranking_pairs([[]], [2, 2])
