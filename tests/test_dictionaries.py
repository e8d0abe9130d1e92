"""Dictionaries on real activations: every kind and activation learns, and its encode /
encode_sparse / decode / forward agree with each other and with the sparse kernels' maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biollm_engine.dictionaries import Dictionary, DictionaryConfig
from biollm_engine.dictionaries.kernels import gather_linear, sparse_decode
from biollm_engine.errors import BioLLMError
from biollm_engine.training.step import TrainStep


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cell_sentences(adata, n_cells: int = 120, n_genes: int = 24) -> list[str]:
    """Cell sentences: each cell's genes ranked by expression (log-normalized raw matrix)."""
    X = adata.raw.X if adata.raw is not None else adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    genes = np.asarray(adata.raw.var_names if adata.raw is not None else adata.var_names)
    order = np.argsort(-X[:n_cells], axis=1, kind="stable")[:, :n_genes]
    return [" ".join(genes[row]) for row in order]


def capture_activations(model_dir, texts) -> dict[str, torch.Tensor]:
    """Residual stream after layer 0 and 1, and layer 1's MLP input and output, per token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    layers = model.gpt_neox.layers
    store: dict[str, list] = {k: [] for k in ("layers.0", "layers.1", "mlp.in", "mlp.out")}
    def keep(name, which="output"):
        def hook(module, args, output):
            t = args[0] if which == "input" else output
            store[name].append(t[0] if isinstance(t, tuple) else t)
        return hook

    hooks = [layers[0].register_forward_hook(keep("layers.0")),
             layers[1].register_forward_hook(keep("layers.1")),
             layers[1].mlp.register_forward_hook(keep("mlp.in", "input")),
             layers[1].mlp.register_forward_hook(keep("mlp.out"))]
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        torch.set_num_threads(threads)
        for h in hooks:
            h.remove()
    real = enc.attention_mask.bool()
    return {k: v[0][real].float() for k, v in store.items()}


@pytest.fixture(scope="module")
def acts(tiny_model_dirs, pbmc):
    return capture_activations(tiny_model_dirs("gpt_neox"), cell_sentences(pbmc))


def train(d: Dictionary, x, y=None, steps: int = 80, batch: int = 256, lr: float = 4e-3):
    step = TrainStep(d, lr=lr, warmup_steps=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (batch,), generator=g)
        m = step.step(x[i], None if y is None else y[i])
    return m


CASES = [("sae", "topk"), ("sae", "batchtopk"), ("sae", "jumprelu"), ("sae", "relu"),
         ("transcoder", "topk"), ("skip_transcoder", "topk"), ("transcoder", "jumprelu"),
         ("crosscoder", "topk"), ("crosscoder", "batchtopk")]


@pytest.mark.parametrize("kind,activation", CASES)
def test_each_kind_learns_real_activations(acts, kind, activation):
    torch.manual_seed(0)
    x, y = acts["layers.1"], None
    kw = dict(kind=kind, activation=activation, d_in=64, num_latents=256, k=8)
    if kind in ("transcoder", "skip_transcoder"):
        x, y = acts["mlp.in"], acts["mlp.out"]
    if kind == "crosscoder":
        x = torch.stack([acts["layers.0"], acts["layers.1"]], 1)
        kw["sources"] = ["layers.0", "layers.1"]
    d = Dictionary(DictionaryConfig(**kw))
    held_out = slice(x.shape[0] - 512, None)
    with torch.no_grad():
        before = float(d(x[held_out], None if y is None else y[held_out]).fvu)
    train(d, x[:-512], None if y is None else y[:-512])
    d.eval()
    with torch.no_grad():
        out = d(x[held_out], None if y is None else y[held_out])
    assert float(out.fvu) < 0.35 < before, (before, float(out.fvu))
    l0 = float((out.latent_acts > 0).sum(1).float().mean())
    if activation == "topk":
        assert l0 <= 8
    else:
        assert 0 < l0 < 64
    if kind in ("sae", "crosscoder"):
        norms = d._W_dec().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_encode_decode_forward_agree(acts):
    torch.manual_seed(1)
    x = acts["layers.1"][:300]
    d = Dictionary(DictionaryConfig(d_in=64, num_latents=128, k=6)).eval()
    d.b_dec.data.normal_()
    d.b_enc.data.normal_(std=0.1)
    vals, idx = d.encode_sparse(x)
    z = d.encode(x)
    assert vals.shape == idx.shape == (300, 6)
    assert torch.all(vals[:, :-1] >= vals[:, 1:])  # largest first
    assert torch.equal(torch.zeros_like(z).scatter(1, idx, vals), z)
    assert int((z > 0).sum(1).max()) <= 6
    # encode is top-k of relu((x - b_dec) W_enc^T + b_enc)
    pre = (x - d.b_dec) @ d.W_enc.T + d.b_enc
    ref = pre.topk(6, dim=1)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(vals, ref.values.relu(), atol=1e-5)
    with torch.no_grad():
        out = d(x)
        assert torch.allclose(d.decode(z), d.decode_sparse(vals, idx), atol=1e-5)
        assert torch.allclose(out.out, d.decode(z), atol=1e-5)
    # leading dimensions are kept: [batch, seq, d]
    assert d.encode(x.reshape(3, 100, 64)).shape == (3, 100, 128)


def test_skip_transcoder_adds_linear_term(acts):
    torch.manual_seed(2)
    x, y = acts["mlp.in"][:200], acts["mlp.out"][:200]
    d = Dictionary(DictionaryConfig(kind="skip_transcoder", d_in=64, num_latents=128, k=6))
    d.W_skip.data.normal_(std=0.1)
    d.W_dec.data.normal_(std=0.1)
    with torch.no_grad():
        out = d(x, y)
        expect = d.decode(d.encode(x)) + x @ d.W_skip.T
    assert torch.allclose(out.out, expect, atol=1e-5)
    with pytest.raises(BioLLMError, match="needs its target"):
        d(x)


def test_sparse_kernels_match_dense_autograd():
    torch.manual_seed(3)
    N, D, L, k = 12, 7, 20, 4
    x = torch.randn(N, D, dtype=torch.float64)
    W = torch.randn(L, D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(L, dtype=torch.float64, requires_grad=True)
    b_sub = torch.randn(D, dtype=torch.float64, requires_grad=True)
    Wd = torch.randn(L, D, dtype=torch.float64, requires_grad=True)
    pre = ((x - b_sub) @ W.T + b).detach()
    idx = pre.topk(k, dim=1).indices
    g = torch.randn(N, D, dtype=torch.float64)

    vals = gather_linear(x, b_sub, W, b, pre, idx).relu()
    (sparse_decode(vals, idx, Wd) * g).sum().backward()
    ours = [t.grad.clone() for t in (W, b, b_sub, Wd)]
    for t in (W, b, b_sub, Wd):
        t.grad = None
    dense = ((x - b_sub) @ W.T + b).gather(1, idx).relu()
    z = torch.zeros(N, L, dtype=torch.float64).scatter(1, idx, dense)
    ((z @ Wd) * g).sum().backward()
    for a, ref in zip(ours, (W.grad, b.grad, b_sub.grad, Wd.grad)):
        assert torch.allclose(a, ref, atol=1e-10)
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda xx, vv: sparse_decode(vv, idx, Wd.detach()) + gather_linear(
            xx, None, W.detach(), b.detach(), (xx @ W.T + b).detach(), idx).sum(),
        (xr, torch.rand(N, k, dtype=torch.float64, requires_grad=True)))


def test_batchtopk_keeps_k_per_token_on_average_and_learns_a_threshold(acts):
    torch.manual_seed(4)
    x = acts["layers.1"]
    d = Dictionary(DictionaryConfig(activation="batchtopk", d_in=64, num_latents=256, k=8))
    train(d, x, steps=40)
    d.train()
    with torch.no_grad():
        out = d(x[:256])
    assert int((out.latent_acts > 0).sum()) == 8 * 256  # exactly k·N over the batch
    assert float(d.threshold) > 0
    d.eval()
    l0 = float((d.encode(x[:1024]) > 0).sum(1).float().mean())
    assert 2 < l0 < 32  # the inference threshold gives about k per token


def test_crosscoder_relative_decoder_norms_tell_sources_apart(acts):
    torch.manual_seed(5)
    a = acts["layers.1"]
    # source b carries a tenth of source a: every latent's decoder should be 10x weaker there
    x = torch.stack([a, 0.1 * a], 1)
    d = Dictionary(DictionaryConfig(kind="crosscoder", d_in=64, num_latents=128, k=8,
                                    sources=["base:layers.1", "c2s:layers.1"]))
    rel0 = d.relative_decoder_norms()
    assert d.decoder_norms().shape == (128, 2)
    train(d, x, steps=80)
    rel = d.relative_decoder_norms()
    fired = (d.encode(x[:2000]) > 0).any(0)
    # they start shared (about 0.5) and move towards 0.1 / 1.1 = 0.09
    assert float(rel0[fired].median()) > 0.4
    assert float(rel[fired].median()) < 0.35
    with pytest.raises(BioLLMError, match="expects"):
        d.encode(a)


def test_bad_configs_and_shapes_are_one_line_errors():
    for kw in (dict(kind="nope", d_in=4, num_latents=8), dict(d_in=0, num_latents=8),
               dict(d_in=4, num_latents=8, k=9), dict(kind="crosscoder", d_in=4, num_latents=8,
                                                        k=2, sources=["a"]),
               dict(kind="sae", d_in=4, d_out=5, num_latents=8, k=2)):
        with pytest.raises(BioLLMError) as e:
            DictionaryConfig(**kw)
        assert "\n" not in str(e.value)
    d = Dictionary(DictionaryConfig(d_in=8, num_latents=16, k=2))
    with pytest.raises(BioLLMError, match="shape"):
        d.encode(torch.randn(3, 9))
