"""`EvaluateConfig`: the options of a cell-type annotation evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BioLLMError


@dataclass(kw_only=True)
class EvaluateConfig:
    format: Literal["c2s", "choice"] = field(default="c2s", metadata={
        "help": "c2s: greedy answer to the C2S prompt, matched to the labels; choice: CellVerse "
                "multiple choice, the most likely option wins"})
    choice_scoring: Literal["letter", "text"] = field(default="text", metadata={
        "help": "choice format: score the option's letter or its text (total log-likelihood "
                "after 'Answer:'); text suits small C2S models"})
    cells: str = field(default="all", metadata={
        "help": "all labelled cells, heldout (the split column's held-out value), or N (a "
                "seeded sample of N labelled cells)"})
    split_key: str | None = field(default=None, metadata={
        "help": "obs column of the split for --cells heldout; unset: the first column holding "
                "--split-value"})
    split_value: str = field(default="heldout", metadata={
        "help": "value of the split column marking held-out cells"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    max_new_tokens: int = field(default=16, metadata={
        "help": "c2s format: at most this many generated tokens per answer"})
    seed: int = field(default=0, metadata={"help": "seed of the sample for --cells N"})

    def __post_init__(self):
        self.cells = str(self.cells)
        if self.cells not in ("all", "heldout") and not (self.cells.isdigit()
                                                        and int(self.cells) > 0):
            raise BioLLMError(f"--cells must be all, heldout or a positive number, "
                              f"not {self.cells!r}.")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise BioLLMError("--batch-size and --max-new-tokens must be positive.")
