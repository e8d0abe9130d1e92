"""`attribute`: the attribution graph of one prompt, by backward passes through the frozen model.

As circuit-tracer does: for a batch of target nodes (a feature's encoder direction at its layer and
position, or a logit's unembedding row at the last position), inject that direction as the
gradient at the target and read the gradients at every source (input embeddings, each layer's MLP
output). A source's edge is its gradient dotted with what it wrote (activation × decoder row for a
feature, the error vector, the token's embedding). The forward pass is replayed with `batch_size`
copies of the prompt so one backward gives `batch_size` rows.

When the prompt has more active features than `max_features`, features get rows in order of
their influence on the logits (re-estimated every few batches), and the rest are folded into the
error node of their layer and position, so every row still sums exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BioLLMError
from ..progress import CancelToken, ProgressCallback, ProgressTracker
from .graph import Graph
from .replacement import ReplacementModel, Trace



def _by_position(fv: torch.Tensor, pos: torch.Tensor, T: int):
    """Feature vectors [n, d] (sorted by position) padded to [T, k_max, d], and each one's slot."""
    slot = torch.arange(len(pos), device=pos.device) - torch.searchsorted(pos, pos)
    k = int(slot.max()) + 1 if len(pos) else 1
    padded = torch.zeros(T, k, fv.shape[-1], dtype=fv.dtype, device=fv.device)
    padded[pos, slot] = fv
    return padded.transpose(1, 2).contiguous(), slot


def label_token(tokenizer, label: str, prompt: str = "") -> int:
    """The first token of `label` as the model would write it right after `prompt`."""
    text = label.strip()
    if not text:
        raise BioLLMError("the target label is empty; give a cell type name.")
    if prompt and not prompt[-1].isspace():
        text = " " + text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise BioLLMError(f"the target label {label!r} has no tokens in this model's vocabulary.")
    return int(ids[0])


def tokenize_prompt(tokenizer, prompt: str) -> torch.Tensor:
    if not prompt or not prompt.strip():
        raise BioLLMError("the prompt is empty; give a cell (--cell) or a prompt text.")
    return torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)


class _Rows:
    """Computes rows of direct effects for batches of target nodes."""

    def __init__(self, rm: ReplacementModel, trace: Trace, batch_size: int):
        self.rm, self.trace, self.B = rm, trace, batch_size
        T, L = len(trace.input_ids), rm.n_layers
        self.T, self.L = T, L
        self.embeds = trace.embeds.float()
        fvecs = [rm.feature_vectors(trace, i) for i in range(L)]
        self.n_feat = [len(v) for v in fvecs]
        # One batched matmul per layer: each position's gradient against its own features.
        self.padded = [_by_position(v, trace.layers[i].positions, T) for i, v in enumerate(fvecs)]
        self.feat_offset = np.concatenate([[0], np.cumsum(self.n_feat)]).astype(int)
        self.n_active = int(self.feat_offset[-1])
        self.n_cols = self.n_active + L * T + T
        dtype = trace.embeds.dtype
        self.leaf_embeds = trace.embeds.detach().expand(batch_size, -1, -1).clone()
        self.leaf_embeds.requires_grad_(True)
        self.leaf_out = []
        for i in range(L):
            out = rm.transcoder_output(trace, i).to(dtype)
            self.leaf_out.append(out.expand(batch_size, -1, -1).clone().requires_grad_(True))
        with torch.enable_grad():
            self.xs, self.final = rm.replay(trace, self.leaf_embeds, self.leaf_out)

    def compute(self, layers: np.ndarray, positions: np.ndarray, vectors: torch.Tensor,
                retain: bool = True) -> torch.Tensor:
        """Rows [n, n_cols] for targets at (layer, pos) reading `vectors`; layer L is the logits."""
        n = len(layers)
        outputs, grads = [], []
        for layer in np.unique(layers):
            sel = np.nonzero(layers == layer)[0]
            target = self.final if layer == self.L else self.xs[layer]
            g = torch.zeros_like(target)
            g[torch.as_tensor(sel), torch.as_tensor(positions[sel])] = vectors[sel].to(g.dtype)
            outputs.append(target)
            grads.append(g)
        top = int(layers.max())
        inputs = [self.leaf_embeds] + self.leaf_out[:min(top, self.L)]
        got = torch.autograd.grad(outputs, inputs, grads, retain_graph=retain, allow_unused=True)
        with torch.no_grad():
            return self._contract(got, n)

    def _contract(self, got, n: int) -> torch.Tensor:
        row = torch.zeros(n, self.n_cols)
        if got[0] is not None:
            row[:, self.n_active + self.L * self.T:] = (got[0][:n].float() * self.embeds).sum(-1)
        for i, g in enumerate(got[1:]):
            if g is None:
                continue
            g = g[:n].float()
            lt = self.trace.layers[i]
            e0 = self.n_active + i * self.T
            row[:, e0:e0 + self.T] = (g * lt.error).sum(-1)
            if self.n_feat[i]:
                padded, slot = self.padded[i]
                per_pos = torch.bmm(g.transpose(0, 1), padded)  # [T, n, k_max]
                o = self.feat_offset[i]
                row[:, o:o + self.n_feat[i]] = per_pos[lt.positions, :, slot].T
        return row

    def free(self) -> None:
        self.xs = self.final = None


def _partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, weights: torch.Tensor,
                       n_nodes: int, max_iter: int = 256) -> torch.Tensor:
    """Influence on the logits of every column, from the rows computed so far (circuit-tracer's)."""
    a = rows.abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    prod = torch.zeros(n_nodes)
    prod[n_nodes - len(weights):] = weights
    influence = torch.zeros(n_nodes)
    for _ in range(max_iter):
        prod_cols = prod[row_nodes] @ a
        prod = torch.zeros(n_nodes)
        prod[: prod_cols.shape[0]] = prod_cols
        if not prod.any():
            break
        influence += prod
    return influence


def _targets(rm: ReplacementModel, trace: Trace, target, top_logits: int, prompt: str):
    tok = rm.lm.tokenizer
    logits = trace.logits
    if target is None:
        first = int(logits.argmax())
    elif isinstance(target, (int, np.integer)):
        first = int(target)
        if not 0 <= first < logits.shape[0]:
            raise BioLLMError(f"target token id {first} is outside the vocabulary "
                              f"(0..{logits.shape[0] - 1}).")
    else:
        first = label_token(tok, str(target), prompt)
    ids = [first] + [int(t) for t in logits.topk(max(1, top_logits) + 1).indices if int(t) != first]
    ids = ids[:max(1, top_logits)]
    probs = torch.softmax(logits, -1)[ids].cpu()
    labels = [tok.decode([t]) for t in ids]
    return np.array(ids, dtype=np.int64), labels, probs.numpy().astype(np.float32)


def attribute(lm, transcoders, prompt: str | None = None, *, input_ids=None, target=None,
              top_logits: int = 1, max_features: int = 1000, batch_size: int = 32,
              token_genes: list[str] | None = None, merge_genes: bool = False,
              update_interval: int = 4, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, meta: dict | None = None) -> Graph:
    """The attribution graph of the next-token prediction after `prompt` (or `input_ids`).

    `transcoders`: one per layer to replace (a `ReplacementModel` may be given instead, with `lm`
    then ignored). `target`: None (the model's top prediction), a label whose first token is the
    target, or a token id. `token_genes`: the gene of each token ("" for none).
    """
    rm = (transcoders if isinstance(transcoders, ReplacementModel)
          else ReplacementModel(lm, transcoders))
    tok = rm.lm.tokenizer
    if input_ids is None:
        input_ids = tokenize_prompt(tok, prompt or "")
        prompt_text = prompt
    else:
        input_ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long).reshape(-1)
        if len(input_ids) == 0:
            raise BioLLMError("the prompt has no tokens; give a non-empty cell or prompt.")
        prompt_text = prompt if prompt is not None else tok.decode(input_ids.tolist())
    if max_features < 0 or batch_size < 1:
        raise BioLLMError("max_features must be >= 0 and batch_size >= 1.")
    T = len(input_ids)
    genes = list(token_genes) if token_genes is not None else [""] * T
    if len(genes) != T:
        raise BioLLMError(f"token_genes has {len(genes)} entries for {T} tokens.")

    trace = rm.trace(input_ids)
    logit_ids, logit_labels, probs = _targets(rm, trace, target, top_logits, prompt_text)
    K, L = len(logit_ids), rm.n_layers
    n_active = sum(len(lt.positions) for lt in trace.layers)
    n_rows = min(max_features, n_active)
    tracker = ProgressTracker("circuit", total=1 + -(-n_rows // batch_size) + 1,
                              callback=progress, cancel=cancel)
    # The replay holds one copy of the prompt per row of a batch; no more than will be used.
    rows_engine = _Rows(rm, trace, min(batch_size, max(K, n_rows, 1)))
    tracker.update(message="forward pass")
    n_cols = rows_engine.n_cols
    feat_layer = np.concatenate([np.full(len(lt.positions), i) for i, lt in enumerate(trace.layers)]
                                ).astype(int) if n_active else np.zeros(0, int)
    feat_pos = torch.cat([lt.positions for lt in trace.layers]).cpu().numpy()
    feat_id = torch.cat([lt.features for lt in trace.layers]).cpu().numpy()
    enc = [rm.transcoders[i].W_enc.detach().float() if i in rm.transcoders else None
           for i in range(L)]

    unembed = rm.unembed.weight.detach().float()
    rows = torch.zeros(K + n_rows, n_cols)
    row_nodes = torch.zeros(K + n_rows, dtype=torch.long)
    for s in range(0, K, batch_size):
        sel = np.arange(s, min(K, s + batch_size))
        rows[sel] = rows_engine.compute(np.full(len(sel), L), np.full(len(sel), T - 1),
                                        unembed[torch.as_tensor(logit_ids[sel])])
        row_nodes[sel] = torch.as_tensor(n_cols + sel)

    visited = np.zeros(n_active, dtype=bool)
    done = 0
    weights = torch.as_tensor(probs)
    while done < n_rows:
        if n_rows == n_active:
            pending = np.arange(n_active)
        else:
            infl = _partial_influence(rows[:K + done], row_nodes[:K + done], weights, n_cols + K)
            order = torch.argsort(infl[:n_active], descending=True).numpy()
            pending = order[~visited[order]][:min(update_interval * batch_size, n_rows - done)]
            # A batch's backward runs down from its deepest target: batches of one layer
            # (where the group allows) cost about half as much as mixed ones, rows unchanged.
            pending = pending[np.argsort(feat_layer[pending], kind="stable")]
        for s in range(0, len(pending), batch_size):
            idx = pending[s:s + batch_size]
            vecs = torch.stack([enc[feat_layer[j]][feat_id[j]] for j in idx])
            last = done + len(idx) >= n_rows
            r = rows_engine.compute(feat_layer[idx], feat_pos[idx], vecs, retain=not last)
            rows[K + done:K + done + len(idx)] = r
            row_nodes[K + done:K + done + len(idx)] = torch.as_tensor(idx)
            visited[idx] = True
            done += len(idx)
            tracker.update(message=f"{done}/{n_rows} features")
    rows_engine.free()

    selected = np.nonzero(visited)[0]
    selected = selected[np.lexsort((feat_id[selected], feat_pos[selected], feat_layer[selected]))]
    adjacency, bias = _assemble(rm, trace, rows, row_nodes, selected, feat_layer, feat_pos,
                                feat_id, logit_ids, K, n_active, n_cols)
    tracker.update(message="assembled")

    acts = torch.cat([lt.activations for lt in trace.layers]).cpu().numpy()
    pre = torch.cat([lt.preactivations for lt in trace.layers]).cpu().numpy()
    final = trace.final[-1].float()
    lids = torch.as_tensor(logit_ids)
    logit_values = unembed[lids] @ final
    if rm.unembed.bias is not None:
        logit_values = logit_values + rm.unembed.bias.detach().float()[lids]
    tokens = [tok.decode([int(t)]) for t in input_ids]
    graph = Graph(
        prompt=prompt_text or "", input_ids=input_ids.numpy().astype(np.int64), tokens=tokens,
        token_genes=genes, n_layers=L,
        features=np.stack([feat_layer[selected], feat_pos[selected], feat_id[selected]], 1
                          ).astype(np.int64).reshape(-1, 3),
        activations=acts[selected].astype(np.float32),
        preactivations=pre[selected].astype(np.float32),
        input_positions=[[t] for t in range(T)],
        input_labels=[g or t for g, t in zip(genes, tokens)],
        logit_ids=logit_ids, logit_labels=logit_labels, logit_probabilities=probs,
        logit_values=logit_values.cpu().numpy().astype(np.float32), bias=bias,
        adjacency=adjacency, model=str(rm.lm.name),
        dictionaries=[str(getattr(rm.transcoders[i], "path", "") or f"transcoder layer {i}")
                      if i in rm.transcoders else "" for i in range(L)],
        meta={"n_active_features": int(n_active), "max_features": int(max_features),
              **(meta or {})},
    )
    return graph.merge_genes() if merge_genes else graph


@torch.no_grad()
def _constants(rm: ReplacementModel, trace: Trace):
    """Each target's value with every source at zero: the MLP inputs and final state then."""
    T, d = trace.embeds.shape
    dtype = trace.embeds.dtype
    outs = []
    for i in range(rm.n_layers):
        o = torch.zeros(T, d, device=trace.embeds.device, dtype=dtype)
        if i in rm.transcoders:
            o = o + rm.transcoders[i].b_dec.to(dtype)
        outs.append(o[None])
    xs, final = rm.replay(trace, torch.zeros_like(trace.embeds)[None], outs)
    return [x[0].float() for x in xs], final[0].float()


def _assemble(rm, trace, rows, row_nodes, selected, feat_layer, feat_pos, feat_id, logit_ids,
              K, n_active, n_cols):
    """The [N, N] adjacency in graph order and each row's constant term."""
    L, T = rm.n_layers, len(trace.input_ids)
    F = len(selected)
    N = F + L * T + T + K
    # Columns: selected features keep their own; the others fold into their error node.
    col_map = np.empty(n_cols, dtype=np.int64)
    col_map[n_active:] = F + np.arange(n_cols - n_active)
    col_map[:n_active] = F + feat_layer * T + feat_pos
    col_map[selected] = np.arange(F)
    row_of_feature = {int(j): r for r, j in enumerate(row_nodes.tolist()) if r >= K}
    src_rows = [row_of_feature[int(j)] for j in selected] + list(range(K))
    dst_rows = list(range(F)) + list(range(N - K, N))
    adjacency = torch.zeros(N, N)
    cmap = torch.as_tensor(col_map)
    block = torch.zeros(len(src_rows), N)
    block.index_add_(1, cmap, rows[src_rows])
    adjacency[dst_rows] = block

    xs0, final0 = _constants(rm, trace)
    bias = np.zeros(N, dtype=np.float32)
    for r, j in enumerate(selected):
        layer, pos, f = int(feat_layer[j]), int(feat_pos[j]), int(feat_id[j])
        w = rm.transcoders[layer].W_enc.detach().float()[f]
        bias[r] = float(w @ xs0[layer][pos] + rm.encoder_bias(layer)[f])
    unembed = rm.unembed.weight.detach().float()[torch.as_tensor(logit_ids)]
    const = unembed @ final0[-1]
    if rm.unembed.bias is not None:
        const = const + rm.unembed.bias.detach().float()[torch.as_tensor(logit_ids)]
    bias[N - K:] = const.cpu().numpy()
    return adjacency, bias
