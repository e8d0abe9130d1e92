"""Where training batches come from, and how far a run has read.

Both streams hand out this rank's part of each global batch as {hookpoint: Tensor [n, width]},
with the number of rows of the global batch, and can report a `state()` that a checkpoint saves and `restore` continues from exactly.

- `CacheStream` reads an activation cache, shuffled, one epoch after another (epoch e shuffles
  with seed + e); each rank takes its rows of every global batch.
- `LiveStream` runs the model over the data set's records in chunks and keeps a bounded
  shuffling buffer; in "data" mode each rank reads its own chunks.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..errors import BioLLMError
from .distributed import World

Batch = dict[str, torch.Tensor]


class CacheStream:
    def __init__(self, cache, hookpoints: Sequence[str], batch_size: int, seed: int, world: World):
        self.cache = cache
        self.hookpoints = list(hookpoints)
        self.batch_size = batch_size
        self.seed = seed
        self.world = world
        self.epoch = 0
        self.index = 0
        self._it: Iterator[Batch] | None = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._it = None

    def _open(self) -> Iterator[Batch]:
        it = iter(self.cache.iter_batches(self.hookpoints, self.batch_size, shuffle=True,
                                          seed=self.seed + self.epoch))
        # resuming: the same shuffle, minus the batches already trained on
        return itertools.islice(it, self.index, None)

    def next(self) -> tuple[Batch, int]:
        for _ in range(2):
            if self._it is None:
                self._it = self._open()
            batch = next(self._it, None)
            if batch is not None:
                self.index += 1
                n = len(next(iter(batch.values())))
                rows = self.world.batch_slice(n)
                return {hp: batch[hp][rows] for hp in self.hookpoints}, n
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
        raise BioLLMError("the activation cache holds no tokens; harvest it again.")


class LiveStream:
    """Activations computed on the fly: `read(records)` yields batches for those records."""

    def __init__(self, read: Callable[[Sequence[int]], Iterable[Batch]], records: Sequence[int],
                 hookpoints: Sequence[str], batch_size: int, buffer_tokens: int,
                 chunk_records: int, seed: int, world: World):
        if not records:
            raise BioLLMError("no records left to train on after holding out the evaluation "
                              "prompts; lower --eval-cells or use a larger data set.")
        self.read = read
        self.records = list(records)
        self.hookpoints = list(hookpoints)
        self.world = world
        self.global_batch_size = batch_size
        self.batch_size = len(range(batch_size)[world.batch_slice(batch_size)])
        self.buffer_tokens = max(buffer_tokens, self.batch_size)
        self.chunk_records = chunk_records
        self.seed = seed
        self.epoch = 0
        self.chunk = 0
        self.buffer: Batch = {}
        self.gen = torch.Generator().manual_seed(seed)

    def state(self) -> dict:
        return {"epoch": self.epoch, "chunk": self.chunk, "buffer": {hp: t.clone() for hp, t in self.buffer.items()},
                "gen": self.gen.get_state()}

    def restore(self, state: dict) -> None:
        self.epoch, self.chunk = int(state["epoch"]), int(state["chunk"])
        self.buffer = dict(state["buffer"])
        self.gen.set_state(state["gen"])

    def _rows(self) -> int:
        return len(next(iter(self.buffer.values()))) if self.buffer else 0

    def _my_chunks(self) -> list[list[int]]:
        order = torch.randperm(len(self.records),
                               generator=torch.Generator().manual_seed(self.seed + self.epoch))
        recs = [self.records[i] for i in order.tolist()]
        chunks = [recs[i:i + self.chunk_records] for i in range(0, len(recs), self.chunk_records)]
        if self.world.mode == "data" and self.world.active:
            chunks = chunks[self.world.rank::self.world.size] or chunks[:1]
        return chunks

    def _fill(self) -> None:
        parts: dict[str, list[torch.Tensor]] = {hp: [self.buffer[hp]] if self.buffer else []
                                                for hp in self.hookpoints}
        rows, empty_epochs = self._rows(), 0
        while rows < self.buffer_tokens:
            chunks = self._my_chunks()
            if self.chunk >= len(chunks):
                self.epoch, self.chunk = self.epoch + 1, 0
                empty_epochs = empty_epochs + 1 if rows == 0 else 0
                if empty_epochs > 1:
                    raise BioLLMError("the data set yields no tokens to train on; check --data "
                                      "and --genes-only.")
                continue
            for batch in self.read(chunks[self.chunk]):
                for hp in self.hookpoints:
                    parts[hp].append(batch[hp].detach().float().cpu())
                rows += len(batch[self.hookpoints[0]])
            self.chunk += 1
        perm = torch.randperm(rows, generator=self.gen)
        self.buffer = {hp: torch.cat(parts[hp])[perm] for hp in self.hookpoints}

    def next(self) -> tuple[Batch, int]:
        if self._rows() < self.batch_size:
            self._fill()
        batch = {hp: t[: self.batch_size] for hp, t in self.buffer.items()}
        self.buffer = {hp: t[self.batch_size:] for hp, t in self.buffer.items()}
        return batch, self.global_batch_size
