"""Data order: an endless, per-epoch reshuffled stream of batches, sharded per rank, resumable by position.

Every sample carries its own augmentation seed, so the stream is a pure function of ``(seed, position)``: resuming
at iteration ``k`` replays exactly what an uninterrupted run would have seen, independent of ``num_workers`` and
of how many processes share a global batch.
"""
from __future__ import annotations

import random
from typing import Iterator, List, Tuple

import numpy as np
import torch
import torch.utils.data as tud


class EndlessBatchSampler(tud.Sampler):
    """Endless batches of ``(dataset index, sample seed)`` pairs for one rank; never raises StopIteration.

    The global stream is the concatenation of per-epoch permutations of ``range(dataset_size)`` (epoch ``e`` is
    shuffled with a generator seeded from ``(seed, e)``). Global batch ``b`` is the stream positions
    ``[b * B * W, (b + 1) * B * W)`` with ``B = batch_size`` (per process) and ``W = world_size``; rank ``r``
    takes the ``r``-th slice of ``B``. So W processes x batch B see the same images, in the same order, as one
    process x batch ``B * W``. ``start_batch`` skips already-trained batches when resuming (no state needed).

    Each sample's seed is a hash of ``(seed, stream position)``: augmentations are reproducible per sample.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("dataset_size must be positive")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start_batch = int(start_batch)
        self.shuffle = shuffle
        self._epoch = -1
        self._perm: List[int] = []

    def _permutation(self, epoch: int) -> List[int]:
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED))
                self._perm = torch.randperm(self.dataset_size, generator=g).tolist()
            else:
                self._perm = list(range(self.dataset_size))
            self._epoch = epoch
        return self._perm

    def index_at(self, position: int) -> int:
        """Dataset index at a global stream position."""
        epoch, offset = divmod(position, self.dataset_size)
        return self._permutation(epoch)[offset]

    def sample_seed(self, position: int) -> int:
        return _mix(self.seed, position, 0xA46)

    def batch_positions(self, batch: int) -> range:
        start = (batch * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batch = self.start_batch
        while True:
            yield [(self.index_at(p), self.sample_seed(p)) for p in self.batch_positions(batch)]
            batch += 1


def _mix(*values: int) -> int:
    """A well-mixed 32-bit seed from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1)[0])


class SeededDataset(tud.Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` runs ``dataset[index]`` under a fixed NumPy / ``random`` seed.

    The augmentations draw from NumPy's global state (see data/transforms.py); seeding it per sample makes
    a sample's augmentation depend only on its stream position. The previous global states are restored, so
    in the main process (``num_workers=0``) the wrapper has no side effect.
    """

    def __init__(self, dataset: tud.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
