"""Reading and writing dictionaries: ours, sparsify's, SAELens' and Goodfire's (Evo 2).

Every reader builds a `DictionaryConfig` from the foreign config, checks each tensor's shape
against it, and hands back a `Dictionary` in eval mode whose `encode` follows the source
library's formula (e.g. whether b_dec is subtracted from the input).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import from_dict
from ..errors import BioLLMError
from ..fileio import atomic_dir, read_json
from .config import DictionaryConfig
from .dictionary import WEIGHTS_FILE, Dictionary

SPARSIFY_FILE = "sae.safetensors"
SAELENS_FILE = "sae_weights.safetensors"
EXPECTED = (f"cfg.json with {WEIGHTS_FILE} (ours), {SPARSIFY_FILE} (sparsify) or "
            f"{SAELENS_FILE} (SAELens), or a .pt/.pth state dict (Goodfire)")


def load_dictionary(path, device=None, hookpoint: str | None = None) -> Dictionary:
    """Load a dictionary from any supported format; `hookpoint` picks one from a folder that
    holds several (sparsify saves one subfolder per hookpoint)."""
    path = Path(path)
    if not path.exists():
        raise BioLLMError(f"dictionary {path} does not exist; check the path.")
    if path.is_file():
        if path.suffix in (".pt", ".pth"):
            d = _read_goodfire(path)
        elif path.name in (WEIGHTS_FILE, SPARSIFY_FILE, SAELENS_FILE, "cfg.json"):
            return load_dictionary(path.parent, device, hookpoint)
        else:
            raise BioLLMError(f"{path} is not a dictionary; expected a folder with {EXPECTED}.")
    else:
        if hookpoint:
            if not (path / hookpoint).is_dir():
                raise BioLLMError(f"{path} has no dictionary for hookpoint {hookpoint!r}; "
                                  f"found: {', '.join(_nested(path)) or 'none'}.")
            path = path / hookpoint
        d = _read_folder(path)
    if device is not None:
        d = d.to(device)
    return d.eval()


def _nested(path: Path) -> list[str]:
    names = (WEIGHTS_FILE, SPARSIFY_FILE, SAELENS_FILE)
    return sorted(str(p.parent.relative_to(path)) for n in names for p in path.rglob(n)
                  if p.parent != path)


def _read_folder(path: Path) -> Dictionary:
    if (path / WEIGHTS_FILE).exists():
        return _read_ours(path)
    if (path / SPARSIFY_FILE).exists():
        return _read_sparsify(path)
    if (path / SAELENS_FILE).exists():
        return _read_saelens(path)
    nested = _nested(path)
    if len(nested) == 1:
        return _read_folder(path / nested[0])
    if nested:
        raise BioLLMError(f"{path} holds dictionaries for several hookpoints "
                          f"({', '.join(nested)}); pass hookpoint= one of them.")
    raise BioLLMError(f"{path} is not a dictionary folder: expected {EXPECTED}.")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise BioLLMError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'corrupt'}); re-download or "
                          f"re-save it.") from None


def _read_cfg(path: Path) -> dict:
    cfg = read_json(path / "cfg.json", "dictionary config")
    if not isinstance(cfg, dict):
        raise BioLLMError(f"{path / 'cfg.json'} is not a JSON object; re-save the dictionary.")
    return cfg


def _build(cfg: DictionaryConfig, tensors: dict[str, Tensor], where: Path) -> Dictionary:
    """A Dictionary holding exactly `tensors`, after checking names and shapes against cfg."""
    d = Dictionary(cfg, device="meta")
    expected = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise BioLLMError(f"{where} lacks tensors {', '.join(missing)} that its config needs.")
    dtype = tensors[next(iter(expected))].dtype
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise BioLLMError(f"{where}: {name} has shape {tuple(tensors[name].shape)} but the "
                              f"config says {shape}; the weights and cfg.json do not match.")
    state = {k: tensors[k].to(dtype).contiguous() for k in expected}
    d.load_state_dict(state, assign=True)
    return d


def _cfg(where: Path, **kw) -> DictionaryConfig:
    try:
        return DictionaryConfig(**kw)
    except BioLLMError as e:
        raise BioLLMError(f"{where}: {e.message}") from None


def _read_ours(path: Path) -> Dictionary:
    raw = _read_cfg(path)
    try:
        cfg = from_dict(DictionaryConfig, raw)
    except BioLLMError as e:
        raise BioLLMError(f"{path / 'cfg.json'}: {e.message}") from None
    return _build(cfg, _read_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE)


def _read_sparsify(path: Path) -> Dictionary:
    raw = _read_cfg(path)
    tensors = _read_safetensors(path / SPARSIFY_FILE)
    if raw.get("activation", "topk") != "topk":
        raise BioLLMError(f"{path}: sparsify activation {raw.get('activation')!r} is not "
                          f"supported; only topk is.")
    if "encoder.weight" not in tensors or "d_in" not in raw:
        raise BioLLMError(f"{path} is not a sparsify folder: cfg.json needs d_in and "
                          f"{SPARSIFY_FILE} needs encoder.weight.")
    d_in = int(raw["d_in"])
    latents = int(raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 32)))
    transcode = bool(raw.get("transcode", False))
    skip = bool(raw.get("skip_connection", False))
    kind = "skip_transcoder" if skip else "transcoder" if transcode else "sae"
    cfg = _cfg(path, kind=kind, activation="topk", d_in=d_in, num_latents=latents,
               k=int(raw.get("k", 32)), hookpoint=path.name,
               normalize_decoder=bool(raw.get("normalize_decoder", True)) and not transcode,
               apply_b_dec_to_input=not transcode,
               training={"source": "sparsify", **{k: v for k, v in raw.items() if k != "d_in"}})
    renamed = {"encoder.weight": "W_enc", "encoder.bias": "b_enc"}
    return _build(cfg, {renamed.get(k, k): v for k, v in tensors.items()}, path / SPARSIFY_FILE)


def _read_saelens(path: Path) -> Dictionary:
    raw = _read_cfg(path)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    tensors = _read_safetensors(path / SAELENS_FILE)
    if "d_in" not in raw or "d_sae" not in raw:
        raise BioLLMError(f"{path / 'cfg.json'} lacks d_in / d_sae; not a SAELens config.")
    arch = raw.get("architecture", "standard")
    act_fn = raw.get("activation_fn") or raw.get("activation_fn_str") or "relu"
    kwargs = raw.get("activation_fn_kwargs") or {}
    norm = raw.get("normalize_activations") or "none"
    if norm in ("layer_norm", "constant_norm_rescale"):
        raise BioLLMError(f"{path}: SAELens normalize_activations={norm!r} changes the input "
                          f"in ways this loader does not reproduce; re-export without it.")
    k = int(raw.get("k") or kwargs.get("k") or 32)
    if arch == "jumprelu":
        activation = "jumprelu"
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").exp()
    elif arch == "topk" or act_fn == "topk":
        activation = "topk"
    elif arch == "standard" and act_fn == "relu":
        activation = "relu"
    else:
        raise BioLLMError(f"{path}: SAELens architecture {arch!r} with activation {act_fn!r} "
                          f"is not supported (standard, topk and jumprelu are).")
    d_in, latents = int(raw["d_in"]), int(raw["d_sae"])
    cfg = _cfg(path, kind="sae", activation=activation, d_in=d_in, num_latents=latents,
               k=min(k, latents), hookpoint=raw.get("hook_name") or meta.get("hook_name", ""),
               model=raw.get("model_name") or meta.get("model_name", ""),
               normalize_decoder=False,
               apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
               training={"source": "SAELens"})
    if "W_enc" in tensors and tensors["W_enc"].dim() == 2:
        tensors["W_enc"] = tensors["W_enc"].T  # SAELens stores it [d_in, d_sae]
    return _build(cfg, tensors, path / SAELENS_FILE)


def _read_goodfire(path: Path) -> Dictionary:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BioLLMError(f"{path} could not be read as a PyTorch state dict ({type(e).__name__});"
                          f" it may be corrupt or not a weights-only file.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BioLLMError(f"{path} holds a {type(state).__name__}, not a state dict.")
    state = {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in state.items()}
    if not {"W", "b_enc", "b_dec"} <= set(state):
        raise BioLLMError(f"{path} is not a Goodfire SAE: expected tensors W, b_enc, b_dec, "
                          f"found {', '.join(sorted(state)[:8]) or 'none'}.")
    W = state["W"]
    if W.dim() != 2:
        raise BioLLMError(f"{path}: W should be [d_in, latents], got shape {tuple(W.shape)}.")
    d_in, latents = W.shape
    layer = re.search(r"layer[_-]?(\d+)", path.name)
    k = re.search(r"(?:^|[_-])k[_-]?(\d+)", path.stem)
    cfg = _cfg(path, kind="sae", activation="batchtopk", d_in=d_in, num_latents=latents,
               k=int(k.group(1)) if k else 64,
               hookpoint=f"layers.{layer.group(1)}" if layer else "",
               normalize_decoder=False, apply_b_dec_to_input=False,
               training={"source": "Goodfire"})
    tied = W.T.contiguous()  # encoder x @ W, decoder f @ W.T
    tensors = {"W_enc": tied, "W_dec": tied.clone(), "b_enc": state["b_enc"],
               "b_dec": state["b_dec"], "threshold": torch.tensor(-1.0, dtype=W.dtype)}
    return _build(cfg, tensors, path)


def save_sparsify(d: Dictionary, path) -> Path:
    """Export in sparsify's format (cfg.json + sae.safetensors), readable by
    `sparsify.SparseCoder.load_from_disk`."""
    from safetensors.torch import save_file

    c = d.cfg
    if c.activation != "topk" or c.kind == "crosscoder":
        raise BioLLMError(f"sparsify's format holds TopK SAEs and transcoders only; this is a "
                          f"{c.activation} {c.kind}. Save it with .save() instead.")
    if c.d_out != c.d_in or c.apply_b_dec_to_input != (c.kind == "sae"):
        raise BioLLMError("sparsify needs d_out == d_in, b_dec subtracted for SAEs and not for "
                          "transcoders; this dictionary differs. Save it with .save() instead.")
    cfg = {"activation": "topk", "expansion_factor": max(1, c.num_latents // c.d_in),
           "normalize_decoder": bool(c.normalize_decoder), "num_latents": c.num_latents,
           "k": c.k, "multi_topk": False, "skip_connection": c.kind == "skip_transcoder",
           "transcode": c.kind != "sae", "d_in": c.d_in}
    tensors = {"encoder.weight": d.W_enc, "encoder.bias": d.b_enc, "W_dec": d.W_dec,
               "b_dec": d.b_dec}
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / SPARSIFY_FILE))
        (tmp / "cfg.json").write_text(json.dumps(cfg))
    return path


def check_features(features, num_features: int) -> np.ndarray:
    """`features` as int64 indices, or one line naming those outside [0, num_features)."""
    features = np.asarray(features, dtype=np.int64).ravel()
    bad = features[(features < 0) | (features >= num_features)].tolist()
    if bad:
        which = f"feature {bad[0]} is" if len(bad) == 1 else \
            f"features {', '.join(map(str, bad))} are"
        raise BioLLMError(f"{which} out of range; the dictionary has {num_features} features.")
    return features


def check_fits(d: Dictionary, hookpoint_width: int, target_width: int | None = None) -> None:
    """Raise a clear error when the dictionary cannot read (or write) the given widths."""
    c = d.cfg
    if hookpoint_width != c.d_in:
        raise BioLLMError(f"dictionary reads width {c.d_in} but the hookpoint has width "
                          f"{hookpoint_width}; use the hookpoint it was trained on "
                          f"({c.hookpoint or 'see its cfg.json'}) and the same model.")
    if target_width is not None and target_width != c.d_out:
        raise BioLLMError(f"dictionary writes width {c.d_out} but the target hookpoint has width "
                          f"{target_width}; use the target it was trained on "
                          f"({c.target or 'see its cfg.json'}).")
