"""Evo 2 through the `evo2` package (vortex's StripedHyena), in the project's hookpoint names.

StripedHyena keeps its blocks in `blocks`: hyena blocks (`pre_norm`, `filter`, `projections`,
`out_filter_dense`, `post_norm`, `mlp`) and attention blocks (`pre_norm`, `inner_mha_cls`,
`post_norm`, `mlp`); each returns (residual stream, state). The mixer's contribution is
`out_filter_dense` (hyena) or `inner_mha_cls` (attention); the MLP reads `post_norm`'s output.
Tokens are bytes (CharLevelTokenizer: A=65, C=67, G=71, T=84; 0 end of document, 1 padding).
Evo 2 ties its unembedding to the embedding (`unembed` is then a weightless Lambda over
`embedding_layer.unembed`), so the unembedding matrix is read from `embedding_layer`; its RMSNorm
keeps its gain in `scale`.

Name a model `evo2:<model name>` (e.g. `evo2:evo2_7b`), or `evo2:<model name>:<weights.pt>`
for a checkpoint already on disk.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from ..errors import BioLLMError
from .architectures import Architecture, bind_architecture
from .loading import LoadedModel

PREFIX = "evo2:"
INSTALL = ("pip install 'biollm-workbench[evo2]' on a machine with a CUDA GPU (evo2_1b_base also "
           "needs NVIDIA Transformer Engine; the 7B models run in bfloat16)")

EVO2 = Architecture(
    name="evo2", model_types=("evo2",), causal=True, base="",
    layers="model.blocks", embed="model.embedding_layer", final_norm="model.norm",
    unembed="model.unembed", attn="filter", attn_out="out_filter_dense", mlp=("mlp",),
    norms={"attn_in": "pre_norm", "mlp_in": "post_norm"},
    # attention blocks (every few layers) mix with inner_mha_cls instead of the hyena filter
    alternates={"attn": ("inner_mha_cls",), "attn_out": ("inner_mha_cls",)},
)


class ByteTokenizer:
    """Evo 2's CharLevelTokenizer with the attributes the engine reads from a tokenizer."""

    bases_as_bytes = True  # DNA readers give it one byte per base (inputs.dna.reads_bytes)
    pad_token_id = 1
    eos_token_id = 0
    pad_token = chr(1)
    eos_token = chr(0)
    all_special_ids = [0, 1]

    def __init__(self, vocab_size: int = 512):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def __call__(self, text: str, **_) -> dict:
        return {"input_ids": self.encode(text)}

    def convert_ids_to_tokens(self, ids):
        return [chr(max(32, min(int(i), 255))) if int(i) > 1 else "" for i in ids]

    def decode(self, ids, **_) -> str:
        return "".join(self.convert_ids_to_tokens(ids))

    def batch_decode(self, batch, **_) -> list[str]:
        return [self.decode(ids) for ids in batch]


def _body_class():
    import torch.nn as nn

    class Evo2Body(nn.Module):
        """StripedHyena behind the call the engine makes on every model's body."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
            # right padding and causal mixing: padded positions never reach real ones, so the
            # model runs as Evo2.forward runs it, without a padding mask
            logits, _state = self.model(input_ids)
            return logits

    return Evo2Body


def wrap_striped_hyena(model, name: str, device: str, dtype: str,
                       tokenizer=None) -> LoadedModel:
    """A LoadedModel over a StripedHyena module tree (the real one, or a stand-in in tests)."""
    import dataclasses

    body = _body_class()(model)
    body.eval()
    body.requires_grad_(False)
    arch = EVO2
    if getattr(body.get_submodule(EVO2.unembed), "weight", None) is None:
        arch = dataclasses.replace(EVO2, unembed=EVO2.embed)  # tie_embeddings: True
    arch = bind_architecture(arch, body)
    emb = body.get_submodule(arch.embed)
    d_model = int(getattr(emb, "embedding_dim", 0) or emb.weight.shape[1])
    return LoadedModel(model=body, tokenizer=tokenizer or ByteTokenizer(), arch=arch, name=name,
                       device=device, dtype=dtype, is_causal=True,
                       num_layers=len(body.get_submodule(arch.layers)), d_model=d_model)


class _UnopenedFileHandler(logging.FileHandler):
    def __init__(self, filename, mode="a", encoding=None, delay=False, errors=None):
        super().__init__(filename, mode, encoding, True, errors)


@contextmanager
def _vortex_import():
    """Import evo2 / vortex without what vortex.logging does on import: an activations_debug.log
    created in the user's current folder, and a handler on the root logger at INFO level (every
    library's info messages would print in the user's terminal). The file handler is made
    unopened, and the root logger is given back as it was."""
    root = logging.getLogger()
    handlers, level, file_handler = root.handlers[:], root.level, logging.FileHandler
    logging.FileHandler = _UnopenedFileHandler
    try:
        yield
    finally:
        logging.FileHandler = file_handler
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def load_evo2(spec: str) -> LoadedModel:
    """`spec` is `<model name>` or `<model name>:<weights.pt>` (after the `evo2:` prefix)."""
    import torch

    name, _, local = spec.partition(":")
    try:
        with _vortex_import():
            from evo2 import Evo2
            from evo2.utils import MODEL_NAMES
    except ImportError:
        raise BioLLMError(f"Evo 2 needs the evo2 package, which is not installed: {INSTALL}."
                          ) from None
    if name not in MODEL_NAMES:
        raise BioLLMError(f"unknown Evo 2 model {name!r}; use one of {', '.join(MODEL_NAMES)}.")
    if not torch.cuda.is_available():
        raise BioLLMError("Evo 2 runs only on a CUDA GPU and none is available here; use a "
                          "machine with one, or a Hugging Face DNA model on this one.")
    if "1b" in name:
        try:
            import transformer_engine  # noqa: F401
        except ImportError:
            raise BioLLMError(f"{name} computes in FP8 and needs NVIDIA Transformer Engine "
                              "(pip install transformer_engine[pytorch]); or use evo2_7b, "
                              "which runs in bfloat16 without it.") from None
    try:
        evo = Evo2(name, local_path=local or None)
    except Exception as e:  # hub, checkpoint and CUDA errors all end here
        get = (f"download the weights (huggingface-cli download arcinstitute/{name}) and give "
               f"the .pt as evo2:{name}:<path>")
        if not local and type(e).__module__.startswith("huggingface_hub"):
            raise BioLLMError(f"the weights of Evo 2 {name} are not in the Hugging Face cache and "
                              f"could not be downloaded ({type(e).__name__}); {get}.") from None
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BioLLMError(f"could not load Evo 2 {name} ({text}); {get}.") from None
    device = str(next(evo.model.parameters()).device)
    return wrap_striped_hyena(evo.model, PREFIX + spec, device, "bfloat16")


def random_striped_hyena(config: str = "evo2-7b-8k", **overrides):
    """Evo 2's real architecture (vortex's StripedHyena from one of evo2's own configurations,
    `overrides` applied) with random weights in the dtypes evo2's checkpoint loading sets, on
    the GPU: for tests and benchmarks where no weights can be downloaded. FlashAttention and FP8
    projections are off unless `overrides` turn them on."""
    import pkgutil

    import torch
    import yaml

    try:
        with _vortex_import():
            from vortex.model.model import StripedHyena
            from vortex.model.utils import dotdict
    except ImportError as e:
        raise BioLLMError(f"Evo 2's architecture needs the evo2 package ({e}): {INSTALL}."
                          ) from None
    cfg = yaml.safe_load(pkgutil.get_data("evo2", f"configs/{config}.yml"))
    cfg.update({"use_flash_attn": False, "use_fp8_input_projections": False, **overrides})
    model = StripedHyena(dotdict(cfg))
    with torch.no_grad():
        for p in model.parameters():  # evo2 zero-initialises MLP outputs: give them weights
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02)
        # vortex draws log-poles from N(0, 1): long filters growing as exp(t), which overflow;
        # trained Evo 2 filters decay
        for block in model.blocks:
            poles = getattr(getattr(block, "filter", None), "log_poles", None)
            if poles is not None:
                poles.copy_(-poles.abs() - 0.05)
    model.to_bfloat16_except_pr_lc(to_float32=True)
    return model.eval()
