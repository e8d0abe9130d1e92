"""What a dropped or opened path is, decided from its name and a look inside (no heavy imports).

The window routes each kind to its panel; `UNKNOWN` gets a message instead of a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

H5AD = "h5ad"
SEQUENCE = "sequence"
DICTIONARY = "dictionary"
MODEL = "model"
WORKSPACE = "workspace"
UNKNOWN = "unknown"

SEQUENCE_SUFFIXES = (".fa", ".fasta", ".fna", ".gb", ".gbk", ".genbank")
DICTIONARY_WEIGHTS = ("sae.safetensors", "sae_weights.safetensors", "dictionary.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                   "vocab.txt")


@dataclass(frozen=True)
class Recognised:
    kind: str
    path: Path
    reason: str  # one line: why it is this kind, or why it is not recognised


def _is_dictionary_dir(p: Path) -> bool:
    return (p / "cfg.json").is_file() or any((p / w).is_file() for w in DICTIONARY_WEIGHTS)


def recognise(path: str | Path) -> Recognised:
    p = Path(path)
    if not p.exists():
        return Recognised(UNKNOWN, p, f"{p} does not exist.")
    if p.is_dir():
        if (p / "workspace.json").is_file():
            return Recognised(WORKSPACE, p, "folder with workspace.json")
        if _is_dictionary_dir(p):
            return Recognised(DICTIONARY, p, "folder with a dictionary config or weights")
        # sparsify and our trainer save one sub-folder per hookpoint
        subs = [s for s in sorted(p.iterdir()) if s.is_dir() and _is_dictionary_dir(s)]
        if subs:
            return Recognised(DICTIONARY, p, f"folder of {len(subs)} dictionaries")
        if (p / "config.json").is_file() and any((p / t).is_file() for t in TOKENIZER_FILES):
            return Recognised(MODEL, p, "folder with config.json and tokenizer files")
        return Recognised(UNKNOWN, p, f"{p.name}/ is not a workspace, dictionary or model folder "
                          "(expected workspace.json, cfg.json + sae.safetensors, or config.json "
                          "+ tokenizer files).")
    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".h5ad"):
        return Recognised(H5AD, p, "AnnData file")
    if name.endswith(SEQUENCE_SUFFIXES):
        return Recognised(SEQUENCE, p, "FASTA or GenBank sequence file")
    return Recognised(UNKNOWN, p, f"{p.name} is not a file the workbench opens: drop an .h5ad, "
                      "a FASTA/GenBank file, a dictionary folder or a model folder.")
