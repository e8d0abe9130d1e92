"""Where things are in each supported model family, as data.

Every path is a dotted module path: `layers`, `embed`, `final_norm`, `unembed` and `base` from the
loaded model's root; `attn`, `attn_out`, `mlp` and `norms` from one block (`layers[i]`).

`mlp` is the chain of modules that together turn the MLP's input into what the block adds to its
residual stream: `("mlp",)` for most, `("mlp", "post_feedforward_layernorm")` for Gemma 2 (its
MLP output is normalized before the residual add), `("intermediate", "output.dense")` for BERT.
Calling the chain in order on `layers.{i}.mlp.in` gives `layers.{i}.mlp.out`; a transcoder
replaces exactly that chain. `attn_out` is the module whose output is the attention's
contribution in the same sense.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import BioLLMError


@dataclass(frozen=True)
class Architecture:
    """One model family's layout."""

    name: str
    """Family name, e.g. "gpt_neox"."""
    model_types: tuple[str, ...]
    """`config.model_type` values handled by this family."""
    causal: bool
    """Loaded with AutoModelForCausalLM (True) or AutoModel (False, encoders)."""
    base: str
    """The transformer without its head ("" when the loaded model is the base)."""
    layers: str
    embed: str
    final_norm: str | None
    unembed: str | None
    attn: str
    attn_out: str
    mlp: tuple[str, ...]
    norms: dict[str, str] = field(default_factory=dict)
    """Per-block norms by role: attn_in, attn_out, mlp_in, mlp_out, residual (post-LN encoders)."""
    parallel_residual: bool = False
    """Attention and MLP both read the block input (Pythia)."""
    post_norm: bool = False
    """The residual stream is normalized after each sublayer (BERT)."""
    embed_scale: float = 1.0
    """Factor applied to token embeddings before layer 0 (sqrt(d_model) in Gemma); the `embed`
    hookpoint already includes it."""
    attn_implementation: str | None = None
    """Forced attention kernel, where the default would compute something else (Gemma 2's
    logit soft-capping is only exact in eager attention)."""
    alternates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Other paths a field has had across transformers versions, tried when the first is absent."""


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="gpt_neox", model_types=("gpt_neox",), causal=True, base="gpt_neox",
        layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head", attn="attention", attn_out="attention", mlp=("mlp",),
        norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
        parallel_residual=True, alternates={"unembed": ("embed_out",)},
    ),
    Architecture(
        name="gemma2", model_types=("gemma2",), causal=True, base="model",
        layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
        unembed="lm_head", attn="self_attn", attn_out="post_attention_layernorm",
        mlp=("mlp", "post_feedforward_layernorm"),
        norms={"attn_in": "input_layernorm", "attn_out": "post_attention_layernorm",
               "mlp_in": "pre_feedforward_layernorm", "mlp_out": "post_feedforward_layernorm"},
        attn_implementation="eager",
    ),
    Architecture(
        name="llama", model_types=("llama", "mistral", "qwen2"), causal=True, base="model",
        layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
        unembed="lm_head", attn="self_attn", attn_out="self_attn", mlp=("mlp",),
        norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    ),
    Architecture(
        name="gpt2", model_types=("gpt2",), causal=True, base="transformer",
        layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        unembed="lm_head", attn="attn", attn_out="attn", mlp=("mlp",),
        norms={"attn_in": "ln_1", "mlp_in": "ln_2"},
    ),
    Architecture(
        name="bert", model_types=("bert",), causal=False, base="",
        layers="encoder.layer", embed="embeddings", final_norm=None, unembed=None,
        attn="attention", attn_out="attention.output.dense",
        mlp=("intermediate", "output.dense"),
        norms={"attn_out": "attention.output.LayerNorm", "mlp_out": "output.LayerNorm"},
        post_norm=True,
    ),
    Architecture(
        # ESM (Nucleotide Transformer v1 and other ESM-architecture masked LMs): pre-norm
        # encoder blocks whose output.dense modules add their residual themselves, so the dense
        # layers are the sublayers' contributions
        name="esm", model_types=("esm",), causal=False, base="",
        layers="encoder.layer", embed="embeddings", final_norm="encoder.emb_layer_norm_after",
        unembed=None, attn="attention", attn_out="attention.output.dense",
        mlp=("intermediate", "output.dense"),
        norms={"attn_in": "attention.LayerNorm", "mlp_in": "LayerNorm"},
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ARCHITECTURES for t in a.model_types)


def detect_architecture(config) -> Architecture:
    """The `Architecture` for a transformers config, with its config-dependent fields filled."""
    model_type = getattr(config, "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            break
    else:
        raise BioLLMError(
            f"model type {model_type!r} is not supported; supported types: "
            f"{', '.join(supported_model_types())}.")
    changes: dict = {}
    if arch.name == "gpt_neox":
        changes["parallel_residual"] = bool(getattr(config, "use_parallel_residual", True))
    if arch.name == "gemma2":
        changes["embed_scale"] = float(config.hidden_size) ** 0.5
    return dataclasses.replace(arch, **changes)


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def bind_architecture(arch: Architecture, model) -> Architecture:
    """`arch` with every path checked against the loaded `model` (alternates filled in)."""
    changes = {}
    for name, options in arch.alternates.items():
        current = getattr(arch, name)
        if current and not _has(model, current):
            found = next((p for p in options if _has(model, p)), None)
            if found:
                changes[name] = found
    arch = dataclasses.replace(arch, **changes)
    block = f"{arch.layers}.0"
    paths = [arch.layers, block, arch.embed, arch.final_norm, arch.unembed]
    paths += [f"{block}.{p}" for p in (arch.attn, arch.attn_out, *arch.mlp, *arch.norms.values())]
    missing = [p for p in paths if p and not _has(model, p)]
    if missing:
        raise BioLLMError(f"the {type(model).__name__} model has no module {missing[0]!r} where "
                          f"the {arch.name} layout puts it; it is not a standard {arch.name} model "
                          "(supported: Hugging Face transformers' own implementations).")
    return arch
