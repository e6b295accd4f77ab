"""The SPC-2 batch sampler: two images per class per pair, as RobRank's SPC-2 datasets."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import BenchmarkError


class SPC2Sampler:
    """Batches of ``batch_pairs`` pairs, 2 images of one class each, laid out [c1, c1, c2, c2, ...].

    Each epoch visits every image of a class with two or more images once as the first of a
    pair (RobRank's SPC-2 dataset: item i is image i plus a random other image of its class), in
    an order drawn from ``generator``. As in RobRank, pairs are drawn independently: two pairs of
    one batch may share a class. Everything random comes from ``generator``, so the same seed
    gives the same batches. The last incomplete batch of an epoch is dropped.
    """

    def __init__(self, labels: torch.Tensor, batch_pairs: int, generator: torch.Generator):
        if batch_pairs < 1:
            raise BenchmarkError(f"SPC-2 batches need at least one pair, got batch_pairs={batch_pairs}")
        self.labels = labels.long().cpu()
        self.batch_pairs = batch_pairs
        self.generator = generator
        classes, counts = torch.unique(self.labels, return_counts=True)
        if int((counts >= 2).sum()) < 2:
            raise BenchmarkError("SPC-2 batches need at least two classes with two or more images each")
        # Images grouped by class: class c's members are members[start[c] : start[c] + count[c]].
        order = torch.sort(self.labels, stable=True).indices
        self._members = order
        starts = torch.cumsum(counts, 0) - counts
        position_of = torch.empty_like(order)
        position_of[order] = torch.arange(len(order))
        class_of = torch.searchsorted(classes, self.labels)
        self._start = starts[class_of]  # per image: where its class begins in _members
        self._count = counts[class_of]  # per image: how many images its class has
        self._rank = position_of - self._start  # per image: its place within its class
        self.eligible = torch.nonzero(self._count >= 2).flatten()

    def __len__(self) -> int:
        return max(1, len(self.eligible) // self.batch_pairs)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.eligible[torch.randperm(len(self.eligible), generator=self.generator)]
        for b in range(len(self)):
            firsts = order[b * self.batch_pairs:(b + 1) * self.batch_pairs]
            count = self._count[firsts]
            # A uniform other member: skip 1 + k places (k < count - 1) cyclically within the class.
            skip = 1 + (torch.rand(len(firsts), generator=self.generator) * (count - 1)).long().clamp_max(count - 2)
            partners = self._members[self._start[firsts] + (self._rank[firsts] + skip) % count]
            yield torch.stack((firsts, partners), dim=1).flatten()
