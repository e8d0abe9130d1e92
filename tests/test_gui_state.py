"""The workbench's state without Qt: file kinds, workspaces, colouring, selection, raster."""

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from biollm_engine.errors import BioLLMError
from workbench.state import colouring as col
from workbench.state import files
from workbench.state.cells import CellsState
from workbench.state.features import activation_keys, default_activation_key, feature_stats
from workbench.state.library import describe_dictionaries
from workbench.state.workspace import Workspace, open_workspace, save_workspace
from workbench.views import raster


def test_recognise_every_kind(tmp_path):
    (tmp_path / "a.h5ad").write_bytes(b"x")
    (tmp_path / "g.fa.gz").write_bytes(b"x")
    (tmp_path / "p.gbk").write_text("LOCUS")
    (tmp_path / "notes.txt").write_text("hi")
    saelens = tmp_path / "saelens"
    saelens.mkdir()
    (saelens / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 512,
                                                  "hook_name": "blocks.1.hook_resid_post"}))
    (saelens / "sae_weights.safetensors").write_bytes(b"")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "workspace.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    kinds = {p: files.recognise(tmp_path / p).kind for p in
             ("a.h5ad", "g.fa.gz", "p.gbk", "notes.txt", "saelens", "model", "ws", "empty",
              "missing.h5ad")}
    assert kinds == {"a.h5ad": files.H5AD, "g.fa.gz": files.SEQUENCE, "p.gbk": files.SEQUENCE,
                     "notes.txt": files.UNKNOWN, "saelens": files.DICTIONARY,
                     "model": files.MODEL, "ws": files.WORKSPACE, "empty": files.UNKNOWN,
                     "missing.h5ad": files.UNKNOWN}
    assert "does not exist" in files.recognise(tmp_path / "missing.h5ad").reason
    d = describe_dictionaries(saelens)[0]
    assert (d["format"], d["latents"], d["d_in"]) == ("SAELens", 512, 64)


def test_workspace_round_trip_keeps_inner_paths_relative(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    inner = folder / "cells.h5ad"
    outer = tmp_path / "other.h5ad"
    ws = Workspace(feature_labels={"X_sae:1": "T cell"}, settings={"colour_by": "louvain"})
    ws.add("data", inner)
    ws.add("data", outer)
    assert not ws.add("data", inner)  # recorded once
    save_workspace(ws, folder)
    stored = json.loads((folder / "workspace.json").read_text())
    assert stored["data"] == ["cells.h5ad", str(outer.resolve())]
    back = open_workspace(folder)
    assert back.data == [str(inner.resolve()), str(outer.resolve())]
    assert back.feature_labels == {"X_sae:1": "T cell"} and back.settings["colour_by"] == "louvain"
    (folder / "workspace.json").write_text('{"data": "oops"}')
    with pytest.raises(BioLLMError, match="'data' must be a list"):
        open_workspace(folder)
    (folder / "workspace.json").write_text("{not json")
    with pytest.raises(BioLLMError, match="not valid JSON"):
        open_workspace(folder)


def test_results_on_the_bundled_demo_go_to_the_user_cache_not_into_the_package(tmp_path):
    from workbench.state.features import analysis_folder
    from workbench.state.workspace import BUNDLED, is_read_only

    shipped = BUNDLED / "dictionaries" / "sae" / "layers.2"
    assert (analysis_folder(BUNDLED, shipped) / "table.parquet").is_file()  # read where shipped
    new = analysis_folder(BUNDLED, BUNDLED / "dictionaries" / "transcoders" / "layers.1.mlp.in")
    assert not new.is_relative_to(BUNDLED)
    assert new.is_relative_to(os.environ["XDG_CACHE_HOME"])
    assert is_read_only(BUNDLED / "dna") and not is_read_only(tmp_path / "new" / "ws")
    assert analysis_folder(tmp_path, shipped).parent == tmp_path / "analysis"


def test_a_stale_shipped_analysis_is_recomputed_into_the_user_cache_not_over_the_package():
    import dataclasses

    from biollm_engine.provenance import features_key
    from workbench.state.features import (FeatureResults, analysis_folder, cached,
                                          features_config, load_or_none, write_folder)
    from workbench.state.workspace import BUNDLED

    ws = open_workspace(BUNDLED)
    sae = next(d for d in ws.dictionaries if d.endswith("layers.2") and "sae" in d)
    shipped = analysis_folder(BUNDLED, sae)
    assert shipped.is_relative_to(BUNDLED) and (shipped / "table.parquet").is_file()
    out = write_folder(BUNDLED, sae)
    assert not out.is_relative_to(BUNDLED) and out.is_relative_to(os.environ["XDG_CACHE_HOME"])
    # other options than the shipped analysis': it is stale for them, so a new one is written
    # where write_folder says and found there by the next look-up
    cfg = dataclasses.replace(features_config(BUNDLED, ws.model, ws.data[0], sae, "bulk_labels"),
                              top_n=7)
    assert load_or_none(shipped, cfg) is None and cached(BUNDLED, sae, cfg) is None
    FeatureResults.load(shipped).save(out, features_key(cfg))
    found = cached(BUNDLED, sae, cfg)
    assert found is not None and found.num_features == FeatureResults.load(shipped).num_features


def test_a_cached_analysis_is_shown_only_for_the_inputs_it_was_computed_from(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from workbench.state.features import analysis_folder, features_config, load_or_none
    from workbench.state.workspace import BUNDLED

    ws = tmp_path / "demo"
    shutil.copytree(BUNDLED, ws, ignore=shutil.ignore_patterns("dna", "cache"))
    sae = ws / "dictionaries" / "sae" / "layers.2"
    folder = analysis_folder(ws, sae)

    def cfg(**kw):
        return features_config(ws, str(ws / "model"), str(ws / "cells.h5ad"), str(sae),
                               "bulk_labels", **kw)

    assert load_or_none(folder, cfg()) is not None  # the shipped one, moved with its workspace
    assert load_or_none(folder, cfg(top_n=3)) is None  # other options
    weights = sae / "dictionary.safetensors"
    tensors = load_file(weights)
    tensors["W_dec"][0, 0] += 1e-3  # the dictionary retrained, same path
    save_file(tensors, weights, metadata={"format": "pt"})
    assert load_or_none(folder, cfg()) is None


def test_colourings():
    c = col.categorical("t", np.array(["b", "a", None, "b"], dtype=object), ["#ff0000", "#00ff00"])
    assert c.categories == ["a", "b"] and list(c.codes) == [1, 0, -1, 1]
    assert c.colours == ["#ff0000", "#00ff00"] and c.value_text(2) == "NA"
    many = col.categorical("t", [str(i) for i in range(40)])
    assert len(set(many.colours)) == 40
    v = np.array([0.0, 1.0, np.nan, 3.0], dtype=np.float32)
    c = col.continuous("f", v, zero_is_grey=True)
    assert list(c.levels == 0) == [True, False, True, False]
    assert c.vmin == 0.0 and c.vmax == 3.0 and c.levels[3] == col.LEVELS


def test_cells_state_on_pbmc(pbmc):
    s = CellsState()
    events = []
    s.selection_changed.connect(lambda: events.append("sel"))
    s.set_data(pbmc)
    assert s.obsm_key == "X_umap" and s.embedding_keys() == ["X_umap", "X_pca"]
    assert s.type_key == "bulk_labels" and s.colour_by == "bulk_labels"
    with pytest.raises(BioLLMError, match="neither an obs column"):
        s.set_colour("no_such_column")
    with pytest.raises(BioLLMError, match="one value per cell"):
        s.set_values(np.zeros(3), "short")
    xy = pbmc.obsm["X_umap"]
    s.select_rect(5, -5, 0, 10)  # corners in any order
    expected = np.flatnonzero((xy[:, 0] >= -5) & (xy[:, 0] <= 5) & (xy[:, 1] >= 0)
                              & (xy[:, 1] <= 10))
    np.testing.assert_array_equal(s.selection, expected)
    assert events == ["sel"]
    a = pbmc.copy()
    a.obs["barcode"] = a.obs_names.astype(str)  # an identifier, not a grouping
    s.set_data(a)
    assert "barcode" not in s.categorical_columns() and "barcode" in s.colour_options()
    with pytest.raises(BioLLMError, match="700 distinct values"):
        s.set_colour("barcode")
    assert s.colour_by == "bulk_labels" and s.colouring().kind == "categorical"
    s.set_embedding("X_pca")
    np.testing.assert_allclose(s.coords, pbmc.obsm["X_pca"][:, :2], rtol=1e-6)


def test_raster_draws_each_cell_where_it_is_and_selection_on_top():
    xy = np.array([[0.5, 0.5], [0.5, 0.5], [9.5, 9.5]], dtype=np.float32)
    fp = raster.footprint(xy, (0, 10), (0, 10), 10, 10)
    c = col.categorical("t", ["a", "b", "a"], ["#ff0000", "#0000ff"])
    lut = np.zeros((256, 4), np.uint8)
    img = raster.render(fp, raster.palette(c, 3, lut, selection=np.array([1])))
    assert img.shape == (10, 10, 4)
    # cells 0 and 1 share pixel (row 0, col 0): the selected one (blue) is drawn
    assert tuple(img[0, 0]) == (0, 0, 255, 255)
    # cell 2 is unselected: washed out toward white, but drawn at (row 9, col 9)
    assert img[9, 9, 3] == 255 and img[9, 9, 0] > 200 and img[9, 9, 2] < 200
    assert img[5, 5, 3] == 0  # background stays transparent
    win = raster.winners(fp, raster.palette(c, 3, lut, selection=np.array([1])))
    assert win[0] == 1 and win[99] == 2 and win[55] == -1


def test_feature_table_equals_dense_statistics(pbmc):
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(700, 30)), 0).astype(np.float32)
    types = pbmc.obs["bulk_labels"].values
    for m in (acts, sp.csr_matrix(acts)):
        df = feature_stats(m, types, {4: "four"})
        np.testing.assert_allclose(df["frequency"], (acts > 0).mean(0))
        np.testing.assert_allclose(df["mean"], acts.mean(0), rtol=1e-5)
        np.testing.assert_allclose(df["max"], acts.max(0))
        cats = list(types.categories)
        means = np.stack([acts[np.asarray(types) == t].mean(0) for t in cats])
        assert list(df["top_type"]) == [cats[i] for i in means.argmax(0)]
        assert df["label"][4] == "four" and df["label"][0] == ""
    a = pbmc.copy()
    a.obsm["X_sae"] = sp.csr_matrix(acts)
    assert activation_keys(a) == ["X_sae", "X_pca"] and default_activation_key(a) == "X_sae"
    assert default_activation_key(pbmc) is None
