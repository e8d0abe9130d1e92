"""Checkpoints: everything needed to continue a training run exactly where it stopped.

Layout, under `<out>/checkpoints/step-<N>/` (the folder appears only once complete):
- `state.json`: step, tokens, elapsed time, world size and plan, the `TrainConfig`;
- `<dictionary>.pt`: its `TrainStep` state: weights, optimiser, schedule, dead-latent counters;
- `stream-rank<r>.pt`: each rank's data position (batches consumed, shuffling buffer, RNG states).

Only the newest complete checkpoint is kept. Tensors are read back with `weights_only=True`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import torch

from ..errors import BioLLMError
from ..fileio import atomic_dir, read_json, write_json
from .distributed import World

CHECKPOINTS = "checkpoints"


def _step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step:08d}"


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint in `out`, or None."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def save(out: str | Path, state: dict, units: Mapping[str, object], stream_state: dict,
         world: World) -> Path:
    """Write a checkpoint of `units` ({name: TrainStep} this rank owns).

    Every rank calls this together: rank 0 creates the folder, each rank writes its own parts,
    and rank 0 renames it into place once all ranks are done.
    """
    out = Path(out)
    dest = _step_dir(out, state["step"])
    write_units = world.is_main or world.mode == "hookpoints"
    if world.is_main:
        with atomic_dir(dest) as tmp:
            world.broadcast(str(tmp))
            _write_parts(tmp, units if write_units else {}, stream_state, world)
            write_json(tmp / "state.json", state)
            world.barrier()
    else:
        tmp = Path(world.broadcast(None))
        _write_parts(tmp, units if write_units else {}, stream_state, world)
        world.barrier()
    world.barrier()
    if world.is_main:
        # older checkpoints, and temporary folders a killed run left behind
        for old in (out / CHECKPOINTS).glob("*step-*"):
            if old != dest:
                shutil.rmtree(old, ignore_errors=True)
    return dest


def _write_parts(tmp: Path, units: Mapping[str, object], stream_state: dict,
                 world: World) -> None:
    for name, step in units.items():
        torch.save(step.state_dict(), tmp / f"{name}.pt")
    torch.save(stream_state, tmp / f"stream-rank{world.rank}.pt")


def read_state(path: Path) -> dict:
    return read_json(path / "state.json", "checkpoint state")


def restore(path: Path, units: Mapping[str, object], world: World) -> dict:
    """Load the train steps (and so their dictionaries) in place; return this rank's stream
    state."""
    for name, step in units.items():
        file = path / f"{name}.pt"
        if not file.is_file():
            raise BioLLMError(f"checkpoint {path} has no dictionary {name}; resume with the "
                              "hookpoints and kind the run was started with.")
        step.load_state_dict(torch.load(file, weights_only=True,
                                        map_location=step.dictionary.device))
    stream = path / f"stream-rank{world.rank}.pt"
    if not stream.is_file():
        raise BioLLMError(f"checkpoint {path} was written by a different number of processes; "
                          "resume with the same torchrun --nproc_per_node.")
    return torch.load(stream, weights_only=True)


def clear(out: str | Path) -> None:
    shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
