"""Running one training job over several processes (`torchrun --nproc_per_node N`).

Two plans, chosen by `TrainConfig.distribute`:
- "data": every rank holds every dictionary and trains it on its own slice of each global batch;
  gradients are averaged across ranks before every optimiser step, so the ranks' weights stay
  identical and rank 0 alone writes checkpoints and results.
- "hookpoints": each rank holds a different subset of the dictionaries and trains them on whole
  batches; each rank writes its own dictionaries.

NCCL on GPU, Gloo on CPU. A plain (non-torchrun) process is rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import BioLLMError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    mode: str = "data"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def owns(self, items: Sequence[T]) -> list[T]:
        """The items this rank trains: all of them in "data" mode, a round-robin share else."""
        if self.mode == "data" or not self.active:
            return list(items)
        if len(items) < self.size:
            raise BioLLMError(f"--distribute hookpoints over {self.size} processes needs at least "
                              f"{self.size} dictionaries, not {len(items)}; use fewer processes.")
        return list(items[self.rank::self.size])

    def batch_slice(self, n: int) -> slice:
        """This rank's rows of a global batch of `n` rows ("data" mode)."""
        if self.mode != "data" or not self.active:
            return slice(0, n)
        if n < self.size:
            raise BioLLMError(f"a batch of {n} tokens cannot be split over {self.size} processes; "
                              "raise --batch-size.")
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def device(self, resolved: str) -> torch.device:
        """This rank's device (`resolved` by models.loading.resolve_device): under torchrun,
        one GPU per local rank."""
        dev = torch.device(resolved)
        if dev.type == "cuda" and self.active and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        return dev

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_agree(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank (e.g. one rank was cancelled)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_world(mode: str, device: str) -> World:
    """Join the process group that torchrun describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, mode)
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), mode)


def average_gradients(params: Sequence[torch.nn.Parameter], world: World) -> None:
    """Replace each gradient by its mean over ranks, in one collective.

    Called once per optimiser step (after any gradient accumulation), so every rank sends the
    same tensors in the same order whatever each rank's backward graph looked like.
    """
    if not world.active or world.mode != "data":
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def gather_rows(batch: dict, world: World) -> dict:
    """The global batch from every rank's rows of it, in rank order ("data" mode)."""
    if not world.active or world.mode != "data":
        return batch
    parts: list = [None] * world.size
    dist.all_gather_object(parts, {h: t.cpu() for h, t in batch.items()})
    return {h: torch.cat([p[h] for p in parts]) for h in batch}


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
