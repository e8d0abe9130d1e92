"""On real pbmc68k_reduced cell sentences: a feature planted on one marker gene is found with that
gene on top and the right cell type; tables and the AnnData write-back round-trip."""

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biollm_engine.analysis.chunks import TokenSources, chunked
from biollm_engine.analysis.pipeline import analyze
from biollm_engine.analysis.table import FeatureTable
from biollm_engine.analysis.writeback import write_back
from biollm_engine.errors import BioLLMError
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from tiny_models import build_tokenizer

F, PLANTED = 16, 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def sentences(path, tokenizer, backed="no"):
    ds = CellDataset(path, CellSentenceConfig(layer="raw", top_k=30, template="sentence",
                                              backed=backed))
    ex = list(ds.examples(tokenizer))
    src = TokenSources(np.concatenate([np.full(len(e), e.record) for e in ex]),
                       np.concatenate([np.arange(len(e)) for e in ex]),
                       np.concatenate([e.input_ids for e in ex]),
                       np.concatenate([e.unit for e in ex]))
    return ds, src


@pytest.fixture(scope="module")
def planted(pbmc, pbmc_h5ad, tokenizer):
    # CD79A is the top marker of "CD19+ B" in the data set's own rank_genes_groups
    marker = pd.DataFrame(pbmc.uns["rank_genes_groups"]["names"])["CD19+ B"][0]
    assert marker == "CD79A"
    ds, src = sentences(pbmc_h5ad, tokenizer)
    rng = np.random.default_rng(0)
    acts = sp.random(len(src), F, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    acts = acts.tolil()
    on = np.flatnonzero(src.unit == ds.genes.index(marker))
    acts[on, PLANTED] = 3.0 + rng.random(len(on))[:, None]
    return ds, src, acts.tocsr(), marker


def run(ds, src, acts, chunk):
    return analyze(chunked(acts, src, chunk), F, genes=ds.genes, obs=ds.obs,
                   obs_keys=["bulk_labels"], sources=src, top_n=5)


def test_planted_feature_is_found_with_its_gene_and_cell_type(planted):
    ds, src, acts, marker = planted
    res = run(ds, src, acts, chunk=4096)
    row = res.table.df.iloc[PLANTED]
    assert row["top_gene"] == marker
    assert row["top_genes"].startswith(marker + " (")
    assert row["best_bulk_labels"] == "CD19+ B"
    assert row["auroc_bulk_labels"] > 0.9
    assert res.top_genes.log_odds[PLANTED, 0] > 3
    assert f"[{marker}]" in row["top_context"]
    # its top cells are B cells
    _, cells = res.top_cells
    labels = ds.obs["bulk_labels"].to_numpy()[cells[PLANTED]]
    assert (labels == "CD19+ B").mean() >= 0.8
    # a background feature has no such gene
    assert res.table.df["auroc_bulk_labels"].drop(PLANTED).max() < 0.8


def test_streaming_and_backed_h5ad_equal_in_memory(planted, pbmc_h5ad, tokenizer):
    ds, src, acts, _ = planted
    whole = run(ds, src, acts, chunk=len(src))
    ds_b, src_b = sentences(pbmc_h5ad, tokenizer, backed="yes")
    for name in ("record", "position", "token_id", "unit"):
        np.testing.assert_array_equal(getattr(src_b, name), getattr(src, name))
    streamed = run(ds_b, src_b, acts, chunk=777)
    pd.testing.assert_frame_equal(streamed.table.df, whole.table.df, rtol=1e-6)
    assert (streamed.stats.cell_max != whole.stats.cell_max).nnz == 0


def test_table_exports_read_back_and_keep_labels(planted, tmp_path):
    ds, src, acts, _ = planted
    table = run(ds, src, acts, chunk=5000).table
    for suffix in ("csv", "tsv", "parquet"):
        path = table.save(tmp_path / f"features.{suffix}")
        back = FeatureTable.read(path)
        pd.testing.assert_frame_equal(back.df, table.df, check_dtype=False, rtol=1e-6)
    # the user labels a feature; re-exporting keeps it
    path = tmp_path / "features.csv"
    edited = FeatureTable.read(path)
    edited.df.loc[PLANTED, "label"] = "B-cell receptor, CD79A"
    edited.save(path)
    table.save(path)
    assert FeatureTable.read(path).df.loc[PLANTED, "label"] == "B-cell receptor, CD79A"
    with pytest.raises(BioLLMError, match="format"):
        table.save(tmp_path / "features.xlsx")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BioLLMError, match="cannot read"):
        FeatureTable.read(tmp_path / "bad.parquet")


def test_write_back_round_trips_and_leaves_the_input_untouched(planted, pbmc_h5ad, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    ds, src, acts, _ = planted
    res = run(ds, src, acts, chunk=5000)
    before = (pbmc_h5ad.read_bytes(), os.stat(pbmc_h5ad).st_mtime_ns)
    out = write_back(pbmc_h5ad, res.stats.cell_max, res.table, "sae", tmp_path / "out.h5ad",
                     obs_features=[PLANTED, 0])
    assert (pbmc_h5ad.read_bytes(), os.stat(pbmc_h5ad).st_mtime_ns) == before
    adata = ad.read_h5ad(out)
    m = adata.obsm["X_sae"]
    assert sp.issparse(m) and m.shape == (700, F)
    assert (m != res.stats.cell_max).nnz == 0
    np.testing.assert_array_equal(adata.obs[f"feat_{PLANTED}"],
                                  res.stats.cell_max[:, PLANTED].toarray().ravel())
    back = FeatureTable.from_uns(adata.uns["sae_features"])
    pd.testing.assert_frame_equal(back.df[res.table.df.columns], res.table.df, check_dtype=False)
    original = ad.read_h5ad(pbmc_h5ad)
    np.testing.assert_array_equal(adata.X, original.X)
    assert list(adata.obs.columns[: original.obs.shape[1]]) == list(original.obs.columns)
    sc.pl.umap(adata, color=f"feat_{PLANTED}", show=False)  # the scanpy workflow works

    with pytest.raises(BioLLMError, match="is the input file"):
        write_back(pbmc_h5ad, res.stats.cell_max, res.table, "sae", pbmc_h5ad)
    with pytest.raises(BioLLMError, match="10 cells of features but 700"):
        write_back(pbmc_h5ad, res.stats.cell_max[:10], res.table, "sae", tmp_path / "x.h5ad")
    assert not (tmp_path / "x.h5ad").exists()
    assert (pbmc_h5ad.read_bytes(), os.stat(pbmc_h5ad).st_mtime_ns) == before
