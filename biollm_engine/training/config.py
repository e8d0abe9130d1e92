"""`TrainConfig`: every option of a training run.

The same dataclass is the `biollm train` flags, the `cfg.json` saved with checkpoints and the
training summary, and the GUI's training form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BioLLMError

KINDS = ("sae", "transcoder", "skip_transcoder", "crosscoder")
ACTIVATIONS = ("topk", "batchtopk", "jumprelu", "relu")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


def _list(help: str):
    return field(default_factory=list, metadata={"help": help})


@dataclass(kw_only=True)
class TrainConfig:
    out: str = field(metadata={"help": "output folder: one dictionary folder per hookpoint, "
                                       "checkpoints, metrics.jsonl"})
    model: str | None = _opt(None, "model name or folder (needed for live data and the spliced "
                                   "evaluation; defaults to the model the cache was harvested from)")
    model2: str | None = _opt(None, "crosscoders across two models (model diffing): the "
                                    "fine-tuned model, read at the same --hookpoint as --model "
                                    "(the base) on the same data; needs the same tokenizer")
    data: str | None = _opt(None, "input file (cells .h5ad, DNA FASTA/GenBank, text); activations "
                                  "are computed live from the model")
    data_option: list[str] = _list("reader option KEY=VALUE for --data, e.g. top_k=100 "
                                   "(as in biollm harvest)")
    cache: str | None = _opt(None, "activation cache folder written by `biollm harvest`")
    cache2: str | None = _opt(None, "crosscoders across two models: the fine-tuned model's "
                                    "activation cache, harvested on the same data as --cache")
    hookpoint: list[str] = _list("hookpoint to train on, e.g. layers.3 or layers.3.mlp.in; "
                                 "several train in one pass")
    target: list[str] = _list("transcoders: output hookpoint for each --hookpoint (default "
                              "layers.i.mlp.out for layers.i.mlp.in)")
    kind: Literal["sae", "transcoder", "skip_transcoder", "crosscoder"] = _opt(
        "sae", "dictionary kind; a crosscoder reads and writes all hookpoints at once")
    activation: Literal["topk", "batchtopk", "jumprelu", "relu"] = _opt(
        "topk", "latent activation function")
    latents: int | None = _opt(None, "number of latents (default: expansion_factor x width)")
    expansion_factor: int = _opt(16, "latents per input dimension when --latents is not given")
    k: int = _opt(32, "active latents per token (topk, batchtopk)")
    tokens: int = _opt(10_000_000, "total training tokens")
    batch_size: int = _opt(4096, "tokens per optimisation step (all ranks together)")
    micro_batch_size: int | None = _opt(None, "tokens per forward/backward chunk (memory bound)")
    grad_accum_steps: int = _opt(1, "batches accumulated per optimiser step")
    lr: float | None = _opt(None, "learning rate (default: scaled with the number of latents)")
    warmup_steps: int = _opt(1000, "linear learning-rate warm-up steps")
    auxk_alpha: float = _opt(1 / 32, "weight of the AuxK loss that revives dead latents")
    dead_feature_threshold: int = _opt(10_000_000, "tokens without firing after which a latent "
                                                   "counts as dead")
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    dtype: str = _opt("float32", "model dtype for live activations (float32, bfloat16, float16)")
    seed: int = _opt(0, "random seed (dictionary initialisation, shuffling)")
    resume: bool = _opt(False, "continue from the last checkpoint in --out")
    checkpoint_every: int = _opt(1000, "steps between checkpoints (0: only on cancel)")
    eval_every: int = _opt(0, "steps between spliced evaluations (0: only at the end)")
    eval_cells: int = _opt(16, "held-out prompts for the spliced evaluation (0: none)")
    log_every: int = _opt(10, "steps between lines of metrics.jsonl")
    shuffle_tokens: int = _opt(65536, "live data: tokens held in the shuffling buffer")
    distribute: Literal["data", "hookpoints"] = _opt(
        "data", "under torchrun: split batches across ranks, or hookpoints' dictionaries")
    genes_only: bool = _opt(False, "cells: train only on gene tokens, not the prompt")
    max_length: int | None = _opt(None, "live data: at most this many tokens per record")

    def __post_init__(self):
        self.kind = self.kind.replace("-", "_")
        if self.kind not in KINDS:
            raise BioLLMError(f"unknown kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if self.activation not in ACTIVATIONS:
            raise BioLLMError(f"unknown activation {self.activation!r}; use one of "
                              f"{', '.join(ACTIVATIONS)}.")
        if (self.data is None) == (self.cache is None):
            raise BioLLMError("give exactly one of --data FILE (live activations) or --cache DIR.")
        if self.data is not None and self.model is None:
            raise BioLLMError("--data needs --model: live activations come from the model.")
        if not self.hookpoint:
            raise BioLLMError("give at least one --hookpoint, e.g. --hookpoint layers.1.")
        if self.two_models:
            self._check_two_models()
        elif self.kind == "crosscoder" and len(self.hookpoint) < 2:
            raise BioLLMError("a crosscoder reads several hookpoints; give --hookpoint twice or "
                              "more, or compare two models with --model2 (or --cache2).")
        if self.target and self.kind not in ("transcoder", "skip_transcoder"):
            raise BioLLMError("--target is only for transcoders (--kind transcoder).")
        if self.target and len(self.target) != len(self.hookpoint):
            raise BioLLMError(f"give one --target per --hookpoint ({len(self.hookpoint)}), "
                              f"not {len(self.target)}.")
        for name in ("tokens", "batch_size", "k", "grad_accum_steps", "expansion_factor",
                     "shuffle_tokens"):
            if getattr(self, name) <= 0:
                raise BioLLMError(f"--{name.replace('_', '-')} must be positive.")
        if self.latents is not None and self.latents <= 0:
            raise BioLLMError("--latents must be positive.")

    @property
    def two_models(self) -> bool:
        return self.model2 is not None or self.cache2 is not None

    def _check_two_models(self) -> None:
        if self.kind != "crosscoder":
            raise BioLLMError("--model2/--cache2 train a crosscoder across two models; add "
                              "--kind crosscoder.")
        if len(self.hookpoint) != 1:
            raise BioLLMError("a crosscoder across two models reads one --hookpoint in each "
                              f"model; got {len(self.hookpoint)}.")
        if self.data is not None and self.model2 is None:
            raise BioLLMError("--data with two models needs --model2 (the fine-tuned model).")
        if self.data is not None and self.cache2 is not None:
            raise BioLLMError("--cache2 goes with --cache; with --data give --model2.")
        if self.cache is not None and self.cache2 is None:
            raise BioLLMError("--cache with two models needs --cache2 (the fine-tuned model's "
                              "cache, harvested on the same data).")

    def sources(self) -> list[str]:
        """What a crosscoder reads, in order: the hookpoints, or for two models
        'base:HP' and 'finetuned:HP'."""
        if self.two_models:
            from .pair import LABELS, source_name

            return [source_name(label, self.hookpoint[0]) for label in LABELS]
        return list(self.hookpoint)

    def targets(self) -> list[str]:
        """The output hookpoint of each input hookpoint (itself, except for transcoders)."""
        if self.kind not in ("transcoder", "skip_transcoder"):
            return list(self.hookpoint)
        if self.target:
            return list(self.target)
        out = []
        for hp in self.hookpoint:
            if not hp.endswith(".mlp.in"):
                raise BioLLMError(f"transcoder on {hp}: give --target (the hookpoint to "
                                  "reconstruct), or train on layers.i.mlp.in.")
            out.append(hp[: -len(".in")] + ".out")
        return out
