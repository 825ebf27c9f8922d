"""The pure pieces of multi-process training, by hand: a rank's shard, the per-chunk sampling seeds,
the whitening and the token weights in one process (their N-process forms are checked end to end
in test_data_parallel.py)."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.train.distributed import global_sums, global_whiten, shard
from rlhfkit.train.rl.rollout import chunk_seed
from rlhfkit.train.supervised import SupervisedConfig


def test_shards_are_contiguous_balanced_and_rebuild_the_batch():
    items = list(range(5))
    # 5 items on 2 ranks: 5 = 2·2 + 1, the first rank takes the extra one
    assert shard(items, 0, 2) == [0, 1, 2] and shard(items, 1, 2) == [3, 4]
    # 8 rows = 2 GRPO groups of 4 on 2 ranks: each group stays whole on one rank
    assert shard(list(range(8)), 1, 2) == [4, 5, 6, 7]
    for n in range(7):
        for world in (1, 2, 3):
            parts = [shard(list(range(n)), r, world) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard([], 1, 2) == []
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        shard(items, 2, 2)


def test_chunk_seeds_depend_on_the_global_row_not_on_the_rank():
    # rank 1 of 2 (batch 8 per rank) starts at global row 8: its first chunk draws what a single
    # process's chunk at row 8 draws
    assert chunk_seed(3, 5, 8 + 0) == chunk_seed(3, 5, 8)
    assert chunk_seed(3, 5, 8) == ((3 * 1_000_003 + 5) * 1_000_003 + 8)
    assert len({chunk_seed(3, s, r) for s in range(4) for r in (0, 4, 8)}) == 12


def test_one_process_whitening_and_sums_are_the_plain_formulas():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # mean 3, unbiased var ((4 + 1 + 0 + 9) / 3) = 14/3
    expected = (x - 3.0) / ((14 / 3) ** 0.5 + 1e-8)
    assert torch.allclose(global_whiten(x, None), expected)
    assert global_sums(None, [1, 2.5]) == [1.0, 2.5]


def test_steps_per_epoch_count_the_global_batch():
    config = SupervisedConfig(model="m", data="d", batch_size=4, max_steps=0, num_epochs=1.0)
    # 48 examples: 12 batches of 4 alone, 6 global batches of 2 × 4 on two processes
    assert config.total_steps(48) == 12 and config.total_steps(48, processes=2) == 6


def test_resuming_with_another_number_of_processes_is_a_clear_error(tmp_path, monkeypatch):
    from rlhfkit.train.run import LoopState, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 1)
    path = save_checkpoint(tmp_path, state=LoopState(step=3), modules={"model": model})  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")  # resumed by 2 processes: each rank needs its own RNG state
    with pytest.raises(ValueError, match=r"written by 1 process\(es\); resume it with the same number \(2 are running\)"):
        load_checkpoint(path, modules={"model": model})
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert load_checkpoint(path, modules={"model": model}).step == 3
