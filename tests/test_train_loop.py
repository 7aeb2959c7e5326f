"""hwloop.search.train.train_epochs is the one training loop (baselines.finetune calls it): one shuffle per epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from hwloop.search.baselines import finetune
from hwloop.search.train import train_epochs

torch.set_num_threads(1)


class CountingSampler(RandomSampler):
    """A shuffling sampler that counts how often a permutation is drawn (each ``iter()``)."""

    draws = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountingSampler.draws += 1
        return super().__iter__()


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))
    return DataLoader(ds, batch_size=8, sampler=CountingSampler(ds, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("progress", [False, True])
def test_one_shuffle_per_epoch(progress: bool) -> None:
    CountingSampler.draws = 0
    net = torch.nn.Linear(6, 3)
    epochs_seen: list[int] = []
    r = train_epochs(net, _loader(), 3, 0.1, progress=progress, max_steps=4, on_epoch=epochs_seen.append)
    assert CountingSampler.draws == 3 and epochs_seen == [0, 1, 2]
    assert r["images"] == 3 * 4 * 8 and r["epochs"] == 3.0 and not net.training


def test_finetune_is_train_epochs() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    seen = finetune(a, _loader(), 2, 0.1, w_bits={"": 4}, max_steps=3)
    r = train_epochs(b, _loader(), 2, 0.1, w_bits={"": 4}, max_steps=3)
    assert seen == (int(r["images"]), 2.0) == (48, 2.0)
    assert torch.equal(a.weight, b.weight) and len(torch.unique(a.weight[0].abs())) <= 8  # 4-bit weights baked in


def test_evaluate_limit_scores_whole_batches_until_enough() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from hwloop.search.train import evaluate

    x = torch.zeros(10, 2)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([1.0, 0.0]))   # always predicts class 0
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    net.train()
    assert evaluate(net, loader) == 40.0            # 4 of 10
    assert evaluate(net, loader, limit=3) == 100.0  # the first batch only (4 images, all class 0)
    assert evaluate(net, loader, limit=5) == 50.0   # two batches: 4 of 8
    assert net.training                              # the mode is restored
