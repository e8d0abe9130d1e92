"""Feature statistics equal a direct dense computation, whatever the chunking."""

import math
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from biollm_engine.analysis import stats as stats_module
from biollm_engine.analysis.association import associate
from biollm_engine.analysis.chunks import TokenSources, chunked
from biollm_engine.analysis.genes import top_genes
from biollm_engine.analysis.stats import (HIST_EDGES, FeatureStats, StatsConfig, feature_stats,
                                          stats_threads)
from biollm_engine.analysis.topk import grouped_topk
from biollm_engine.errors import BioLLMError


def make_tokens(rng, n_cells=12, n_genes=9, n_features=7, density=0.3, prompt=2, ties=False):
    """Cells of random length: `prompt` prompt tokens (unit -1) then gene tokens."""
    record, position, unit = [], [], []
    for r in range(n_cells):
        length = int(rng.integers(prompt, prompt + 8))
        record += [r] * length
        position += list(range(length))
        unit += [-1] * prompt + list(rng.integers(0, n_genes, length - prompt))
    n = len(record)
    dense = rng.exponential(1.0, (n, n_features)).astype(np.float32)
    if ties:
        dense = np.round(dense * 2) / 2
    dense[rng.random((n, n_features)) > density] = 0
    src = TokenSources(record, position, rng.integers(0, 50, n), unit)
    return dense, src


def dense_reference(dense, src, n_cells, n_genes):
    F = dense.shape[1]
    gene_tok = src.unit >= 0
    cell_max = np.zeros((n_cells, F), np.float32)
    cell_mean = np.zeros((n_cells, F), np.float32)
    for r in range(n_cells):
        rows = dense[(src.record == r) & gene_tok]
        if len(rows):
            cell_max[r] = rows.max(0)
            cell_mean[r] = rows.mean(0)
    unit_sum = np.stack([dense[src.unit == g].sum(0) for g in range(n_genes)])
    unit_fires = np.stack([(dense[src.unit == g] != 0).sum(0) for g in range(n_genes)])
    return dict(freq=(dense != 0).mean(0), mean=dense.mean(0), max=dense.max(0),
                cell_max=cell_max, cell_mean=cell_mean, unit_sum=unit_sum, unit_fires=unit_fires)


def assert_canonical(m):
    # column indices sorted and unique in every row: what scipy, h5py writers and the GUI expect
    for i in range(m.shape[0]):
        assert (np.diff(m.indices[m.indptr[i]:m.indptr[i + 1]]) > 0).all()


def check_equal(res, ref, dense):
    for m in (res.cell_max, res.cell_mean, res.unit_sum, res.unit_fires):
        assert_canonical(m)
    np.testing.assert_allclose(res.frequency, ref["freq"])
    np.testing.assert_allclose(res.mean, ref["mean"], rtol=1e-6)
    np.testing.assert_array_equal(res.act_max, ref["max"])
    np.testing.assert_array_equal(res.cell_max.toarray(), ref["cell_max"])
    np.testing.assert_allclose(res.cell_mean.toarray(), ref["cell_mean"], rtol=1e-6)
    np.testing.assert_allclose(res.unit_sum.toarray(), ref["unit_sum"], rtol=1e-6)
    np.testing.assert_array_equal(res.unit_fires.toarray(), ref["unit_fires"])
    for f in range(dense.shape[1]):
        col = dense[:, f]
        nz = col[col != 0]
        expect = np.bincount(np.searchsorted(HIST_EDGES, nz, side="right"),
                             minlength=res.hist.shape[1])
        np.testing.assert_array_equal(res.hist[f], expect)
        # top tokens: largest values first, ties to the earlier token
        order = np.lexsort((np.arange(len(col)), -col))
        order = order[col[order] != 0][: res.top_token_ids.shape[1]]
        got = res.top_token_ids[f][res.top_token_ids[f] >= 0]
        np.testing.assert_array_equal(got, order)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 40), ties=st.booleans(),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), threads=st.sampled_from([1, 2, 3]),
       thread_nnz=st.sampled_from([0, 1 << 16]))
def test_streaming_stats_equal_dense_computation(seed, chunk, ties, density, threads,
                                                 thread_nnz):
    rng = np.random.default_rng(seed)
    dense, src = make_tokens(rng, density=density, ties=ties)
    ref = dense_reference(dense, src, 12, 9)
    cfg = StatsConfig(top_tokens=4, threads=threads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats_module, "THREAD_NNZ", thread_nnz)
        streamed = feature_stats(chunked(dense, src, chunk), 7, cfg, num_cells=12, num_units=9)
        check_equal(streamed, ref, dense)
        whole = feature_stats(chunked(dense, src, len(src)), 7, cfg, num_cells=12, num_units=9)
        check_equal(whole, ref, dense)


@pytest.mark.parametrize("threads", [(1, 1), (3, 3), (2, 1)])
def test_merged_shards_equal_one_pass(threads):
    rng = np.random.default_rng(3)
    dense, src = make_tokens(rng, n_cells=30)
    chunks = list(chunked(dense, src, 17))
    a, b = (FeatureStats(7, StatsConfig(top_tokens=5, threads=t)) for t in threads)
    for i, c in enumerate(chunks):
        (a if i % 2 else b).update(c)
    a.merge(b)
    merged = a.result(30, 9)
    check_equal(merged, dense_reference(dense, src, 30, 9), dense)


def test_tokens_out_of_record_order_equal_dense_computation():
    # the fast path holds back each chunk's last cell; interleaved records take the sorted path
    rng = np.random.default_rng(5)
    dense, src = make_tokens(rng, n_cells=20, density=0.4)
    order = rng.permutation(len(src))
    dense, src = dense[order], src[order]
    res = feature_stats(chunked(dense, src, 11), 7, StatsConfig(top_tokens=3), num_cells=20,
                        num_units=9)
    check_equal(res, dense_reference(dense, src, 20, 9), dense)


def test_gene_rows_on_two_threads_in_many_batches_equal_dense_computation(monkeypatch):
    # every chunk is shared by two threads (token slices), per-gene sums in batches (here of a
    # few dozen non-zeros, each reduced in two ranges of genes on the two threads) combined as
    # they grow; accumulators merged part-way keep their batches too
    monkeypatch.setattr(stats_module, "THREAD_NNZ", 0)
    rng = np.random.default_rng(11)
    dense, src = make_tokens(rng, n_cells=40, density=0.5)
    ref = dense_reference(dense, src, 40, 9)
    cfg = StatsConfig(top_tokens=3, gene_batch=40, threads=2)
    check_equal(feature_stats(chunked(dense, src, 7), 7, cfg, num_cells=40, num_units=9), ref,
                dense)
    chunks = list(chunked(dense, src, 5))
    a, b = FeatureStats(7, cfg), FeatureStats(7, cfg)
    for i, c in enumerate(chunks):
        (a if i < len(chunks) // 2 else b).update(c)
    a.merge(b)
    check_equal(a.result(40, 9), ref, dense)


def assert_identical(a, b):
    for name, x in vars(a).items():
        y = getattr(b, name)
        if sp.issparse(x):
            for part in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_lagging_threads_give_bit_identical_results_run_after_run(monkeypatch):
    # threads may lag the caller by a chunk and finish in any order from run to run; every
    # number must come out exactly as on one thread, each time
    monkeypatch.setattr(stats_module, "THREAD_NNZ", 0)
    rng = np.random.default_rng(13)
    dense, src = make_tokens(rng, n_cells=40, n_features=70, density=0.3)

    def run(threads):
        cfg = StatsConfig(top_tokens=3, gene_batch=90, threads=threads)
        return feature_stats(chunked(dense, src, 9), 70, cfg, num_cells=40, num_units=9)

    one = run(1)
    for _ in range(3):
        assert_identical(one, run(3))


@pytest.mark.parametrize("gene_batch", [1 << 22, 60])
def test_any_thread_count_gives_bit_identical_results(monkeypatch, gene_batch):
    # 1-4 threads, every chunk shared out (tokens in slices that begin where a cell does: cells
    # straddle chunks and the lanes that hold them; gene reductions by ranges of genes), with
    # sums in float64 over values of all magnitudes and tied top values: every array of the
    # result is the one-thread one, bit for bit, and equals the dense computation
    monkeypatch.setattr(stats_module, "THREAD_NNZ", 0)
    rng = np.random.default_rng(17)
    dense, src = make_tokens(rng, n_cells=60, n_genes=11, n_features=300, density=0.25,
                             ties=True)
    dense *= (10.0 ** rng.integers(-6, 6, dense.shape)).astype(np.float32)
    ref = dense_reference(dense, src, 60, 11)

    def run(threads, chunk):
        cfg = StatsConfig(top_tokens=4, gene_batch=gene_batch, threads=threads)
        acc = FeatureStats(300, cfg)
        assert acc.threads == threads
        for c in chunked(dense, src, chunk):
            acc.update(c)
        return acc.result(60, 11)

    for chunk in (len(src), 37, 13, 5):
        one = run(1, chunk)
        if gene_batch > dense.size:  # one gene batch: any chunking adds in token order
            check_equal(one, ref, dense)
            assert_identical(run(1, len(src)), one)
        for threads in (2, 3, 4):
            assert_identical(one, run(threads, chunk))


def test_rows_with_unsorted_columns_give_the_same_results(monkeypatch):
    # rows whose columns are out of order (some encoders' CSR) give the same numbers
    monkeypatch.setattr(stats_module, "THREAD_NNZ", 0)
    rng = np.random.default_rng(19)
    dense, src = make_tokens(rng, n_cells=30, n_features=200, density=0.3)
    cfg = StatsConfig(top_tokens=3, threads=3)
    ordered = feature_stats(chunked(dense, src, 11), 200, cfg, num_cells=30, num_units=9)

    def reversed_rows(chunk):
        m = chunk.acts
        row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        order = np.lexsort((-m.indices, row))
        chunk.acts = sp.csr_matrix((m.data[order], m.indices[order], m.indptr), shape=m.shape)
        assert not chunk.acts.has_sorted_indices or m.nnz < 2
        return chunk

    shuffled = feature_stats(map(reversed_rows, chunked(dense, src, 11)), 200, cfg,
                             num_cells=30, num_units=9)
    assert_identical(ordered, shuffled)
    check_equal(ordered, dense_reference(dense, src, 30, 9), dense)


def test_auto_threads_use_the_cores_up_to_eight():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = min(cores, 8)
    assert stats_threads(0) == auto and stats_threads(5) == 5
    assert FeatureStats(3).threads == auto


def test_columns_over_many_bitmap_words_equal_dense_computation():
    # per-cell and per-gene columns come back from bitmaps of 64-column words: here four words,
    # the last one partial, in several gene batches
    rng = np.random.default_rng(7)
    dense, src = make_tokens(rng, n_cells=30, n_features=200, density=0.05)
    cfg = StatsConfig(top_tokens=3, gene_batch=300)
    res = feature_stats(chunked(dense, src, 13), 200, cfg, num_cells=30, num_units=9)
    check_equal(res, dense_reference(dense, src, 30, 9), dense)
    assert res.cell_max.indices.max() >= 192 and res.unit_sum.indices.min() < 64


def test_streaming_memory_is_the_output_plus_a_bounded_gene_batch():
    # 300 cells streamed 50 tokens at a time with a gene batch of 200 non-zeros: the gene
    # buffer stays within the batch (or one chunk), the per-cell matrices are CSR holding
    # exactly the (cell, feature) pairs that fire, and the results equal the dense computation
    rng = np.random.default_rng(2)
    dense, src = make_tokens(rng, n_cells=300, n_features=16, density=0.1)
    ref = dense_reference(dense, src, 300, 9)
    acc = FeatureStats(16, StatsConfig(top_tokens=3, gene_batch=200))
    largest = 0
    for chunk in chunked(dense, src, 50):
        acc.update(chunk)
        largest = max(largest, chunk.acts.nnz)
        assert acc.units.cols.nbytes + acc.units.vals.nbytes <= 8 * 2 * max(200, largest)
    res = acc.result(300, 9)
    check_equal(res, ref, dense)
    for m, full in ((res.cell_max, ref["cell_max"]), (res.cell_mean, ref["cell_mean"])):
        assert sp.isspmatrix_csr(m) and m.nnz == np.count_nonzero(full)


def pairwise_auroc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return np.nan
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.sampled_from([0.0, 0.2, 0.7]),
       negatives=st.booleans())
def test_association_equals_pairwise_auroc_and_category_means(seed, density, negatives):
    rng = np.random.default_rng(seed)
    n, F = 40, 6
    m = np.round(rng.exponential(1.0, (n, F)) * 2) / 2  # many ties
    if negatives:
        m -= 0.5
    m[rng.random((n, F)) > density] = 0
    labels = pd.Series(rng.choice(["B", "T", "NK", None], n))
    a = associate(sp.csr_matrix(m), labels, "cell_type")
    ok = labels.notna().to_numpy()
    for ci, cat in enumerate(a.categories):
        member = (labels == cat).to_numpy()[ok]
        np.testing.assert_allclose(a.mean[ci], m[ok][member].mean(0))
        for f in range(F):
            assert a.auroc[ci, f] == pytest.approx(pairwise_auroc(m[ok][:, f], member), nan_ok=True)
    for f in range(F):
        if not (m[ok][:, f] != 0).any():
            assert a.best[f] == -1 and np.isnan(a.specificity[f])
            continue
        assert a.best[f] == np.nanargmax(a.auroc[:, f])
        pos = np.clip(a.mean[:, f], 0, None)
        expect = pos.max() / pos.sum() if pos.sum() > 0 else np.nan
        assert a.specificity[f] == pytest.approx(expect, nan_ok=True)


def test_association_rejects_mismatched_labels_with_one_line():
    with pytest.raises(BioLLMError, match="3 cells .* 2 labels"):
        associate(sp.csr_matrix(np.ones((3, 2))), ["a", "b"])


def test_top_genes_rank_by_mean_activation_per_gene_token():
    rng = np.random.default_rng(0)
    dense, src = make_tokens(rng, n_cells=60, n_genes=9, density=0.2)
    planted = src.unit == 4
    dense[planted, 2] = 5.0 + rng.random(planted.sum())
    res = feature_stats(chunked(dense, src, 25), 7, num_cells=60, num_units=9)
    tg = top_genes(res, n=3, min_count=1)
    assert tg.gene[2, 0] == 4
    assert tg.rate[2, 0] == 1.0
    assert tg.log_odds[2, 0] > 2
    genes = [f"G{i}" for i in range(9)]
    assert tg.summary(genes)[2].startswith("G4 (")
    # against the dense computation for every feature
    counts = np.bincount(src.unit[src.unit >= 0], minlength=9)
    for f in range(7):
        means = np.array([dense[src.unit == g, f].mean() for g in range(9)])
        means[means == 0] = -np.inf
        expect = np.lexsort((np.arange(9), -means))[:3]
        expect = expect[np.isfinite(means[expect])]
        np.testing.assert_array_equal(tg.gene[f][tg.gene[f] >= 0], expect)
    # min_count removes rare genes from the ranking
    rare = top_genes(res, n=3, min_count=int(counts.max()) + 1)
    assert (rare.gene == -1).all()


def test_grouped_topk_breaks_ties_by_id():
    v, i = grouped_topk(np.array([0, 0, 0, 1]), np.array([1.0, 2.0, 2.0, 3.0]),
                        np.array([9, 7, 3, 1]), 2, 3)
    np.testing.assert_array_equal(i, [[3, 7], [1, -1], [-1, -1]])
    assert v[0].tolist() == [2.0, 2.0] and v[2, 0] == -np.inf


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 30), threads=st.sampled_from([2, 3]))
def test_sums_and_histogram_are_exact_over_every_float32(seed, chunk, threads):
    # per-feature sums are exact integer sums per float32 exponent: values from subnormal to
    # 1e30, negative ones too (a dictionary without a ReLU), come out within float64 rounding
    # of the exact sum, identical for any chunking and thread count; negatives count in bin 0
    rng = np.random.default_rng(seed)
    n, F = 90, 5
    mag = rng.choice([1e-42, 1e-30, 1e-3, 0.7, 1.0, 3e3, 1e30], (n, F))
    dense = (mag * rng.uniform(0.5, 2.0, (n, F)) * rng.choice([-1, 1, 1, 1], (n, F))
             ).astype(np.float32)
    dense[rng.random((n, F)) < 0.3] = 0
    src = TokenSources(np.arange(n) // 6, np.arange(n) % 6, np.zeros(n), np.arange(n) % 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats_module, "THREAD_NNZ", 0)
        one = feature_stats(chunked(dense, src, n), F, StatsConfig(top_tokens=3, threads=1))
        many = feature_stats(chunked(dense, src, chunk), F,
                             StatsConfig(top_tokens=3, threads=threads))
    assert_identical(one, many)
    for f in range(F):
        col = dense[:, f].astype(np.float64)
        exact = math.fsum(col)
        assert abs(one.act_sum[f] - exact) <= 1e-12 * np.abs(col).sum()
        nz = col[col != 0]
        bins = np.where(nz < 0, 0, np.searchsorted(HIST_EDGES, nz, side="right"))
        np.testing.assert_array_equal(one.hist[f], np.bincount(bins, minlength=len(HIST_EDGES) + 1))
    np.testing.assert_array_equal(one.act_max, np.maximum(dense.max(0), 0))
