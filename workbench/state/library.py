"""Describe model and dictionary folders from their JSON files (no torch, instant)."""

from __future__ import annotations

import json
from pathlib import Path

from .files import _is_dictionary_dir


def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_model(folder: str | Path) -> dict:
    folder = Path(folder)
    cfg = _json(folder / "config.json")
    return {"name": folder.name, "path": str(folder), "arch": cfg.get("model_type", "?"),
            "layers": cfg.get("num_hidden_layers", cfg.get("n_layer", "?")),
            "width": cfg.get("hidden_size", cfg.get("n_embd", "?")),
            "vocab": cfg.get("vocab_size", "?")}


def dictionary_format(cfg: dict) -> str:
    if "d_sae" in cfg or "hook_name" in cfg:
        return "SAELens"
    if "kind" in cfg and "num_latents" in cfg:
        return "BioLLM"
    if "expansion_factor" in cfg or "num_latents" in cfg:
        return "sparsify"
    return "unknown"


def describe_dictionary(folder: Path) -> dict:
    cfg = _json(folder / "cfg.json")
    latents = cfg.get("num_latents") or cfg.get("d_sae")
    if not latents and cfg.get("expansion_factor") and cfg.get("d_in"):
        latents = cfg["expansion_factor"] * cfg["d_in"]
    return {"name": cfg.get("hookpoint") or cfg.get("hook_name") or folder.name,
            "path": str(folder), "format": dictionary_format(cfg),
            "kind": cfg.get("kind") or cfg.get("architecture") or "sae",
            "d_in": cfg.get("d_in", "?"), "latents": latents or "?", "k": cfg.get("k", "")}


def describe_dictionaries(folder: str | Path) -> list[dict]:
    """One entry per dictionary: the folder itself, or each hookpoint sub-folder."""
    folder = Path(folder)
    if _is_dictionary_dir(folder):
        return [describe_dictionary(folder)]
    return [describe_dictionary(s) for s in sorted(folder.iterdir())
            if s.is_dir() and _is_dictionary_dir(s)]
