"""Load a model and its tokenizer from a local folder or a hub id."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import BioLLMError
from .architectures import Architecture, bind_architecture, detect_architecture

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cuda", "mps", "cpu")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "tokenizer.model", "spiece.model")


@dataclass
class LoadedModel:
    """A model ready for interpretability work: eval mode, frozen parameters."""

    model: object
    tokenizer: object
    arch: Architecture
    name: str
    device: str
    dtype: str
    is_causal: bool
    num_layers: int
    d_model: int

    def module(self, path: str):
        """The submodule at a dotted path from the model root ("" is the root)."""
        return self.model.get_submodule(path) if path else self.model

    @property
    def layers(self):
        return self.module(self.arch.layers)

    @property
    def base(self):
        return self.module(self.arch.base)

    @property
    def max_tokens(self) -> int | None:
        """The longest input its learned absolute positions cover (GPT-2, BERT, ESM); None
        where positions have no hard end (rotary, Evo 2). Longer inputs fail deep in torch."""
        cfg = getattr(self.model, "config", None)
        if getattr(cfg, "model_type", None) == "gpt2":
            return int(cfg.n_positions)
        if getattr(cfg, "position_embedding_type", None) != "absolute" or \
                not getattr(cfg, "max_position_embeddings", None):
            return None
        if cfg.model_type == "esm":  # positions count from the pad id + 1, as in fairseq
            return int(cfg.max_position_embeddings) - int(cfg.pad_token_id or 0) - 1
        return int(cfg.max_position_embeddings)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise BioLLMError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BioLLMError(f"device {device!r} asked for but no CUDA GPU is available; use "
                          "--device cpu or auto.")
    if device == "mps" and not mps_ok:
        raise BioLLMError("device 'mps' asked for but Apple MPS is not available; use --device "
                          "cpu or auto.")
    return device


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise BioLLMError(f"model path {path} is not a folder; give the folder holding "
                          "config.json, the weights and the tokenizer.")
    if not (path / "config.json").exists():
        raise BioLLMError(f"model folder {path} has no config.json; give the folder that "
                          "save_pretrained wrote.")
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        raise BioLLMError(f"model folder {path} has no tokenizer (no tokenizer.json, "
                          "tokenizer_config.json or vocab file); save the tokenizer into it "
                          "with tokenizer.save_pretrained.")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def load_model(name_or_path: str, device: str = "auto", dtype: str = "float32",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM (or a BERT-style encoder) and its tokenizer, weights from safetensors;
    `evo2:<model name>` loads Evo 2 through the evo2 package (see models/evo2.py)."""
    import torch
    import transformers as tf

    if dtype not in DTYPES:
        raise BioLLMError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    name = str(name_or_path)
    if name.startswith("evo2:"):  # the evo2 package places Evo 2 on its GPU(s) itself
        from .evo2 import load_evo2

        return load_evo2(name[len("evo2:"):])
    device = resolve_device(device)
    path = Path(name).expanduser()
    local = path.exists()
    if local:
        _check_folder(path)
        source = str(path)
    elif _looks_like_path(name):
        raise BioLLMError(f"model folder {name} does not exist; check the path.")
    else:
        source = name
    where = f"model folder {source}" if local else f"model {source!r}"
    try:
        config = tf.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if local:
            raise BioLLMError(f"{where} has an unreadable config.json ({_first_line(e)}).") from None
        raise BioLLMError(f"{where} is not a local folder and could not be fetched from the model "
                          "hub (offline or unknown id); download it and give its folder.") from None
    arch = detect_architecture(config)
    cls = tf.AutoModelForCausalLM if arch.causal else tf.AutoModel
    kwargs = dict(dtype=getattr(torch, dtype), use_safetensors=True,
                  trust_remote_code=trust_remote_code)
    if arch.attn_implementation:
        kwargs["attn_implementation"] = arch.attn_implementation
    try:
        with _quiet_transformers():
            model = cls.from_pretrained(source, **kwargs)
    except Exception as e:  # transformers and safetensors raise many types for one cause
        if local and not any(path.glob("*.safetensors")):
            raise BioLLMError(f"{where} has no .safetensors weights; convert the weights to "
                              "safetensors (model.save_pretrained(..., safe_serialization=True)).") from None
        raise BioLLMError(f"could not load the weights of {where} ({_first_line(e)}); the weight "
                          "files may be corrupt or incomplete, download them again.") from None
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise BioLLMError(f"could not load the tokenizer of {where} ({_first_line(e)}); save a "
                          "tokenizer into the model folder.") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BioLLMError(f"the tokenizer of {where} has neither a pad nor an eos token; add a "
                              "pad token to it.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    arch = bind_architecture(arch, model)
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    lm = LoadedModel(model=model, tokenizer=tokenizer, arch=arch, name=name, device=device,
                     dtype=dtype, is_causal=arch.causal, num_layers=0,
                     d_model=int(config.hidden_size))
    lm.num_layers = len(lm.layers)
    return lm


@contextlib.contextmanager
def _quiet_transformers():
    """Engine code never prints: silence transformers' own loading bar while we load."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
