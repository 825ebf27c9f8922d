"""The supervised stages' data order: seeded and length-grouped by default, file order with shuffle=false."""

import torch

from rlhfkit.train.run import epoch_batches, make_accelerator
from rlhfkit.train.optim import optimizer_and_schedule
from rlhfkit.train.supervised import SupervisedConfig, train_loop


def test_shuffle_false_is_file_order_every_epoch():
    lengths = [5, 1, 4, 2, 3]
    # 5 items in batches of 2: [0, 1], [2, 3], [4] — whatever the seed, the epoch or the lengths
    for seed, epoch in ((0, 0), (3, 7)):
        assert epoch_batches(lengths, batch_size=2, seed=seed, epoch=epoch, shuffle=False) == [[0, 1], [2, 3], [4]]
    assert epoch_batches(lengths, batch_size=2, seed=0, epoch=0, shuffle=False, drop_last=True) == [[0, 1], [2, 3]]
    shuffled = epoch_batches(lengths, batch_size=2, seed=0, epoch=0)
    assert sorted(i for b in shuffled for i in b) == [0, 1, 2, 3, 4]  # the default still covers every item once


def _indices_seen(tmp_path, shuffle: bool) -> list[list[int]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    config = SupervisedConfig(model="m", data="d", batch_size=3, max_steps=4, log_every=100, save_every=0,
                              progress=False, shuffle=shuffle, output_dir=str(tmp_path))
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), config.optim, total_steps=4)
    seen = []

    def step_fn(model, indices):
        seen.append(list(indices))
        return model(torch.ones(len(indices), 2)).mean(), {}

    train_loop(config, make_accelerator("fp32"), model, optimizer, scheduler, name="t", out_dir=tmp_path / str(shuffle),
               lengths=[7, 1, 6, 2, 5, 3, 4], step_fn=step_fn, weight_fn=lambda idx: float(len(idx)))
    return seen


def test_train_loop_follows_the_file_order_when_shuffle_is_off(tmp_path):
    # 7 items, batches of 3: [0, 1, 2], [3, 4, 5], [6], then the next epoch starts again at [0, 1, 2]
    assert _indices_seen(tmp_path, shuffle=False) == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]
    assert _indices_seen(tmp_path, shuffle=True) != [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]
