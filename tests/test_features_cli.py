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
