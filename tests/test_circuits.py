"""Attribution graphs on tiny real models with random transcoders: exactness, pruning, edits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from biollm_engine.circuits import (Edit, Graph, ReplacementModel, ablation_check, aggregate,
                                    attribute, feature_to_feature_weights, intervene, prune)
from biollm_engine.dictionaries import Dictionary, DictionaryConfig
from biollm_engine.errors import BioLLMError
from biollm_engine.models import capture, load_model, resolve_hookpoint, run_to

# tiny models: a second torch thread only adds waiting on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "CD3E CD3D IL7R MALAT1 RPL13 MS4A1 CD79A NKG7 GNLY The cell type is:"


def make_transcoders(lm, layers=None, latents=96, k=6, skip_layer=None, seed=0):
    torch.manual_seed(seed)
    out = []
    for i in (range(lm.num_layers) if layers is None else layers):
        kind = "skip_transcoder" if i == skip_layer else "transcoder"
        d = Dictionary(DictionaryConfig(kind=kind, activation="topk", d_in=lm.d_model,
                                        num_latents=latents, k=k, hookpoint=f"layers.{i}.mlp.in",
                                        target=f"layers.{i}.mlp.out"))
        with torch.no_grad():
            d.W_dec.normal_(0, 0.1)
            d.b_enc.normal_(0, 0.1)
            d.b_dec.normal_(0, 0.05)
            if d.W_skip is not None:
                d.W_skip.normal_(0, 0.05)
        out.append(d.eval())
    return out


@pytest.fixture(scope="module")
def neox(tiny_model_dirs):
    return load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")


@pytest.fixture(scope="module")
def neox_graph(neox):
    tcs = make_transcoders(neox, skip_layer=1)
    return tcs, attribute(neox, tcs, PROMPT, top_logits=3, batch_size=64)


def true_values(lm, tcs, graph):
    """Pre-activations and pre-softcap logits from a plain forward pass (no freezing)."""
    ids = torch.as_tensor(graph.input_ids)[None]
    names = [f"layers.{i}.mlp.in" for i in range(lm.num_layers)]
    with torch.no_grad(), capture(lm, names, stop=False) as acts:
        hidden = run_to(lm, ids).last_hidden_state
    by_layer = {int(t.cfg.hookpoint.split(".")[1]): t for t in tcs}
    with torch.no_grad():
        pre = np.array([float(by_layer[l].pre_acts(acts[f"layers.{l}.mlp.in"][0, p][None])[0, f])
                        for l, p, f in graph.features])
    logits = lm.model.get_output_embeddings()(hidden[0, -1]).detach().numpy()
    return pre, logits[graph.logit_ids]


def assert_exact(graph, pre, logits):
    a = graph.adjacency.double().numpy()
    F, s = graph.n_features, graph.logit_start
    feat_sum = a[:F].sum(1) + graph.bias[:F]
    logit_sum = a[s:].sum(1) + graph.bias[s:]
    scale = max(1.0, np.abs(pre).max(initial=0), np.abs(logits).max())
    np.testing.assert_allclose(feat_sum, pre, atol=2e-5 * scale)
    np.testing.assert_allclose(logit_sum, logits, atol=2e-5 * scale)
    # Sources have no incoming edges; features only receive edges from earlier layers.
    assert not a[F:s].any()
    for r in range(F):
        layer = graph.features[r, 0]
        src = [c for c in np.nonzero(a[r])[0] if graph.kind(c) in ("feature", "error")]
        assert all(graph.layer_pos(c)[0] < layer for c in src)


def test_every_row_sums_to_its_preactivation_and_logit(neox, neox_graph):
    tcs, g = neox_graph
    assert g.n_features == g.meta["n_active_features"] > 0
    assert g.n_logits == 3 and g.logit_ids[0] == int(np.argmax(
        neox.model(torch.as_tensor(g.input_ids)[None]).logits[0, -1].detach().numpy()))
    pre, logits = true_values(neox, tcs, g)
    np.testing.assert_allclose(g.preactivations, pre, atol=1e-5)
    np.testing.assert_allclose(g.logit_values, logits, atol=1e-5)
    assert_exact(g, pre, logits)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_exact_on_other_architectures(tiny_model_dirs, arch):
    lm = load_model(str(tiny_model_dirs(arch)), device="cpu")
    tcs = make_transcoders(lm, layers=[1])  # layer 0's MLP stays whole, as an error node
    g = attribute(lm, tcs, PROMPT, batch_size=64)
    assert set(g.features[:, 0]) == {1}
    pre, logits = true_values(lm, tcs, g)
    assert_exact(g, pre, logits)


def test_feature_budget_folds_the_rest_into_error_nodes(neox, neox_graph):
    tcs, full = neox_graph
    small = attribute(neox, tcs, PROMPT, max_features=12, top_logits=3, batch_size=4,
                      update_interval=1)
    assert small.n_features == 12 < full.n_features
    pre, logits = true_values(neox, tcs, small)
    assert_exact(small, pre, logits)
    # The first batch is ranked by the logit rows alone: the strongest direct effects.
    direct = full.adjacency[full.logit_start:, : full.n_features].abs().sum(0)
    top = {tuple(full.features[i]) for i in torch.argsort(direct, descending=True)[:4].tolist()}
    assert top <= {tuple(f) for f in small.features}


def test_merged_gene_nodes_keep_rows_exact(neox, neox_graph):
    tcs, g = neox_graph
    words = PROMPT.split()  # the first nine words are genes; map tokens to them by their text
    token_genes, w, acc = [], 0, ""
    for t in g.tokens:
        acc += t.strip()
        token_genes.append(words[w] if w < 9 else "")
        if w < len(words) and acc == words[w]:
            w, acc = w + 1, ""
    merged = dataclasses.replace(g, token_genes=token_genes).merge_genes()
    assert merged.n_inputs < g.n_inputs
    assert set(merged.input_labels) >= set(words[:9])
    cd3e = merged.input_labels.index("CD3E")
    assert merged.input_positions[cd3e] == [i for i, x in enumerate(token_genes) if x == "CD3E"]
    pre, logits = true_values(neox, tcs, merged)
    assert_exact(merged, pre, logits)
    cols = [g.input_start + p for p in merged.input_positions[cd3e]]
    rows_m = list(range(g.n_features)) + list(range(merged.logit_start, merged.n_nodes))
    rows_g = list(range(g.n_features)) + list(range(g.logit_start, g.n_nodes))
    np.testing.assert_allclose(merged.adjacency[rows_m, merged.input_start + cd3e],
                               g.adjacency[rows_g][:, cols].sum(1), atol=1e-6)


def _influence_exact(g):
    """Node influence by solving (I - A)^T x = w with the dense inverse."""
    a = g.adjacency.double().abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    w = g.logit_weights().double()
    n = a.shape[0]
    total = w @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - a)
    return (total - w).numpy()


@pytest.mark.parametrize("node_t,edge_t", [(0.5, 0.9), (0.8, 0.98), (0.95, 0.99)])
def test_pruning_keeps_the_stated_share_of_influence(neox_graph, node_t, edge_t):
    _, g = neox_graph
    pg = prune(g, node_t, edge_t)
    infl = _influence_exact(g)
    np.testing.assert_allclose(pg.node_influence, infl, rtol=1e-4, atol=1e-7)
    middle = np.arange(g.input_start)
    kept = infl[middle][pg.node_mask[middle]].sum() / infl[middle].sum()
    assert kept >= node_t - 1e-6
    assert pg.kept_influence == pytest.approx(kept, rel=1e-5)
    assert pg.kept_edge_score >= edge_t - 1e-6
    assert pg.node_mask[g.input_start:].all()
    assert pg.node_mask[middle].sum() < len(middle)
    # Kept edges join kept nodes only, and every kept feature has an edge in and out.
    t, s = np.nonzero(pg.edge_mask)
    assert pg.node_mask[t].all() and pg.node_mask[s].all()
    for i in np.nonzero(pg.node_mask[: g.n_features])[0]:
        assert pg.edge_mask[:, i].any() and pg.edge_mask[i].any()


def test_thresholds_adjust_without_rebuilding(neox_graph):
    _, g = neox_graph
    before = g.adjacency.clone()
    loose, tight = prune(g, 0.95, 0.99), prune(g, 0.5, 0.9)
    assert torch.equal(g.adjacency, before)
    assert tight.node_mask.sum() < loose.node_mask.sum()
    assert not (tight.node_mask & ~loose.node_mask).any()
    with pytest.raises(BioLLMError):
        prune(g, 1.5)


def _hooked_logits(lm, tcs, ids, edits):
    """A plain forward where hooks add each edit's decoder change to the real MLP output."""
    by_layer = {int(t.cfg.hookpoint.split(".")[1]): t for t in tcs}
    handles, xs = [], {}
    for layer in {e.layer for e in edits}:
        tc = by_layer[layer]
        hp_in = resolve_hookpoint(lm, f"layers.{layer}.mlp.in")
        hp_out = resolve_hookpoint(lm, f"layers.{layer}.mlp.out")

        def pre(_m, args, layer=layer):
            xs[layer] = args[0]

        def post(_m, _a, y, layer=layer, tc=tc):
            x = xs[layer][0]
            acts = tc.encode(x)
            recon = tc.decode(acts) + (x @ tc.W_skip.T if tc.W_skip is not None else 0)
            y = y.clone()
            for e in edits:
                if e.layer != layer:
                    continue
                if e.feature is None:
                    y[0, e.pos] += (e.value - 1.0) * (y[0, e.pos] - recon[e.pos])
                else:
                    a = acts[e.pos, e.feature]
                    new = {"ablate": 0.0, "scale": a * e.value, "clamp": e.value}[e.mode]
                    y[0, e.pos] += (new - a) * tc.W_dec[e.feature]
            return y

        handles += [hp_in.module.register_forward_pre_hook(pre),
                    hp_out.module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            return lm.model(ids[None]).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def test_interventions_equal_a_forward_with_the_same_edits(neox, neox_graph):
    tcs, g = neox_graph
    rm = ReplacementModel(neox, tcs)
    l1 = g.features[g.features[:, 0] == 1]
    edits = [Edit(0, 3, int(g.features[0, 2]) if g.features[0, 1] == 3 else 5, "ablate"),
             Edit(0, 5, None, "scale", 0.0), Edit(1, int(l1[0, 1]), int(l1[0, 2]), "scale", 3.0),
             Edit(1, 2, 7, "clamp", 4.0)]
    ids = torch.as_tensor(g.input_ids)
    res = intervene(rm, ids, edits, labels=["B cell", "NK cell", "T cell"])
    want = _hooked_logits(neox, tcs, ids, edits)
    assert res.target_logit_after == pytest.approx(float(want[res.target_id]), abs=1e-4)
    assert res.prediction_id == int(want.argmax())
    base = neox.model(ids[None]).logits[0, -1].detach()
    assert res.target_logit_before == pytest.approx(float(base[res.target_id]), abs=1e-5)
    p = torch.softmax(want, -1)
    from biollm_engine.circuits import label_token
    lids = [label_token(neox.tokenizer, lab, g.prompt) for lab in res.labels]
    np.testing.assert_allclose(res.prob_after, p[lids].numpy(), atol=1e-6)
    assert res.prob_change.shape == (3,)
    with pytest.raises(BioLLMError):
        intervene(rm, ids, [Edit(5, 0, 1)])
    with pytest.raises(BioLLMError):
        intervene(rm, ids, [Edit(0, 0, None, "clamp", 1.0)])


def test_frozen_ablation_equals_attribution(neox, neox_graph):
    tcs, g = neox_graph
    df = ablation_check(ReplacementModel(neox, tcs), g, top=6)
    assert len(df) == 6
    np.testing.assert_allclose(df.frozen_effect, df.attribution, atol=1e-4)
    assert (df.live_effect != df.frozen_effect).any()


def test_feature_to_feature_weights_are_the_same_position_edges(neox, neox_graph):
    tcs, g = neox_graph
    rm = ReplacementModel(neox, tcs)
    w = feature_to_feature_weights(tcs[0], tcs[1], neox)
    assert w.shape == (96, 96)
    trace = rm.trace(g.input_ids)
    norm = neox.module(f"{neox.arch.layers}.1.{neox.arch.norms['mlp_in']}")
    scale = trace.frozen.scales[norm][0, :, 0]
    checked = 0
    # Pythia's parallel block: layer 1's MLP reads layer 0's MLP only through the residual
    # stream at the same position, scaled by that token's norm scale.
    for t in np.nonzero(g.features[:, 0] == 1)[0]:
        for s in np.nonzero((g.features[:, 0] == 0) & (g.features[:, 1] == g.features[t, 1]))[0]:
            want = g.activations[s] * float(scale[g.features[t, 1]]) * float(
                w[g.features[s, 2], g.features[t, 2]])
            assert float(g.adjacency[t, s]) == pytest.approx(want, rel=1e-3, abs=1e-6)
            checked += 1
    assert checked > 10
    with pytest.raises(BioLLMError):
        feature_to_feature_weights(tcs[1], tcs[0], neox)


def test_graph_save_load_round_trip(neox_graph, tmp_path):
    _, g = neox_graph
    g.meta["cell"] = 3
    path = g.save(tmp_path / "g.safetensors")
    h = Graph.load(path)
    assert torch.equal(h.adjacency, g.adjacency)
    for name in ("input_ids", "features", "activations", "bias", "logit_ids", "logit_values"):
        np.testing.assert_array_equal(getattr(h, name), getattr(g, name))
    assert (h.tokens, h.logit_labels, h.meta) == (g.tokens, g.logit_labels, g.meta)
    assert h.prompt == g.prompt and h.input_positions == g.input_positions
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BioLLMError):
        Graph.load(bad)
    with pytest.raises(BioLLMError):
        Graph.load(tmp_path / "missing.safetensors")


def test_bad_transcoders_are_refused(neox):
    wrong = make_transcoders(neox, layers=[0])[0]
    wrong.cfg.target = "layers.0.attn.out"
    with pytest.raises(BioLLMError, match="mlp.out"):
        ReplacementModel(neox, [wrong])
    with pytest.raises(BioLLMError, match="two transcoders"):
        ReplacementModel(neox, make_transcoders(neox, layers=[0]) * 2)
    with pytest.raises(BioLLMError, match="empty"):
        attribute(neox, make_transcoders(neox), "  ")


def test_aggregate_keeps_recurring_nodes(neox):
    tcs = make_transcoders(neox, latents=48, k=3)
    prompts = ["CD3E CD3D IL7R LTB The cell type is:", "CD3D CD3E LTB IL7R The cell type is:",
               "CD3E IL7R CCR7 CD3D The cell type is:"]
    graphs = [attribute(neox, tcs, p, batch_size=64) for p in prompts]
    agg = aggregate(graphs, min_fraction=1.0)
    some = aggregate(graphs, min_fraction=0.3)
    assert agg.n_graphs == 3 and (agg.counts == 3).all()
    assert set(agg.keys) <= set(some.keys) and len(some.keys) > len(agg.keys)
    assert ("logit", graphs[0].logit_labels[0].strip()) in some.keys
    for s, t, w, c in agg.edges():
        assert c == 3 and w != 0 and agg.counts[s] == agg.counts[t] == 3
    with pytest.raises(BioLLMError):
        aggregate([])


def test_progress_reports_and_cancel(neox):
    from biollm_engine.progress import CancelToken, Cancelled

    tcs = make_transcoders(neox, latents=32, k=2)
    seen = []
    g = attribute(neox, tcs, "CD3E CD3D", batch_size=4, progress=seen.append)
    assert seen and seen[-1].task == "circuit" and seen[-1].step == seen[-1].total
    assert g.n_features == g.meta["n_active_features"]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        attribute(neox, tcs, "CD3E CD3D", batch_size=4, cancel=token)


def test_hooks_leave_other_threads_alone(neox):
    import threading

    rm = ReplacementModel(neox, make_transcoders(neox, layers=[0]))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        clean = neox.model(ids).logits
        seen = {}
        with rm.mlp_hooks(lambda i, x: None, lambda i, out: out * 0):
            t = threading.Thread(target=lambda: seen.setdefault("other", neox.model(ids).logits))
            t.start()
            t.join()
            mine = neox.model(ids).logits
    assert torch.equal(seen["other"], clean)
    assert not torch.allclose(mine, clean)
