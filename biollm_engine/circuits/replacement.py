"""The local replacement model: transcoders in place of MLPs, attention and norms frozen.

On one prompt, `ReplacementModel.trace` runs the real model once and records what the prompt
fixes: every attention pattern, every norm's scale (1/std or 1/rms per token), each layer's
transcoder features and its error (true MLP output minus the transcoder's output). `replay` then
runs the model again with those patterns and scales held fixed and every MLP output replaced by a
given tensor: the map from the sources (input embeddings, MLP outputs) to everything downstream is
then affine, so gradients give exact direct effects. Layers without a transcoder keep their whole
MLP output as the error.

Attention is frozen through transformers' attention interface (a registered attention function
that reuses the recorded pattern); norms through forward hooks that recompute the norm with the
recorded scale. Both are checked against the real forward on every trace.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BioLLMError

ATTN_NAME = "biollm_frozen"
_state = threading.local()


@dataclass
class Frozen:
    """What one prompt fixes: attention patterns and norm scales, keyed by module."""

    patterns: dict = field(default_factory=dict)
    scales: dict = field(default_factory=dict)
    mode: str = "record"


def _active() -> Frozen | None:
    return getattr(_state, "frozen", None)


def _frozen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      softcap=None, **_):
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    fz = _active()
    if fz is not None and fz.mode == "replay":
        pattern = fz.patterns[module]
    else:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        scores = (query @ key.transpose(2, 3)) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            mask = attention_mask[..., : key.shape[-2]]
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if fz is not None:
            fz.patterns[module] = pattern.detach()
    out = pattern.detach() @ value
    return out.transpose(1, 2).contiguous(), pattern


def _pass_through(x, *args, **kwargs):
    return x


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, _frozen_attention)
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)


def _norm_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.LayerNorm):
        return "layer"
    name = type(m).__name__
    if name.endswith("RMSNorm"):
        return "rms"
    if name.endswith("LayerNorm"):
        return "layer"
    return None


def _eps(m: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if isinstance(getattr(m, attr, None), float):
            return getattr(m, attr)
    raise BioLLMError(f"cannot freeze norm {type(m).__name__}: no epsilon attribute; this model "
                      "family is not supported for circuits.")


class _Norm:
    """One norm recomputed with a frozen scale: linear in its input once the scale is fixed."""

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind, self.eps = module, kind, _eps(module)
        d = module.weight.shape[-1]
        if kind == "rms":
            # Gain as the module applies it (w, or 1 + w in Gemma), read off a constant input.
            ones = torch.ones(1, d, dtype=module.weight.dtype, device=module.weight.device)
            with torch.no_grad():
                self.gain = module(ones).float()[0] * (1.0 + self.eps) ** 0.5
        else:
            self.gain = module.weight.float() if module.weight is not None else None
            self.bias = module.bias.float() if getattr(module, "bias", None) is not None else None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.kind == "rms":
            return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)

    def apply(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        if self.kind == "layer":
            x32 = x32 - x32.mean(-1, keepdim=True)
        y = x32 * s
        if self.gain is not None:
            y = y * self.gain
        if self.kind == "layer" and self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def hook(self, _m, args, output):
        fz = _active()
        if fz is None:
            return None
        x = args[0]
        if fz.mode == "replay":
            return self.apply(x, fz.scales[self.module])
        s = self.scale(x).detach()
        y = self.apply(x, s)
        if not torch.allclose(y, output, atol=1e-4, rtol=1e-3):
            raise BioLLMError(f"cannot freeze norm {type(self.module).__name__}: it does not "
                              "compute a LayerNorm or RMSNorm; this model is not supported.")
        fz.scales[self.module] = s
        return y


@dataclass
class LayerTrace:
    """One layer on the prompt: its transcoder's active features and its error."""

    positions: torch.Tensor
    """[n] token position of each active feature."""
    features: torch.Tensor
    """[n] latent index."""
    activations: torch.Tensor
    """[n] activation value."""
    preactivations: torch.Tensor
    """[n] encoder pre-activation W_enc·x + b_enc."""
    error: torch.Tensor
    """[T, d] true MLP output minus transcoder output (the whole MLP output without one)."""
    mlp_in: torch.Tensor
    """[T, d_in]"""
    mlp_out: torch.Tensor
    """[T, d]"""


@dataclass
class Trace:
    """Everything one prompt fixes, recorded by `ReplacementModel.trace`."""

    input_ids: torch.Tensor
    embeds: torch.Tensor
    layers: list[LayerTrace]
    final: torch.Tensor
    """[T, d] the unembedding's input."""
    logits: torch.Tensor
    """[V] the model's next-token logits at the last position (softcapped where the model is)."""
    frozen: Frozen


def transcoder_layer(tc, num_layers: int) -> int:
    """The layer a transcoder replaces, from its cfg hookpoints."""
    cfg = tc.cfg
    m = re.fullmatch(r"layers\.(\d+)\.mlp\.in", str(cfg.hookpoint))
    if not m or cfg.kind not in ("transcoder", "skip_transcoder"):
        raise BioLLMError(f"dictionary for {cfg.hookpoint!r} ({cfg.kind}) is not an MLP "
                          "transcoder; circuits need transcoders reading layers.N.mlp.in.")
    layer = int(m.group(1))
    if cfg.target and cfg.target != f"layers.{layer}.mlp.out":
        raise BioLLMError(f"transcoder reading {cfg.hookpoint} writes {cfg.target}; circuits need "
                          f"it to write layers.{layer}.mlp.out.")
    if layer >= num_layers:
        raise BioLLMError(f"transcoder reads {cfg.hookpoint} but the model has {num_layers} "
                          f"layers (layers.0 to layers.{num_layers - 1}); use dictionaries "
                          "trained on this model.")
    return layer


class ReplacementModel:
    """A causal LM with transcoders standing in for the MLPs of their layers."""

    def __init__(self, lm, transcoders):
        from ..dictionaries import check_fits
        from ..models import mlp_modules, resolve_hookpoint

        if not lm.is_causal:
            raise BioLLMError(f"{lm.name} is not a causal language model; circuits explain a "
                              "next-token prediction.")
        self.lm = lm
        self.n_layers = lm.num_layers
        self.transcoders: dict[int, nn.Module] = {}
        for tc in transcoders:
            layer = transcoder_layer(tc, self.n_layers)
            if layer in self.transcoders:
                raise BioLLMError(f"two transcoders for layer {layer}; give one per layer.")
            check_fits(tc, lm.d_model, lm.d_model)
            self.transcoders[layer] = tc
        if not self.transcoders:
            raise BioLLMError("no transcoders given; circuits need at least one.")
        self.mlp_in = [resolve_hookpoint(lm, f"layers.{i}.mlp.in").module
                       for i in range(self.n_layers)]
        self.mlp_out = [resolve_hookpoint(lm, f"layers.{i}.mlp.out").module
                        for i in range(self.n_layers)]
        self.mlp_chain = [m for i in range(self.n_layers) for m in mlp_modules(lm, i)]
        self.norms = [_Norm(m, k) for m in lm.base.modules() if (k := _norm_kind(m))]
        self.unembed = lm.model.get_output_embeddings()
        self.embed = lm.model.get_input_embeddings()
        self.softcap = getattr(lm.model.config, "final_logit_softcapping", None)
        _register_attention()

    # Encoder side of each transcoder: W_enc·x + b_enc, with b_dec folded in where it applies.
    def encoder_bias(self, layer: int) -> torch.Tensor:
        tc = self.transcoders[layer]
        b = tc.b_enc.detach().float()
        if getattr(tc.cfg, "apply_b_dec_to_input", False):
            b = b - tc.W_enc.detach().float() @ tc.b_dec.detach().float()
        return b

    def decode(self, layer: int, acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The transcoder's output from dense activations [.., L] and its input [.., d_in]."""
        tc = self.transcoders[layer]
        out = acts.to(tc.W_dec.dtype) @ tc.W_dec + tc.b_dec
        if getattr(tc, "W_skip", None) is not None:
            out = out + x.to(tc.W_skip.dtype) @ tc.W_skip.T
        return out

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        tc = self.transcoders.get(layer)
        if tc is None or getattr(tc, "W_skip", None) is None:
            return None
        return x.to(tc.W_skip.dtype) @ tc.W_skip.T

    @contextlib.contextmanager
    def frozen(self, fz: Frozen):
        """Run the model with attention patterns and norm scales recorded into / read from `fz`."""
        model = self.lm.model
        previous = model.config._attn_implementation
        handles = [n.module.register_forward_hook(n.hook) for n in self.norms]
        prior = _active()
        _state.frozen = fz
        model.set_attn_implementation(ATTN_NAME)
        try:
            yield
        finally:
            model.set_attn_implementation(previous)
            _state.frozen = prior
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def mlp_hooks(self, on_in, on_out):
        """Call `on_in(layer, mlp_in)` and `on_out(layer, output)` (its result replaces the output
        unless None) in this thread's forward passes only: a GUI may run the model elsewhere."""
        owner = threading.get_ident()

        def pre(_m, args, i):
            if threading.get_ident() == owner:
                on_in(i, args[0])

        def post(_m, _a, out, i):
            return on_out(i, out) if threading.get_ident() == owner else None

        handles = []
        for i in range(self.n_layers):
            handles.append(self.mlp_in[i].register_forward_pre_hook(
                lambda m, args, i=i: pre(m, args, i)))
            handles.append(self.mlp_out[i].register_forward_hook(
                lambda m, a, out, i=i: post(m, a, out, i)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def body(self, input_ids=None, inputs_embeds=None) -> torch.Tensor:
        out = self.lm.base(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
        return out.last_hidden_state

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the unembedding's input (soft-capped where the model is)."""
        z = self.unembed(final)
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor) -> Trace:
        """Run the prompt once; record patterns, scales, features and errors."""
        device = self.unembed.weight.device
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=device).reshape(1, -1)
        fz = Frozen(mode="record")
        xs: dict[int, torch.Tensor] = {}
        ys: dict[int, torch.Tensor] = {}

        def on_out(i, out):
            ys[i] = out[0] if isinstance(out, tuple) else out

        with self.frozen(fz), self.mlp_hooks(lambda i, x: xs.__setitem__(i, x), on_out):
            final = self.body(input_ids=ids)[0]
        layers = [self._layer_trace(i, xs[i][0], ys[i][0]) for i in range(self.n_layers)]
        fz.mode = "replay"
        return Trace(input_ids=ids[0], embeds=self.embed(ids)[0], layers=layers, final=final,
                     logits=self.logits(final[-1]).float(), frozen=fz)

    def _layer_trace(self, i: int, x: torch.Tensor, y: torch.Tensor) -> LayerTrace:
        tc = self.transcoders.get(i)
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        if tc is None:
            return LayerTrace(empty, empty, empty.float(), empty.float(), y.float(), x, y)
        acts = tc.encode(x.to(tc.W_enc.dtype)).float()
        pos, feat = acts.nonzero(as_tuple=True)
        pre = (x.float() @ tc.W_enc.float().T + self.encoder_bias(i))[pos, feat]
        error = y.float() - self.decode(i, acts, x).float()
        return LayerTrace(pos, feat, acts[pos, feat], pre, error, x, y)

    def replay(self, trace: Trace, embeds: torch.Tensor, mlp_out: list[torch.Tensor]):
        """The frozen model on new sources: embeddings [B, T, d], MLP outputs (per layer [B, T, d]).

        Returns the MLP inputs (per layer [B, T, d_in]) and the unembedding's input [B, T, d].
        A transcoder's skip term, being linear, is recomputed from the MLP input.
        """
        xs: list = [None] * self.n_layers

        def on_in(i, x):
            xs[i] = x

        def on_out(i, out):
            new = mlp_out[i]
            skip = self.skip(i, xs[i])
            if skip is not None:
                new = new + skip.to(new.dtype)
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

        with self.frozen(trace.frozen), self.mlp_hooks(on_in, on_out), self._mlps_skipped():
            final = self.body(inputs_embeds=embeds)
        return xs, final

    @contextlib.contextmanager
    def _mlps_skipped(self):
        """The replay replaces every MLP's output, so the MLPs need not run: each module of
        the chain passes its input through (same width), its hooks still called."""
        own = [m.__dict__.get("forward") for m in self.mlp_chain]  # e.g. accelerate's wrapper
        for m in self.mlp_chain:
            m.forward = _pass_through
        try:
            yield
        finally:
            for m, f in zip(self.mlp_chain, own):
                if f is None:
                    del m.forward
                else:
                    m.forward = f

    def feature_vectors(self, trace: Trace, layer: int) -> torch.Tensor:
        """[n, d] what each active feature of `layer` writes: activation × decoder row."""
        lt = trace.layers[layer]
        if layer not in self.transcoders:
            return torch.zeros(0, lt.error.shape[-1], device=lt.error.device)
        return lt.activations[:, None] * self.transcoders[layer].W_dec.detach().float()[lt.features]

    def transcoder_output(self, trace: Trace, layer: int) -> torch.Tensor:
        """[T, d] the MLP output the replay uses: features + b_dec + error (skip excluded)."""
        lt = trace.layers[layer]
        out = lt.error.clone()
        if layer in self.transcoders:
            out += self.transcoders[layer].b_dec.detach().float()
            out.index_add_(0, lt.positions, self.feature_vectors(trace, layer))
        return out
