"""Encoding real model activations: from the activation cache and live, the same features."""

import numpy as np
import pandas as pd
import pytest
import torch

from biollm_engine.analysis.encode import encode_activations, encode_cache, encode_live
from biollm_engine.analysis.pipeline import analyze
from biollm_engine.cache import ActivationCache
from biollm_engine.dictionaries.config import DictionaryConfig
from biollm_engine.dictionaries.dictionary import Dictionary
from biollm_engine.errors import BioLLMError
from biollm_engine.harvest import HarvestConfig, harvest
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from biollm_engine.models import load_model

CELLS = np.arange(0, 700, 25)  # 28 cells of every type


@pytest.fixture(scope="module")
def setup(tiny_model_dirs, pbmc_h5ad, tmp_path_factory):
    lm = load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")
    ds = CellDataset(pbmc_h5ad, CellSentenceConfig(layer="raw", top_k=20, template="sentence"))
    torch.manual_seed(0)
    d = Dictionary(DictionaryConfig(kind="sae", activation="topk", d_in=64, num_latents=48, k=6,
                                    hookpoint="layers.1")).eval()
    cache = harvest(lm, ds.examples(lm.tokenizer, indices=CELLS),
                    HarvestConfig(hookpoints=["layers.1"], batch_size=4, shard_tokens=300,
                                  store_dtype="float32"),
                    tmp_path_factory.mktemp("cache"), meta={"units": ds.genes})
    return lm, ds, d, cache


def test_sparse_encoding_equals_the_dictionary_dense_encoding(setup):
    _, _, d, cache = setup
    x = cache.read("layers.1", 0, 500)
    m = encode_activations(d, x, batch_size=128)
    np.testing.assert_array_equal(m.toarray(), d.encode(x).numpy())
    assert m.dtype == np.float32 and (m.getnnz(axis=1) <= 6).all()


def test_cache_stream_equals_live_encoding(setup):
    lm, ds, d, cache = setup
    kw = dict(genes=ds.genes, obs=ds.obs, obs_keys=["bulk_labels"], tokenizer=lm.tokenizer,
              top_n=5)
    from_cache = analyze(encode_cache(cache, d, chunk_tokens=97), 48,
                         sources=ActivationCache(cache.dir).sources(), **kw)
    live = analyze(encode_live(lm, ds.examples(lm.tokenizer, indices=CELLS), d, batch_size=4),
                   48, **kw)
    assert from_cache.stats.num_tokens == cache.num_tokens == live.stats.num_tokens
    pd.testing.assert_frame_equal(from_cache.table.df, live.table.df, rtol=1e-5)
    np.testing.assert_allclose(from_cache.stats.cell_max.toarray(),
                               live.stats.cell_max.toarray(), rtol=1e-5)
    # cells outside the harvest have no activations; harvested ones do
    active = np.flatnonzero(from_cache.stats.cell_tokens)
    np.testing.assert_array_equal(active, CELLS)
    assert from_cache.table.df["top_context"].str.contains(r"\[").any()


def test_dictionary_that_does_not_fit_is_refused(setup):
    lm, ds, _, cache = setup
    narrow = Dictionary(DictionaryConfig(kind="sae", d_in=32, num_latents=8, k=2,
                                         hookpoint="layers.1"))
    with pytest.raises(BioLLMError, match="width"):
        next(encode_cache(cache, narrow))
    with pytest.raises(BioLLMError, match="width"):
        next(encode_live(lm, ds.examples(lm.tokenizer, indices=[0]), narrow))
    other = Dictionary(DictionaryConfig(kind="sae", d_in=64, num_latents=8, k=2,
                                        hookpoint="layers.0"))
    with pytest.raises(BioLLMError, match="hookpoint 'layers.0' is not in the cache"):
        next(encode_cache(cache, other))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk", "batchtopk", "untrained"])
def test_chosen_features_equal_those_columns_of_the_full_encoding(setup, activation):
    """Tracks encode only the features they draw; each rule must give the full encoding's
    values for them (BatchTopK before training picks over the batch, so it encodes all)."""
    from biollm_engine.analysis.encode import FeatureEncoder

    lm, ds, _, cache = setup
    x = cache.read("layers.1", 0, 400)
    torch.manual_seed(3)
    kind = "batchtopk" if activation == "untrained" else activation
    d = Dictionary(DictionaryConfig(kind="sae", activation=kind, d_in=64, num_latents=48, k=6,
                                    hookpoint="layers.1")).eval()
    with torch.no_grad():  # thresholds where some of these tokens pass
        pre = d.pre_acts(x)
        if activation == "jumprelu":
            d.threshold.copy_(torch.quantile(pre, 0.8, dim=0))
        if activation == "batchtopk":
            d.threshold.fill_(float(torch.quantile(pre, 0.9)))
    feats = [7, 2, 40, 0]
    enc = FeatureEncoder(d, feats)
    assert enc.elementwise == (activation in ("relu", "jumprelu", "batchtopk"))
    full = encode_activations(d, x, batch_size=len(x))[:, feats].toarray()
    mine = enc(x).numpy()
    assert mine.dtype == np.float32 and mine.shape == (400, 4)
    np.testing.assert_array_equal(mine > 0, full > 0)
    np.testing.assert_allclose(mine, full, rtol=1e-5, atol=1e-6)
    assert (full > 0).any()
    live = list(encode_live(lm, ds.examples(lm.tokenizer, indices=CELLS[:6]), d, batch_size=3,
                            features=feats))
    whole = list(encode_live(lm, ds.examples(lm.tokenizer, indices=CELLS[:6]), d, batch_size=3))
    for a, b in zip(live, whole):
        np.testing.assert_allclose(a.acts.toarray(), b.acts[:, feats].toarray(), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(BioLLMError, match="feature 48 is out of range"):
        next(encode_live(lm, ds.examples(lm.tokenizer, indices=[0]), d, features=[1, 48]))


def test_read_ahead_keeps_order_raises_errors_and_stops_the_worker_early():
    from biollm_engine.analysis.encode import read_ahead

    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield from range(3)
        raise BioLLMError("window 3 is unreadable")

    got = []
    with pytest.raises(BioLLMError, match="window 3"):
        for x in read_ahead(failing()):
            got.append(x)
    assert got == [0, 1, 2]

    made, closed = [], []

    def endless():
        try:
            for i in range(10**6):
                made.append(i)
                yield i
        finally:
            closed.append(True)

    ahead = read_ahead(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()  # the caller stops: the worker stops and closes its source
    assert closed == [True] and len(made) <= 5


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk", "batchtopk", "untrained"])
def test_firing_counts_equal_the_counts_of_the_live_chunks(setup, activation):
    """`--top` picks features by these counts, made without sparse chunks; they must be the
    chunks' own counts for every rule (padded batches of cell sentences of several lengths)."""
    from biollm_engine.analysis.encode import firing_counts

    lm, ds, _, cache = setup
    torch.manual_seed(5)
    kind = "batchtopk" if activation == "untrained" else activation
    d = Dictionary(DictionaryConfig(kind="sae", activation=kind, d_in=64, num_latents=48, k=6,
                                    hookpoint="layers.1")).eval()
    with torch.no_grad():
        pre = d.pre_acts(cache.read("layers.1", 0, 400))
        if activation == "jumprelu":  # some thresholds below zero
            d.threshold.copy_(torch.quantile(pre, 0.8, dim=0))
            d.threshold[:8] = -0.5
        if activation == "batchtopk":
            d.threshold.fill_(float(torch.quantile(pre, 0.9)))
    examples = list(ds.examples(lm.tokenizer, indices=CELLS[:9]))
    assert len({len(e.input_ids) for e in examples}) > 1
    counts = firing_counts(lm, examples, d, batch_size=4)
    chunks = list(encode_live(lm, examples, d, batch_size=4))
    expected = sum(np.bincount(c.acts.indices, minlength=48) for c in chunks)
    assert counts.dtype == np.int64 and counts.any()
    np.testing.assert_array_equal(counts, expected)


def test_dense_to_csr_is_scipys_csr_of_the_same_array():
    import scipy.sparse as sp

    from biollm_engine.analysis.encode import dense_to_csr

    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 7)).astype(np.float32)
    a[rng.random(a.shape) < 0.7] = 0
    a[3, 2], a[4, 0], a[5, 6], a[6] = -0.0, np.nan, np.inf, 0  # signed zero, NaN, an empty row
    for m in (a, a[:0], np.zeros((4, 3), np.float32)):
        mine, ref = dense_to_csr(m), sp.csr_matrix(m)
        assert mine.shape == ref.shape and mine.dtype == np.float32
        np.testing.assert_array_equal(mine.indptr, ref.indptr)
        np.testing.assert_array_equal(mine.indices, ref.indices)
        np.testing.assert_array_equal(mine.data, ref.data)  # NaN equals NaN here
