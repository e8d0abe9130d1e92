"""Input-invariant feature-to-feature weights between two transcoders, from the weights alone.

The direct residual path: what feature i of the layer-a transcoder writes into the residual stream
(its decoder row, at `layers.a.mlp.out`) as feature j of the layer-b transcoder reads it (its
encoder row, at `layers.b.mlp.in`, after layer b's MLP-input norm). The norm's input-independent
part is included (its gain, and the mean-centering of a LayerNorm); its per-token scale, the
attention layers and the MLPs in between are not: this is the connection through the residual
stream alone, `W_dec_a · C · diag(gain_b) · W_enc_bᵀ`.
"""

from __future__ import annotations

import torch

from ..errors import BioLLMError
from .replacement import _Norm, _norm_kind, transcoder_layer


def feature_to_feature_weights(tc_a, tc_b, lm, features_a=None, features_b=None) -> torch.Tensor:
    """[n_a, n_b] weights from layer-a features to layer-b features (all, or the ones listed)."""
    a = transcoder_layer(tc_a, lm.num_layers)
    b = transcoder_layer(tc_b, lm.num_layers)
    if a >= b:
        raise BioLLMError(f"feature-to-feature weights go from an earlier layer to a later one "
                          f"(got layers {a} and {b}); swap the transcoders.")
    norm_path = lm.arch.norms.get("mlp_in")
    if not norm_path:
        raise BioLLMError(f"{lm.arch.name} models have no MLP-input norm to read through; "
                          "feature-to-feature weights need a pre-norm model.")
    module = lm.module(f"{lm.arch.layers}.{b}.{norm_path}")
    norm = _Norm(module, _norm_kind(module) or "layer")
    with torch.no_grad():
        dec = tc_a.W_dec.detach().float()
        enc = tc_b.W_enc.detach().float()
        if features_a is not None:
            dec = dec[torch.as_tensor(features_a)]
        if features_b is not None:
            enc = enc[torch.as_tensor(features_b)]
        if norm.kind == "layer":
            dec = dec - dec.mean(-1, keepdim=True)
        if norm.gain is not None:
            enc = enc * norm.gain.to(enc.device)
        return dec @ enc.T


def top_connections(weights: torch.Tensor, k: int = 20) -> list[tuple[int, int, float]]:
    """The `k` largest |weights| as (row, column, weight)."""
    flat = weights.flatten()
    idx = torch.argsort(flat.abs(), descending=True)[:k]
    n = weights.shape[1]
    return [(int(i) // n, int(i) % n, float(flat[i])) for i in idx]
