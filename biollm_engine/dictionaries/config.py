"""`DictionaryConfig`: what a sparse dictionary is, saved as its `cfg.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BioLLMError

KINDS = ("sae", "transcoder", "skip_transcoder", "crosscoder")
ACTIVATIONS = ("topk", "batchtopk", "jumprelu", "relu")
FORMAT_VERSION = 1


@dataclass
class DictionaryConfig:
    kind: Literal["sae", "transcoder", "skip_transcoder", "crosscoder"] = field(
        default="sae", metadata={"help": "sae (reconstructs its input), transcoder (reads one "
                                 "hookpoint, writes another), skip_transcoder (transcoder plus "
                                 "a linear skip term), crosscoder (reads and writes several)"})
    activation: Literal["topk", "batchtopk", "jumprelu", "relu"] = field(
        default="topk", metadata={"help": "topk (k per token), batchtopk (k per token on average "
                                  "over the batch), jumprelu (learned threshold per latent), "
                                  "relu (with an L1 penalty)"})
    d_in: int = field(default=0, metadata={"help": "width of the input hookpoint"})
    d_out: int = field(default=0, metadata={"help": "width of the target; 0 means d_in"})
    num_latents: int = field(default=0, metadata={"help": "number of latents (dictionary size)"})
    k: int = field(default=32, metadata={"help": "active latents per token (topk, batchtopk)"})
    hookpoint: str = field(default="", metadata={"help": "hookpoint the dictionary reads"})
    target: str = field(default="", metadata={"help": "hookpoint it writes (transcoders); "
                                              "empty means the same as hookpoint"})
    sources: list[str] = field(default_factory=list, metadata={
        "help": "crosscoder sources: hookpoints, or model:hookpoint for model diffing"})
    model: str = field(default="", metadata={"help": "id or path of the model it was trained on"})
    models: dict[str, str] = field(default_factory=dict, metadata={
        "help": "crosscoders across models: the model id or path of each source label, e.g. "
                "{'base': ..., 'finetuned': ...} for sources 'base:layers.3', 'finetuned:layers.3'"})
    jumprelu_threshold: float = field(default=0.0, metadata={
        "help": "initial JumpReLU threshold; 0 sets it from the first batch so that about k "
                "latents fire per token"})
    jumprelu_bandwidth: float = field(default=0.0, metadata={
        "help": "width of the straight-through estimator's kernel; 0 means half the initial "
                "threshold"})
    l0_coeff: float = field(default=1e-3, metadata={
        "help": "JumpReLU sparsity penalty per active latent per token"})
    l1_coeff: float = field(default=3e-3, metadata={
        "help": "ReLU sparsity penalty on activations times decoder norms, relative to the "
                "target's RMS"})
    normalize_decoder: bool | None = field(default=None, metadata={
        "help": "keep decoder rows at unit norm; default: yes for sae and crosscoder, no for "
                "transcoders (as in sparsify)"})
    apply_b_dec_to_input: bool | None = field(default=None, metadata={
        "help": "subtract b_dec from the input before encoding; default: yes for sae and "
                "crosscoder, no for transcoders"})
    training: dict = field(default_factory=dict, metadata={
        "help": "summary of how it was trained (filled in by the trainer)"})
    format_version: int = field(default=FORMAT_VERSION, metadata={
        "help": "version of this folder format"})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BioLLMError(f"unknown dictionary kind {self.kind!r}; use one of "
                              f"{', '.join(KINDS)}.")
        if self.activation not in ACTIVATIONS:
            raise BioLLMError(f"unknown activation {self.activation!r}; use one of "
                              f"{', '.join(ACTIVATIONS)}.")
        if self.d_in <= 0 or self.num_latents <= 0:
            raise BioLLMError(f"dictionary needs d_in > 0 and num_latents > 0 "
                              f"(got d_in={self.d_in}, num_latents={self.num_latents}).")
        if self.d_out <= 0:
            self.d_out = self.d_in
        if self.kind in ("sae", "crosscoder") and self.d_out != self.d_in:
            raise BioLLMError(f"a {self.kind} reconstructs its input, so d_out must equal d_in "
                              f"(got {self.d_out} and {self.d_in}); use a transcoder instead.")
        if self.activation in ("topk", "batchtopk") and not 0 < self.k <= self.num_latents:
            raise BioLLMError(f"k must be between 1 and num_latents={self.num_latents} "
                              f"(got {self.k}).")
        if self.kind == "crosscoder" and len(self.sources) < 2:
            raise BioLLMError("a crosscoder needs at least two sources (hookpoints, or "
                              "model:hookpoint); pass them in `sources`.")
        self.sources = list(self.sources)
        if not self.target:
            self.target = self.hookpoint
        reconstructs = self.kind in ("sae", "crosscoder")
        if self.normalize_decoder is None:
            self.normalize_decoder = reconstructs
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = reconstructs
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise BioLLMError("apply_b_dec_to_input needs d_out == d_in.")

    @property
    def n_sources(self) -> int:
        """Inputs read at once: the crosscoder's sources, else 1."""
        return len(self.sources) if self.kind == "crosscoder" else 1
