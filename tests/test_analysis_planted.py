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


def test_planted_latent_of_a_dictionary_on_a_real_model_finds_its_gene_and_cell_type(
        pbmc, pbmc_h5ad, tiny_model_dirs, tmp_path, capsys):
    """End to end: a tiny model reads the 700 cells' sentences, one latent of a ReLU dictionary
    is a linear read-out of that model's own layers.1 activations at CD79A's last token
    (fitted on them, as a trained SAE's feature would be), the others random sparse latents; `biollm
    features` must put CD79A on top of that latent and CD19+ B as its cell type."""
    import torch

    from biollm_engine.cache import ActivationCache
    from biollm_engine.cli import main
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary
    from biollm_engine.harvest import HarvestConfig, harvest
    from biollm_engine.models import load_model

    marker, latents, planted = "GZMB", 32, 7
    model = tiny_model_dirs("gpt_neox")
    lm = load_model(str(model), device="cpu")
    cfg = CellSentenceConfig(layer="raw", top_k=30, template="sentence")
    ds = CellDataset(pbmc_h5ad, cfg)
    harvest(lm, ds.examples(lm.tokenizer), HarvestConfig(hookpoints=["layers.1"],
                                                          store_dtype="float32"),
            tmp_path / "acts", meta={"units": ds.genes})
    cache = ActivationCache(tmp_path / "acts")
    x = torch.as_tensor(np.asarray(cache.read("layers.1")), dtype=torch.float32)
    unit = np.asarray(cache.sources()["unit"])
    # gene names are several tokens here, most shared with other genes (CD79A is " CD", "79",
    # "A"); GZMB is " G" "ZMB", and "ZMB" is in no other of the 765 genes: the latent reads it
    piece = lm.tokenizer.convert_tokens_to_ids("ZMB")
    assert [g for g in ds.genes if "ZMB" in lm.tokenizer.tokenize(" " + g)] == [marker]
    on = torch.as_tensor((unit == ds.genes.index(marker))
                         & (np.asarray(cache.sources()["token_id"]) == piece))
    assert 0 < int(on.sum()) < len(on) // 100
    # the read-out: least squares of "this is GZMB's ZMB" on the centred activations
    mu = x.mean(0)
    w = torch.linalg.lstsq(x - mu, on.float()[:, None] - on.float().mean()).solution[:, 0]
    score = (x - mu) @ w
    cut = (score[on].quantile(0.05) + score[~on].quantile(0.999)) / 2
    torch.manual_seed(0)
    sae = Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=x.shape[1],
                                      num_latents=latents, hookpoint="layers.1",
                                      apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.copy_(-(x @ sae.W_enc.T).quantile(0.97, dim=0))  # background: ~3% of tokens
        sae.W_enc[planted] = w
        sae.b_enc[planted] = -(mu @ w) - cut
    sae.save(tmp_path / "sae")

    rc = main(["features", "--model", str(model), "--data", str(pbmc_h5ad),
               "--dict", str(tmp_path / "sae"), "--layer", "raw", "--top-k", "30",
               "--template", "sentence", "--obs-key", "bulk_labels", "--device", "cpu",
               "--out", str(tmp_path / "features.csv")])
    assert rc == 0, capsys.readouterr().err
    row = pd.read_csv(tmp_path / "features.csv").iloc[planted]
    assert row["top_gene"] == marker
    assert row["best_bulk_labels"] == "CD56+ NK"
    # as good a read-out of NK cells as GZMB's presence in the sentence itself, which marks some
    # NK cells only (GZMB is NK's 7th marker)
    from sklearn.metrics import roc_auc_score

    nk = (ds.obs["bulk_labels"] == "CD56+ NK").to_numpy()
    has = np.zeros(len(nk), bool)
    has[np.asarray(cache.sources()["record"])[unit == ds.genes.index(marker)]] = True
    assert row["auroc_bulk_labels"] >= roc_auc_score(nk, has) - 0.01 > 0.75
    # it fires on about the share of GZMB's tokens, not on every " G"
    assert row["frequency"] < 2 * float(on.float().mean())
