"""Batches with hard negatives by construction: runs of pairs that share a background colour.

In a random batch of emoji-scenes pairs almost every caption is told apart from the others by the
background colour and the sprite count alone, so a contrastive model learns those first and the
objects hardly at all. `GroupedSampler` orders each epoch as shuffled runs of `group` pairs whose
images share the first background colour; consecutive runs fill a batch, so within a run only the
objects (and count, size, layout) separate the captions, while across runs the background still
does. The resume and rank-sharding logic is ResumableSampler's: only the epoch's order differs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from mmtlab.data.pairs import ResumableSampler


class GroupedSampler(ResumableSampler):
    def __init__(
        self, keys: Sequence[Hashable], group: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        super().__init__(len(keys), seed, start=start, rank=rank, world=world)
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        self.group = group
        buckets: dict[Hashable, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault(k, []).append(i)
        self.buckets = [torch.tensor(v) for _, v in sorted(buckets.items(), key=lambda kv: str(kv[0]))]

    def permutation(self, epoch: int) -> torch.Tensor:
        """A permutation of 0..n-1 made of shuffled runs of `group` same-key indices; what is left
        of each key after its full runs is pooled, shuffled and cut into mixed runs at the end."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        runs, rest = [], []
        for b in self.buckets:
            b = b[torch.randperm(len(b), generator=g)]
            full = len(b) - len(b) % self.group
            runs.extend(b[:full].split(self.group))
            rest.append(b[full:])
        order = [runs[i] for i in torch.randperm(len(runs), generator=g).tolist()]
        left = torch.cat(rest) if rest else torch.zeros(0, dtype=torch.long)
        order.append(left[torch.randperm(len(left), generator=g)])
        return torch.cat(order) if order else torch.zeros(0, dtype=torch.long)


def background_keys(dataset) -> list[Hashable]:
    """The first background colour of each pair's image (emoji-scenes records; None elsewhere)."""
    keys = []
    for ri, _ in dataset.pairs:
        bg = dataset.records[ri].extra.get("background") or {}
        colors = bg.get("colors") or [None]
        keys.append(colors[0])
    return keys
