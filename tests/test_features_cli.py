"""`biollm features` end to end on a tiny model, a dictionary and pbmc68k_reduced cells."""

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from biollm_engine.cli import main
from biollm_engine.dictionaries.config import DictionaryConfig
from biollm_engine.dictionaries.dictionary import Dictionary
from biollm_engine.harvest import HarvestConfig, harvest
from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
from biollm_engine.models import load_model

SENTENCES = ["--top-k", "10", "--layer", "raw", "--template", "sentence"]


@pytest.fixture(scope="module")
def files(pbmc, tiny_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("features_cli")
    small = pbmc[::20].copy()  # 35 cells of every type
    small.write_h5ad(root / "cells.h5ad")
    torch.manual_seed(1)
    sae = Dictionary(DictionaryConfig(kind="sae", activation="topk", d_in=64, num_latents=24,
                                      k=4, hookpoint="layers.1"))
    sae.save(root / "sae_l1")
    Dictionary(DictionaryConfig(kind="sae", d_in=32, num_latents=8, k=2,
                                hookpoint="layers.1")).save(root / "narrow")
    return root, tiny_model_dirs("gpt_neox")


def features(files, *extra):
    root, model = files
    return main(["features", "--model", str(model), "--data", str(root / "cells.h5ad"),
                 "--dict", str(root / "sae_l1"), *SENTENCES, *extra])


def test_live_table_and_h5ad(files, capsys):
    root, _ = files
    before = os.stat(root / "cells.h5ad").st_mtime_ns
    rc = features(files, "--out", str(root / "t.csv"), "--obs-key", "bulk_labels",
                  "--write-h5ad", str(root / "out.h5ad"), "--top-n", "3", "--device", "cpu")
    assert rc == 0, capsys.readouterr().err
    assert "24 features" in capsys.readouterr().out
    t = pd.read_csv(root / "t.csv")
    assert len(t) == 24 and {"frequency", "top_genes", "best_bulk_labels", "auroc_bulk_labels",
                             "promoted", "promoted_gene", "label"} <= set(t.columns)
    assert ((t["frequency"] >= 0) & (t["frequency"] <= 1)).all() and t["frequency"].max() > 0
    adata = ad.read_h5ad(root / "out.h5ad")
    assert adata.obsm["X_sae_l1"].shape == (35, 24)
    assert "sae_l1_features" in adata.uns
    assert any(c.startswith("feat_") for c in adata.obs.columns)
    assert os.stat(root / "cells.h5ad").st_mtime_ns == before


def test_cache_gives_the_live_table(files, capsys):
    root, model = files
    lm = load_model(str(model), device="cpu")
    ds = CellDataset(root / "cells.h5ad", CellSentenceConfig(layer="raw", top_k=10,
                                                             template="sentence"))
    harvest(lm, ds.examples(lm.tokenizer), HarvestConfig(hookpoints=["layers.1"],
                                                          store_dtype="float32"),
            root / "cache", meta={"units": ds.genes})
    assert features(files, "--out", str(root / "live.parquet"), "--device", "cpu") == 0
    assert features(files, "--out", str(root / "cached.parquet"), "--cache",
                    str(root / "cache"), "--device", "cpu") == 0
    live = pd.read_parquet(root / "live.parquet")
    cached = pd.read_parquet(root / "cached.parquet")
    pd.testing.assert_frame_equal(live, cached, rtol=1e-5)
    # every categorical obs column was associated
    assert {"best_bulk_labels", "best_louvain", "best_phase"} <= set(live.columns)


@pytest.mark.parametrize("case, message", [
    ("missing_dict", "does not exist"),
    ("narrow_dict", "width 32"),
    ("bad_obs_key", "obs has no column 'celltype'; categorical columns are: bulk_labels"),
    ("out_is_input", "is the input data"),
    ("h5ad_is_input", "is the input data"),
])
def test_bad_input_is_one_line_and_exit_2(files, capsys, case, message):
    root, model = files
    args = {"missing_dict": ["--dict", str(root / "nope"), "--out", str(root / "x.csv")],
            "narrow_dict": ["--dict", str(root / "narrow"), "--out", str(root / "x.csv")],
            "bad_obs_key": ["--obs-key", "celltype", "--out", str(root / "x.csv")],
            "out_is_input": ["--out", str(root / "cells.h5ad")],
            "h5ad_is_input": ["--out", str(root / "x.csv"),
                              "--write-h5ad", str(root / "cells.h5ad")]}[case]
    base = ["features", "--model", str(model), "--data", str(root / "cells.h5ad"),
            "--dict", str(root / "sae_l1"), "--device", "cpu", *SENTENCES]
    before = (root / "cells.h5ad").read_bytes()
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biollm: error: ") and message in err and "\n" not in err
    assert not (root / "x.csv").exists()
    assert (root / "cells.h5ad").read_bytes() == before


# DNA: records are windows, tokens the model's own k-mers with --data-option tokenizer=model

DNA_OPTIONS = ["tokenizer=model", "window=256", "stride=128"]


@pytest.fixture(scope="module")
def dna(tmp_path_factory):
    """A FASTA of two records of real sequence, a tiny ESM with Nucleotide Transformer v1's
    6-mer tokenizer, and a ReLU SAE on its first layer."""
    import transformers as tf

    from test_dna_tracks import SEQ, kmer_tokenizer

    root = tmp_path_factory.mktemp("features_dna")
    (root / "two.fa").write_text(f">a first\n{SEQ[:700]}\n>b\n{SEQ[700:1500]}\n")
    tokenizer = kmer_tokenizer()
    torch.manual_seed(0)
    cfg = tf.EsmConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=300,
                       pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
                       position_embedding_type="absolute", token_dropout=False)
    tf.EsmForMaskedLM(cfg).save_pretrained(root / "esm")
    tokenizer.save_pretrained(root / "esm")
    Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=32, num_latents=16,
                                hookpoint="layers.0")).save(root / "sae")
    return root


def dna_features(root, *extra):
    return main(["features", "--model", str(root / "esm"), "--data", str(root / "two.fa"),
                 "--dict", str(root / "sae"), "--device", "cpu", "--top-n", "3", *extra])


def with_options(options):
    return [a for o in options for a in ("--data-option", o)]


def test_dna_features_read_the_models_kmers(dna, capsys):
    """The table equals a direct computation over the model's 6-mer tokens of every window,
    and the same options through the Python API."""
    import transformers as tf

    from biollm_engine.analysis.pipeline import FeaturesConfig, run_features
    from biollm_engine.dictionaries.formats import load_dictionary
    from biollm_engine.inputs import DnaConfig, DnaDataset

    assert dna_features(dna, "--out", str(dna / "t.csv"), *with_options(DNA_OPTIONS)) == 0
    t = pd.read_csv(dna / "t.csv", keep_default_na=False)
    ds = DnaDataset(dna / "two.fa", DnaConfig(window=256, stride=128, tokenizer="model"))
    tokenizer = tf.AutoTokenizer.from_pretrained(dna / "esm")
    model = tf.EsmModel.from_pretrained(dna / "esm").eval()
    sae = load_dictionary(dna / "sae")
    acts = []
    with torch.no_grad():
        for ex in ds.examples(tokenizer):
            hidden = model(torch.as_tensor(ex.input_ids)[None], output_hidden_states=True)
            acts.append(sae.encode(hidden.hidden_states[1][0, torch.as_tensor(ex.keep)]))
    acts = torch.cat(acts).numpy()
    table = ds.windows_table()
    assert len(acts) < (table["end"] - table["start"]).sum() / 5  # 6-mers, not bytes
    np.testing.assert_allclose(t["frequency"], (acts > 0).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(t["mean"], acts.mean(axis=0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(t["max"], acts.max(axis=0), rtol=1e-5)
    # the best token's context names 6-mers (its tokens), in brackets
    centre = t.loc[t["frequency"] > 0, "top_context"].str.extract(r"\[(\w+)\]")[0]
    assert centre.str.fullmatch("[ACGT]{6}|[ACGT]").all() and (centre.str.len() == 6).any()
    result = run_features(FeaturesConfig(model=str(dna / "esm"), data=str(dna / "two.fa"),
                                         dict=str(dna / "sae"), out=str(dna / "api.csv"),
                                         data_option=DNA_OPTIONS, top_n=3, device="cpu"))
    pd.testing.assert_frame_equal(pd.read_csv(dna / "api.csv", keep_default_na=False), t)
    # one row per window (the DNA data set's records), no per-gene sums
    assert result.stats.cell_max.shape == (len(ds), 16)
    assert result.stats.unit_sum.shape[0] == 0 and result.top_genes is None
    assert result.stats.num_tokens == len(acts)


def test_dna_features_byte_tokens_are_named_by_their_base(dna):
    """tokenizer=byte feeds bytes; contexts show them as bases, not as the model's tokens of
    those ids."""
    from biollm_engine.analysis.pipeline import FeaturesConfig, run_features

    result = run_features(FeaturesConfig(model=str(dna / "esm"), data=str(dna / "two.fa"),
                                         dict=str(dna / "sae"), out=str(dna / "bytes.csv"),
                                         data_option=["window=200", "tokenizer=byte"],
                                         top_n=3, device="cpu"))
    assert result.stats.num_tokens == 1500  # one token per base
    centre = result.table.df["top_context"].str.extract(r"\[(\w+)\]")[0].dropna()
    assert len(centre) and centre.str.fullmatch("[ACGT]").all()


def test_dna_features_from_a_cache_need_its_reader_options(dna, capsys):
    assert main(["harvest", "--model", str(dna / "esm"), "--data", str(dna / "two.fa"),
                 "--out", str(dna / "cache"), "--hookpoint", "layers.0", "--device", "cpu",
                 "--store-dtype", "float32", *with_options(DNA_OPTIONS)]) == 0
    assert dna_features(dna, "--out", str(dna / "live.csv"), *with_options(DNA_OPTIONS)) == 0
    assert dna_features(dna, "--out", str(dna / "cached.csv"), "--cache", str(dna / "cache"),
                        *with_options(DNA_OPTIONS)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(dna / "live.csv"), pd.read_csv(dna / "cached.csv"),
                                  rtol=1e-5)
    capsys.readouterr()
    assert dna_features(dna, "--out", str(dna / "x.csv"), "--cache", str(dna / "cache")) == 2
    err = capsys.readouterr().err.strip()
    assert "harvested with other reader options" in err and "tokenizer=model" in err
    assert not (dna / "x.csv").exists()


@pytest.mark.parametrize("option, message", [
    ("window=abc", "dna option window=abc must be a whole number"),
    ("reverse_complement=yes", "dna option reverse_complement=yes must be true or false"),
    ("kmer=6", "option kmer does not apply to dna data"),
    ("tokenizer=kmer", "tokenizer must be auto, byte or model"),
    ("window", "is not KEY=VALUE"),
])
def test_bad_dna_option_is_one_line_and_exit_2(dna, capsys, option, message):
    assert dna_features(dna, "--out", str(dna / "x.csv"), "--data-option", option) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("biollm: error: ") and message in err and "\n" not in err
    assert not (dna / "x.csv").exists()


def test_cell_sentence_flags_are_not_data_options(files, capsys):
    root, _ = files
    assert features(files, "--out", str(root / "x.csv"), "--data-option", "top_k=5") == 2
    err = capsys.readouterr().err.strip()
    assert "set top_k of cell sentences with --top-k" in err and "\n" not in err


def test_dna_reader_default_is_the_models_own_tokenizer(dna):
    """Without options a Hugging Face k-mer model reads its own 6-mers (fed bytes, it would read
    each base's byte id as some other k-mer); Evo 2's byte tokenizer gets bytes."""
    from biollm_engine.inputs import open_data
    from biollm_engine.models import load_model
    from biollm_engine.models.evo2 import ByteTokenizer

    data = open_data(dna / "two.fa")
    lm = load_model(str(dna / "esm"), device="cpu")
    assert not data.reads_bytes(lm.tokenizer) and data.reads_bytes(ByteTokenizer())
    assert data.reads_bytes(None)  # no model: bytes, as a harvest without one can only read
    ex = next(iter(data.examples(lm.tokenizer)))
    assert len(ex.input_ids) < len(ex.text) / 3  # 6-mers, not one token per base
