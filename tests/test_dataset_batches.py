"""The dataset mini-batch sampler: seeded epochs, exact resume, the same global order for any world size."""

from __future__ import annotations

import pytest
import torch

from pipeline.train import DatasetBatches
from pipeline.types import NLSError


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"i": torch.tensor(i), "x": torch.full((2,), float(i))}


CPU = torch.device("cpu")


def draw(sampler: DatasetBatches, k: int) -> list[list[int]]:
    return [sampler.next()["i"].tolist() for _ in range(k)]


def test_epochs_are_permutations_and_drop_the_tail():
    s = DatasetBatches(Items(10), 4, seed=3, device=CPU)
    seq = draw(s, 4)  # 2 batches per epoch
    for epoch in (seq[:2], seq[2:]):
        flat = [i for b in epoch for i in b]
        assert len(set(flat)) == 8 and set(flat) <= set(range(10))
    assert seq[:2] != seq[2:]  # a new permutation per epoch


def test_resume_continues_the_same_sequence():
    full = draw(DatasetBatches(Items(10), 4, seed=1, device=CPU), 6)
    a = DatasetBatches(Items(10), 4, seed=1, device=CPU)
    draw(a, 3)
    b = DatasetBatches(Items(10), 4, seed=1, device=CPU)
    b.load_state(a.state())
    assert draw(b, 3) == full[3:]


def test_two_ranks_split_the_same_global_batches():
    single = draw(DatasetBatches(Items(12), 4, seed=0, device=CPU), 5)
    r0 = DatasetBatches(Items(12), 4, seed=0, device=CPU, world_size=2, rank=0)
    r1 = DatasetBatches(Items(12), 4, seed=0, device=CPU, world_size=2, rank=1)
    both = [a + b for a, b in zip(draw(r0, 5), draw(r1, 5))]
    assert both == single


def test_bad_sizes_are_clear_errors():
    with pytest.raises(NLSError, match="batch_items=20"):
        DatasetBatches(Items(10), 20, seed=0, device=CPU)
    with pytest.raises(NLSError, match="divisible"):
        DatasetBatches(Items(10), 3, seed=0, device=CPU, world_size=2)
