"""Harvesting activations from the workbench: `biollm harvest` as a job.

`HarvestJob` is the engine's `HarvestConfig` plus what the command line takes beside it (model,
data, output folder, genes per cell sentence), so the dialog built from it shows the same options
with the same help as `biollm harvest --help`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from biollm_engine.errors import BioLLMError
from biollm_engine.harvest import HarvestConfig


@dataclass
class HarvestJob(HarvestConfig):
    model: str = field(default="", metadata={"help": "model folder or hub id"})
    data: str = field(default="", metadata={
        "help": ".h5ad cells, FASTA / GenBank DNA, .txt / .jsonl text"})
    out: str = field(default="", metadata={
        "help": "cache folder to write (an unfinished one resumes)"})
    top_k: int = field(default=200, metadata={"help": "genes per cell sentence (cells)"})
    window: int = field(default=1024, metadata={"help": "bases per window (DNA)"})
    stride: int = field(default=0, metadata={
        "help": "bases between window starts (DNA); 0: the window, no overlap"})
    reverse_complement: bool = field(default=False, metadata={
        "help": "also read each window's reverse complement (DNA)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("model", "data", "out"):
            if not str(getattr(self, name)).strip():
                raise BioLLMError(f"give the {name} to harvest.")
        if self.top_k < 1 or self.window < 1 or self.stride < 0:
            raise BioLLMError("top k and window must be at least 1, stride at least 0.")

    def engine_config(self) -> HarvestConfig:
        return HarvestConfig(**{f.name: getattr(self, f.name)
                                for f in dataclasses.fields(HarvestConfig)})


def check_harvest(job: HarvestJob) -> None:
    """What the harvest would reject only after loading the model, checked up front."""
    for name in ("model", "data"):
        p = getattr(job, name)
        if not Path(p).exists():
            raise BioLLMError(f"{name} {p} does not exist; choose an existing file or folder.")
    if not job.hookpoints:
        raise BioLLMError("give at least one hookpoint, e.g. layers.1.")


def run_harvest(job: HarvestJob, progress=None, cancel=None) -> str:
    """Harvest in a worker (what `biollm harvest` does); returns the cache folder."""
    from biollm_engine.harvest import harvest
    from biollm_engine.inputs import data_kind, open_data
    from biollm_engine.models import load_model, resolve_hookpoint

    options = {"cells": {"top_k": job.top_k},
               "dna": {"window": job.window, "stride": job.stride or None,
                       "reverse_complement": job.reverse_complement}}.get(data_kind(job.data), {})
    data = open_data(job.data, **options)
    lm = load_model(job.model, device=job.device)
    for h in job.hookpoints:
        resolve_hookpoint(lm, h)
    cfg = job.engine_config()
    examples = data.examples(lm.tokenizer, genes_only=cfg.genes_only, max_length=cfg.max_length)
    meta = {"data": str(Path(job.data).resolve()), "data_kind": data.kind,
            "data_options": options, "units": data.units}
    cache = harvest(lm, examples, cfg, job.out, progress=progress, cancel=cancel, meta=meta,
                    total_examples=len(data))
    return str(cache.dir)
