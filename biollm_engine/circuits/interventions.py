"""Interventions: ablate, scale or clamp features or error nodes and run the model again.

Live (default): the real model runs with attention and norms free; at each edited layer the MLP
output becomes `true output + Σ (new activation - activation) × decoder row` for edited features
(activations read from the transcoder on the current, possibly already changed, input) and
`± error` for edited error nodes. Downstream features therefore respond to the edit.

Frozen: the local replacement model of the prompt (attention patterns, norm scales and every
other feature and error fixed at their values on the unedited prompt). Ablating one feature there
changes a logit by exactly that feature's direct edge in the attribution graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..errors import BioLLMError
from .attribution import label_token
from .graph import Graph
from .replacement import ReplacementModel, Trace

MODES = ("ablate", "scale", "clamp")


@dataclass(frozen=True)
class Edit:
    """One change: a feature (layer, pos, feature) or, with feature None, an error node."""

    layer: int
    pos: int
    feature: int | None = None
    mode: Literal["ablate", "scale", "clamp"] = "ablate"
    value: float = 0.0
    """the factor for scale, the activation for clamp"""

    def new_value(self, a: torch.Tensor) -> torch.Tensor:
        if self.mode == "ablate":
            return torch.zeros_like(a)
        if self.mode == "scale":
            return a * self.value
        return torch.full_like(a, self.value)


@dataclass
class InterventionResult:
    prediction_id: int
    prediction: str
    base_prediction_id: int
    base_prediction: str
    target_id: int
    target_logit_before: float
    target_logit_after: float
    labels: list[str] = field(default_factory=list)
    prob_before: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prob_after: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def target_logit_change(self) -> float:
        return self.target_logit_after - self.target_logit_before

    @property
    def prob_change(self) -> np.ndarray:
        return self.prob_after - self.prob_before

    @property
    def changed(self) -> bool:
        return self.prediction_id != self.base_prediction_id


def _check(rm: ReplacementModel, edits, T: int) -> None:
    for e in edits:
        if e.mode not in MODES:
            raise BioLLMError(f"unknown intervention {e.mode!r}; use one of {', '.join(MODES)}.")
        if not 0 <= e.layer < rm.n_layers or not 0 <= e.pos < T:
            raise BioLLMError(f"edit at layer {e.layer}, position {e.pos} is outside the model "
                              f"({rm.n_layers} layers) or the prompt ({T} tokens).")
        if e.feature is not None:
            if e.layer not in rm.transcoders:
                raise BioLLMError(f"layer {e.layer} has no transcoder, so it has no feature "
                                  f"{e.feature}; edit its error node (feature None) instead.")
            if not 0 <= e.feature < rm.transcoders[e.layer].W_dec.shape[0]:
                raise BioLLMError(f"feature {e.feature} does not exist in the layer {e.layer} "
                                  "transcoder.")
        elif e.mode == "clamp":
            raise BioLLMError("an error node is a vector; ablate or scale it, clamp a feature.")


def _delta(rm: ReplacementModel, layer: int, edits, x: torch.Tensor, error: torch.Tensor,
           acts: torch.Tensor | None) -> torch.Tensor:
    """What the edits at one layer add to its MLP output [T, d]."""
    delta = torch.zeros_like(error)
    for e in edits:
        if e.feature is None:
            delta[e.pos] += e.new_value(torch.ones(())) * error[e.pos] - error[e.pos]
            continue
        a = acts[e.pos, e.feature]
        w = rm.transcoders[layer].W_dec.detach().float()[e.feature]
        delta[e.pos] += (e.new_value(a) - a) * w
    return delta


def _live_logits(rm: ReplacementModel, ids: torch.Tensor, edits) -> torch.Tensor:
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e)
    xs: dict[int, torch.Tensor] = {}

    def on_out(layer, out):
        if layer not in by_layer:
            return None
        y = out[0] if isinstance(out, tuple) else out
        x = xs[layer][0]
        tc = rm.transcoders.get(layer)
        acts = None
        if tc is not None:
            acts = tc.encode(x.to(tc.W_enc.dtype)).float()
            error = y[0].float() - rm.decode(layer, acts, x).float()
        else:
            error = y[0].float()
        new = y + _delta(rm, layer, by_layer[layer], x, error, acts).to(y.dtype)[None]
        return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

    with torch.no_grad(), rm.mlp_hooks(xs.__setitem__, on_out):
        final = rm.body(input_ids=ids[None].to(rm.unembed.weight.device))[0]
    return final[-1]


@torch.no_grad()
def _frozen_logits(rm: ReplacementModel, trace: Trace, edits) -> torch.Tensor:
    outs = []
    for layer in range(rm.n_layers):
        out = rm.transcoder_output(trace, layer)
        es = [e for e in edits if e.layer == layer]
        if es:
            lt = trace.layers[layer]
            acts = None
            if layer in rm.transcoders:
                acts = torch.zeros(len(trace.input_ids), rm.transcoders[layer].W_dec.shape[0],
                                   device=lt.error.device)
                acts[lt.positions, lt.features] = lt.activations
            out = out + _delta(rm, layer, es, lt.mlp_in, lt.error, acts)
        outs.append(out.to(trace.embeds.dtype)[None])
    _, final = rm.replay(trace, trace.embeds[None], outs)
    return final[0, -1]


def intervene(rm: ReplacementModel, input_ids, edits, target=None, labels=None,
              frozen: bool = False, trace: Trace | None = None) -> InterventionResult:
    """Apply `edits` on the prompt `input_ids` and compare with the unedited run.

    `target`: token id or label (default: the unedited prediction); `labels`: candidate labels
    whose first-token probabilities are reported before and after.
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long).reshape(-1)
    edits = list(edits)
    _check(rm, edits, len(ids))
    trace = trace if trace is not None else rm.trace(ids)
    before = trace.final[-1]
    after = _frozen_logits(rm, trace, edits) if frozen else _live_logits(rm, ids, edits)
    # Logits before any final soft-capping, as the graph's logit nodes are.
    z0, z1 = (rm.unembed(f).float() for f in (before, after))
    p0 = torch.softmax(rm.logits(before).float(), -1)
    p1 = torch.softmax(rm.logits(after).float(), -1)
    tok = rm.lm.tokenizer
    prompt = tok.decode(ids.tolist())
    if target is None:
        tid = int(p0.argmax())
    elif isinstance(target, (int, np.integer)):
        tid = int(target)
    else:
        tid = label_token(tok, str(target), prompt)
    labels = list(labels or [])
    lids = [label_token(tok, lab, prompt) for lab in labels]
    b, a = int(p0.argmax()), int(p1.argmax())
    return InterventionResult(
        prediction_id=a, prediction=tok.decode([a]), base_prediction_id=b,
        base_prediction=tok.decode([b]), target_id=tid, target_logit_before=float(z0[tid]),
        target_logit_after=float(z1[tid]), labels=labels,
        prob_before=p0[lids].cpu().numpy() if lids else np.zeros(0),
        prob_after=p1[lids].cpu().numpy() if lids else np.zeros(0))


def ablation_check(rm: ReplacementModel, graph: Graph, top: int = 10) -> pd.DataFrame:
    """Attribution of the top features (direct edge to the target logit) against ablating them.

    Columns: layer, pos, feature, attribution, frozen_effect, live_effect, where an effect is the
    target logit's drop when the feature is ablated. In the frozen model it equals the attribution.
    """
    row = graph.adjacency[graph.logit_start, : graph.n_features].detach()
    order = torch.argsort(row.abs(), descending=True)[:top].tolist()
    trace = rm.trace(graph.input_ids)
    target = int(graph.logit_ids[0])
    records = []
    for i in order:
        layer, pos, feat = (int(v) for v in graph.features[i])
        edit = [Edit(layer, pos, feat, "ablate")]
        fr = intervene(rm, graph.input_ids, edit, target=target, frozen=True, trace=trace)
        lv = intervene(rm, graph.input_ids, edit, target=target, frozen=False, trace=trace)
        records.append(dict(layer=layer, pos=pos, feature=feat, attribution=float(row[i]),
                            frozen_effect=-fr.target_logit_change,
                            live_effect=-lv.target_logit_change))
    return pd.DataFrame.from_records(
        records, columns=["layer", "pos", "feature", "attribution", "frozen_effect", "live_effect"])
