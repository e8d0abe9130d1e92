"""`Graph`: an attribution graph as plain data, saved as one safetensors file.

Nodes are ordered [features | errors | inputs | logits], as in circuit-tracer:
- features: active transcoder latents that got their own node, `features[i] = (layer, pos, id)`;
- errors: one per (layer, position), index `layer * n_pos + pos`; a layer's error node also
  carries the features that did not get a node of their own (so every sum stays exact);
- inputs: one per token, or one per gene when the tokens of a gene are merged;
- logits: the target first, then any other logits asked for.

`adjacency[target, source]` is the direct effect of the source on the target with attention
patterns and norm scales frozen at their values on this prompt. Rows of features and logits are
complete: `adjacency[i].sum() + bias[i]` equals the feature's pre-activation / the logit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import BioLLMError
from ..fileio import atomic_path

FORMAT = "biollm-circuit-graph"
_ARRAYS = ("input_ids", "features", "activations", "preactivations", "logit_ids",
           "logit_probabilities", "logit_values", "bias", "adjacency")


@dataclass
class Graph:
    prompt: str
    input_ids: np.ndarray
    """[T] int64 token ids of the prompt."""
    tokens: list[str]
    """[T] each token as text."""
    token_genes: list[str]
    """[T] the gene each token belongs to ("" for tokens outside the cell sentence)."""
    n_layers: int
    features: np.ndarray
    """[F, 3] int64 (layer, position, latent) of each feature node."""
    activations: np.ndarray
    """[F] float32"""
    preactivations: np.ndarray
    """[F] float32 encoder pre-activations (what a feature row sums to)."""
    input_positions: list[list[int]]
    """token positions of each input node (one each, or a gene's tokens when merged)."""
    input_labels: list[str]
    """label of each input node: the gene, else the token text."""
    logit_ids: np.ndarray
    """[K] int64 token id of each logit node; the target is first."""
    logit_labels: list[str]
    logit_probabilities: np.ndarray
    """[K] float32 model probability of each logit token."""
    logit_values: np.ndarray
    """[K] float32 logit (before any final soft-capping) that each logit row sums to."""
    bias: np.ndarray
    """[N] float32 constant term of each node (biases of every module on the path)."""
    adjacency: torch.Tensor
    """[N, N] float32 direct effects, `adjacency[target, source]`."""
    model: str = ""
    dictionaries: list[str] = field(default_factory=list)
    """per layer: the transcoder's path ("" for layers whose MLP is one error node)."""
    meta: dict = field(default_factory=dict)
    """free-form context: cell index, cell type, options used."""

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_inputs(self) -> int:
        return len(self.input_positions)

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_inputs + self.n_logits

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def input_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.input_start + self.n_inputs

    def kind(self, i: int) -> str:
        """"feature", "error", "input" or "logit"."""
        if i < self.error_start:
            return "feature"
        if i < self.input_start:
            return "error"
        if i < self.logit_start:
            return "input"
        return "logit"

    def kinds(self) -> np.ndarray:
        return np.array(["feature"] * self.n_features + ["error"] * self.n_errors
                        + ["input"] * self.n_inputs + ["logit"] * self.n_logits)

    def layer_pos(self, i: int) -> tuple[int, int]:
        """Layer and position of a node; inputs are layer -1, logits layer n_layers."""
        kind = self.kind(i)
        if kind == "feature":
            return int(self.features[i, 0]), int(self.features[i, 1])
        if kind == "error":
            return divmod(i - self.error_start, self.n_pos)
        if kind == "input":
            return -1, self.input_positions[i - self.input_start][0]
        return self.n_layers, self.n_pos - 1

    def label(self, i: int) -> str:
        kind = self.kind(i)
        layer, pos = self.layer_pos(i)
        if kind == "feature":
            return f"L{layer}/{int(self.features[i, 2])}@{pos}"
        if kind == "error":
            return f"error L{layer}@{pos}"
        if kind == "input":
            return self.input_labels[i - self.input_start]
        return self.logit_labels[i - self.logit_start]

    def values(self) -> np.ndarray:
        """What each row sums to with its bias: pre-activations, logits; NaN for sources."""
        out = np.full(self.n_nodes, np.nan, dtype=np.float32)
        out[: self.n_features] = self.preactivations
        out[self.logit_start:] = self.logit_values
        return out

    def logit_weights(self) -> torch.Tensor:
        """[N] the logits' probabilities at the logit nodes, 0 elsewhere: where influence starts."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_start:] = torch.as_tensor(self.logit_probabilities, dtype=torch.float32)
        return w

    def merge_genes(self) -> "Graph":
        """A copy where the tokens of each gene form one input node (their columns summed)."""
        groups: dict[str, list[int]] = {}
        order: list[str] = []
        for node, positions in enumerate(self.input_positions):
            key = self.token_genes[positions[0]] or f"\0{node}"
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(node)
        if len(order) == self.n_inputs:
            return self
        s, e, m = self.input_start, self.logit_start, len(order)
        a = self.adjacency
        merged = torch.stack([a[:, [s + n for n in groups[k]]].sum(1) for k in order], 1)
        a = torch.cat([a[:, :s], merged, a[:, e:]], 1)
        # Input nodes have no incoming edges, so their rows are zero.
        new = torch.cat([a[:s], torch.zeros(m, a.shape[1]), a[e:]], 0)
        positions = [sorted(p for n in groups[k] for p in self.input_positions[n]) for k in order]
        labels = [k if not k.startswith("\0") else self.input_labels[groups[k][0]] for k in order]
        bias = np.concatenate([self.bias[:s], np.zeros(m, np.float32), self.bias[e:]])
        return _replace(self, input_positions=positions, input_labels=labels, adjacency=new,
                        bias=bias)

    def save(self, path: str | Path) -> Path:
        """Write the graph to one .safetensors file (arrays + JSON header), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: torch.as_tensor(np.asarray(getattr(self, k)) if k != "adjacency"
                                      else self.adjacency).contiguous() for k in _ARRAYS}
        header = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT,
                                                   "graph": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise BioLLMError(f"graph file {path} does not exist; check the path.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise BioLLMError(f"graph file {path} is not a readable safetensors file ({e}); "
                              "build the graph again.") from None
        if meta.get("format") != FORMAT or set(_ARRAYS) - set(tensors):
            raise BioLLMError(f"{path} is not a circuit graph saved by biollm; build it with "
                              "`biollm circuit`.")
        header = json.loads(meta["graph"])
        arrays = {k: (tensors[k] if k == "adjacency" else tensors[k].numpy()) for k in _ARRAYS}
        return cls(**header, **arrays)


def _replace(g: Graph, **changes) -> Graph:
    values = {f.name: getattr(g, f.name) for f in fields(g)}
    values.update(changes)
    return Graph(**values)
