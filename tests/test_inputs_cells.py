"""Cell sentences from real PBMC data (scanpy's pbmc68k_reduced), checked against numpy."""

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from biollm_engine.errors import BioLLMError
from biollm_engine.inputs import CellDataset, CellSentenceConfig, DataSource, open_data
from biollm_engine.inputs.cells import TEMPLATES, tie_keys

CELLS = [0, 1, 57, 312, 699]


@pytest.fixture(scope="module")
def cells(pbmc_h5ad):
    return open_data(pbmc_h5ad)


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import build_tokenizer  # the BPE tokenizer every tiny test model saves

    return build_tokenizer()


def raw_row(pbmc, i):
    return np.asarray(pbmc.raw.X[i].toarray()).ravel()


def test_pbmc_x_is_scaled_so_raw_log_normalized_is_used(cells, pbmc):
    assert isinstance(cells, CellDataset) and isinstance(cells, DataSource)
    assert pbmc.X.min() < 0  # what the file really holds: scaled X, log-normalized raw
    assert cells.matrix_name == "raw" and cells.matrix_kind == "log-normalized"
    line = cells.describe()
    assert "700 cells × 765 genes from raw" in line and "scaled" in line and "\n" not in line
    assert len(cells) == cells.n_cells == 700
    assert cells.genes == [g.upper() for g in pbmc.raw.var_names] == cells.units
    with pytest.raises(BioLLMError, match="X holds scaled data"):
        CellDataset(pbmc, CellSentenceConfig(layer="X"))  # X itself, no fallback to raw


def test_sentences_equal_direct_numpy_ranking(cells, pbmc):
    full = CellDataset(pbmc, CellSentenceConfig(top_k=10_000))
    for i in CELLS:
        x = raw_row(pbmc, i)
        expressed = np.flatnonzero(x > 0)
        ranked = full.ranked([i])[0]
        # every expressed gene exactly once, by non-increasing expression
        assert sorted(ranked.tolist()) == expressed.tolist()
        assert np.array_equal(x[ranked], np.sort(x[expressed])[::-1])
        top = cells.ranked([i])[0]
        assert np.array_equal(top, ranked[:200])
        threshold = x[top[-1]]
        assert set(np.flatnonzero(x > threshold)) <= set(top.tolist())
        assert cells.sentence(i) == [pbmc.raw.var_names[g].upper() for g in top]


def test_ties_are_a_seeded_shuffle_then_stable_sort(cells, pbmc):
    i = 57
    x = raw_row(pbmc, i)
    cols = np.flatnonzero(x > 0)
    # C2S: shuffle the cell's genes, then stable-sort by descending expression
    shuffled = cols[np.argsort(tie_keys(1234, np.full(len(cols), i), cols), kind="stable")]
    expected = shuffled[np.argsort(-x[shuffled], kind="stable")][:200]
    assert np.array_equal(cells.ranked([i])[0], expected)
    # ties are common (many genes with one count) and their order is shuffled, not column order
    values = x[expected]
    tied = values == values[-1]
    assert tied.sum() > 10 and not np.all(np.diff(expected[tied]) > 0)


def test_tie_order_depends_only_on_seed_and_cell(pbmc, cells):
    again = CellDataset(pbmc, CellSentenceConfig())
    other = CellDataset(pbmc, CellSentenceConfig(seed=7))
    changed = 0
    batch = cells.ranked(range(700))
    for i in CELLS:
        assert np.array_equal(again.ranked([i])[0], batch[i])
        assert np.array_equal(cells.ranked([i, 3])[0], batch[i])
        x = raw_row(pbmc, i)
        a, b = batch[i], other.ranked([i])[0]
        changed += not np.array_equal(a, b)
        assert np.array_equal(x[a], x[b])  # same expression sequence, ties reordered
    assert changed >= 3


def test_top_k_truncates_and_prompt_is_the_c2s_template(pbmc, cells):
    short = CellDataset(pbmc, CellSentenceConfig(top_k=20))
    assert short.sentence(5) == cells.sentence(5)[:20]
    expected = TEMPLATES["cell_type_prediction"].format(
        num_genes=20, organism="Homo sapiens", cell_sentence=" ".join(short.sentence(5)))
    assert short.prompt(5) == expected
    assert short.prompt(5).startswith("The following is a list of 20 gene names ordered by "
                                      "descending expression level in a Homo sapiens cell.")
    assert short.prompt(5).endswith(".\nThe cell type corresponding to these genes is:")


def test_other_templates(pbmc):
    bare = CellDataset(pbmc, CellSentenceConfig(template="sentence", top_k=30))
    assert bare.prompt(3) == " ".join(bare.sentence(3))
    mouse = CellDataset(pbmc, CellSentenceConfig(template="{organism}: {cell_sentence}!",
                                                 organism="Mus musculus", top_k=5))
    assert mouse.prompt(3) == "Mus musculus: " + " ".join(mouse.sentence(3)) + "!"
    with pytest.raises(BioLLMError, match="cell_sentence"):
        CellDataset(pbmc, CellSentenceConfig(template="no placeholder"))
    with pytest.raises(BioLLMError, match="unknown or malformed field"):
        CellDataset(pbmc, CellSentenceConfig(template="{tissue}: {cell_sentence}"))


def test_gene_tokens_map_back_to_their_genes(cells, tokenizer):
    examples = list(cells.examples(tokenizer, indices=[312, 0, 57]))
    assert [e.record for e in examples] == [312, 0, 57]
    for ex in examples:
        sentence = cells.sentence(ex.record)
        assert ex.input_ids.dtype == np.int64 and ex.unit.dtype == np.int32
        assert ex.keep.dtype == np.bool_ and ex.keep.all()
        assert tokenizer.decode(ex.input_ids) == ex.text == cells.prompt(ex.record)
        ranks = ex.rank[ex.rank >= 0]
        assert np.array_equal(np.unique(ranks), np.arange(len(sentence)))
        assert np.all(np.diff(ranks) >= 0)  # ranks appear in sentence order
        for r, gene in enumerate(sentence):
            tokens = ex.input_ids[ex.rank == r]
            assert tokenizer.decode(tokens).strip() == gene
            assert np.all(ex.unit[ex.rank == r] == cells.genes.index(gene))
        outside = ex.rank < 0
        assert np.all(ex.unit[outside] == -1)
        assert "Cell sentence:" in tokenizer.decode(ex.input_ids[outside])
    genes_only = next(cells.examples(tokenizer, indices=[0], genes_only=True))
    assert np.array_equal(genes_only.keep, examples[1].unit >= 0)
    short = next(cells.examples(tokenizer, indices=[0], max_length=60))
    assert len(short) == 60 and np.array_equal(short.input_ids, examples[1].input_ids[:60])


def test_cells_with_few_or_no_expressed_genes(tokenizer):
    X = np.zeros((3, 4), np.float32)
    X[1, 2], X[2] = 1.5, [0.5, 0.5, 0.5, 2.0]
    ds = CellDataset(ad.AnnData(X=X, var=pd.DataFrame(index=["cd3e", "ms4a1", "nkg7", "lyz"])))
    assert [ds.sentence(i) for i in range(3)][:2] == [[], ["NKG7"]]
    assert ds.sentence(2)[0] == "LYZ" and sorted(ds.sentence(2)[1:]) == ["CD3E", "MS4A1", "NKG7"]
    kept = [e.unit[e.keep].tolist() for e in ds.examples(tokenizer, genes_only=True)]
    assert kept[0] == [] and set(kept[1]) == {2} and kept[2][0] == 3


def test_backed_reading_gives_the_same_sentences(pbmc_h5ad, cells, tokenizer):
    with open_data(pbmc_h5ad, backed="yes") as backed:
        assert "from disk" in backed.describe() and "in memory" in cells.describe()
        assert backed.matrix_name == "raw"
        idx = [699, 3, 250, 251, 252, 3]
        assert all(np.array_equal(a, b) for a, b in zip(backed.ranked(idx), cells.ranked(idx)))
        a = list(backed.examples(tokenizer, indices=[10, 11, 400]))
        b = list(cells.examples(tokenizer, indices=[10, 11, 400]))
        assert all(np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.unit, y.unit)
                   for x, y in zip(a, b))
        assert backed.obs["bulk_labels"].equals(cells.obs["bulk_labels"])
        assert np.allclose(backed.obsm("X_umap"), cells.obsm("X_umap"))


def test_auto_backed_when_the_file_is_large_for_memory(pbmc_h5ad, cells, monkeypatch):
    from biollm_engine.inputs import cells as cells_module

    monkeypatch.setattr(cells_module, "BACKED_MEMORY_FRACTION", 1e-6)
    with open_data(pbmc_h5ad) as auto:
        assert "from disk" in auto.describe()
        assert auto.sentence(42) == cells.sentence(42)


def test_gene_major_matrices(pbmc, tmp_path, cells):
    a = ad.AnnData(X=sp.csc_matrix(pbmc.raw.X), obs=pbmc.obs[[]].copy(),
                   var=pd.DataFrame(index=pbmc.raw.var_names))
    a.write_h5ad(tmp_path / "csc.h5ad")
    assert open_data(tmp_path / "csc.h5ad", backed="no").sentence(8) == cells.sentence(8)
    with pytest.raises(BioLLMError, match="CSC"):
        open_data(tmp_path / "csc.h5ad", backed="yes")


def test_counts_layer_and_obs(pbmc, tmp_path):
    a = ad.AnnData(X=pbmc.X.copy(), obs=pbmc.obs.copy(), var=pbmc.var.copy(),
                   obsm={"X_umap": pbmc.obsm["X_umap"]})
    counts = sp.csr_matrix(np.rint(np.expm1(pbmc.raw.X.toarray()) / 3.908655))
    a.layers["counts"] = counts
    path = tmp_path / "counts.h5ad"
    a.write_h5ad(path)
    for backed in ("no", "yes"):
        with open_data(path, layer="counts", backed=backed) as ds:
            assert ds.matrix_kind == "counts" and "from counts (counts)" in ds.describe()
            x = counts[9].toarray().ravel()
            top = ds.ranked([9])[0]
            assert np.array_equal(x[top], np.sort(x[x > 0])[::-1][:200])
            assert ds.cell_ids == list(pbmc.obs_names)
            assert ds.obsm_keys == ["X_umap"]
            with pytest.raises(BioLLMError, match="no obsm 'X_pca'"):
                ds.obsm("X_pca")
    with pytest.raises(BioLLMError, match="scaled data"):
        open_data(path)  # X is scaled and there is no raw
    with pytest.raises(BioLLMError, match="no layer 'spliced'.*counts"):
        open_data(path, layer="spliced")


def test_ensembl_ids_map_through_the_symbol_column(pbmc, cells):
    symbols = list(pbmc.raw.var_names)
    ids = [f"ENSG{i:011d}" for i in range(len(symbols))]
    var = pd.DataFrame({"feature_name": [s.lower() for s in symbols]}, index=ids)
    a = ad.AnnData(X=pbmc.raw.X.copy(), var=var, obs=pbmc.obs[[]].copy())
    mapped = CellDataset(a)
    assert mapped.genes == cells.genes
    assert mapped.sentence(57) == cells.sentence(57)
    renamed = ad.AnnData(X=a.X, var=var.rename(columns={"feature_name": "hgnc"}), obs=a.obs)
    with pytest.raises(BioLLMError, match=r"Ensembl ids.*\['hgnc'\].*gene_symbol_column"):
        CellDataset(renamed)
    assert CellDataset(renamed, CellSentenceConfig(gene_symbol_column="hgnc")).genes == cells.genes
    with pytest.raises(BioLLMError, match="'nope' is not a var column"):
        CellDataset(renamed, CellSentenceConfig(gene_symbol_column="nope"))


def test_negative_values_beyond_the_sampled_cells_are_caught(pbmc):
    sampled = set(np.linspace(0, 699, 256).astype(int))
    hidden = next(i for i in range(700) if i not in sampled)
    X = pbmc.raw.X.toarray()
    X[hidden, 3] = -1.5
    ds = CellDataset(ad.AnnData(X=X, var=pd.DataFrame(index=pbmc.raw.var_names)))
    assert ds.matrix_kind == "log-normalized"
    assert len(ds.sentence(hidden - 1)) == 200
    with pytest.raises(BioLLMError, match=f"negative values in cells {hidden}..{hidden}"):
        ds.sentence(hidden)


def test_bad_inputs(tmp_path, cells):
    with pytest.raises(BioLLMError, match="does not exist"):
        open_data(tmp_path / "missing.h5ad")
    (tmp_path / "empty.h5ad").write_bytes(b"")
    with pytest.raises(BioLLMError, match="empty"):
        open_data(tmp_path / "empty.h5ad")
    (tmp_path / "noise.h5ad").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(BioLLMError, match="not a readable .h5ad"):
        open_data(tmp_path / "noise.h5ad")
    with h5py.File(tmp_path / "plain.h5ad", "w") as f:
        f["data"] = np.arange(10)
    for backed in ("no", "yes"):
        with pytest.raises(BioLLMError, match="h5ad"):
            open_data(tmp_path / "plain.h5ad", backed=backed)
    with pytest.raises(BioLLMError, match="out of range"):
        cells.sentence(700)
    with pytest.raises(BioLLMError, match="top_k"):
        CellSentenceConfig(top_k=0)
    with pytest.raises(BioLLMError, match="does not apply to cells"):
        open_data(tmp_path / "noise.h5ad", window=100)
