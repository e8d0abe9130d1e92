"""Logit lens through the real final norm and unembedding; DNA per-base tracks and bedGraph."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from biollm_engine.analysis.chunks import TokenSources, chunked
from biollm_engine.analysis.logit_lens import _best_by_group, logit_lens, unembedding, vocab_map
from biollm_engine.analysis.tracks import BedGraphWriter, base_tracks, write_bedgraph
from biollm_engine.errors import BioLLMError
from biollm_engine.models import load_model


def test_lens_ranks_tokens_like_the_model_reading_the_direction(tiny_model_dirs):
    """For RMSNorm models, lm_head(final_norm(d)) is W_U (g * d) up to a positive factor, so the
    lens must rank tokens exactly as the model's own logits for a residual equal to d. Gemma 2
    scales by (1 + weight), the case a plain `weight` would get wrong."""
    lm = load_model(str(tiny_model_dirs("gemma2")), device="cpu")
    norm = lm.module(lm.arch.final_norm)
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight))  # a non-trivial scale
    W_dec = torch.randn(6, lm.d_model)
    lens = logit_lens(W_dec, *unembedding(lm), top_n=8, tokenizer=lm.tokenizer)
    with torch.no_grad():
        logits = lm.module(lm.arch.unembed)(norm(W_dec[:, None, :]))[:, 0]
    np.testing.assert_array_equal(lens.promoted_ids, logits.topk(8).indices.numpy())
    np.testing.assert_array_equal(lens.suppressed_ids,
                                  logits.topk(8, largest=False).indices.numpy())


def test_lens_aggregates_to_genes_and_cell_type_words(tiny_model_dirs):
    lm = load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")
    tok = lm.tokenizer
    # tokens of the tiny vocabulary that spell a gene symbol (MAL) and a cell-type word
    gene_tok = tok.convert_tokens_to_ids("ĠMAL")
    word_tok = tok.convert_tokens_to_ids("Ġexpression")
    genes = ["LYZ", "MAL", "CD74"]
    cell_types = ["CD14+ Monocyte", "High expression cell", "NK cell"]
    gmap = vocab_map(tok, genes)
    assert gmap[gene_tok] == 1
    assert {tok.decode([t]).strip() for t in np.flatnonzero(gmap >= 0)} == {"MAL"}
    cmap = vocab_map(tok, cell_types, words=True)
    assert cmap[word_tok] == 1
    assert cmap[tok.convert_tokens_to_ids("Ġcell")] == -1  # a generic word maps to no type

    W_U, g = unembedding(lm)
    with torch.no_grad():
        W_U[gene_tok] *= 50  # make the gene token's direction dominant
        W_U[word_tok] *= 50
    W_dec = torch.stack([W_U[gene_tok] / g, W_U[word_tok] / g, -W_U[gene_tok] / g])
    lens = logit_lens(W_dec, W_U, g, top_n=3, tokenizer=tok, genes=genes, cell_types=cell_types)
    assert lens.promoted_ids[0, 0] == gene_tok and lens.suppressed_ids[2, 0] == gene_tok
    cols = lens.columns()
    assert cols["promoted_gene"][0] == "MAL"
    assert cols["promoted_cell_type"][1] == "High expression cell"
    # the third lowers MAL: its most suppressed gene, far below the first's (which raises it)
    assert cols["suppressed_gene"][2] == "MAL"
    assert lens.suppressed_gene_score[2] < -10 < lens.suppressed_gene_score[0]
    # a group counts as raised only above zero, as lowered only below
    scores = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -3.0, 0.5]])
    best, _ = _best_by_group(scores, np.array([0, 0, -1]), 1)
    low, _ = _best_by_group(scores, np.array([0, 0, -1]), 1, lowest=True)
    assert best.tolist() == [0, -1] and low.tolist() == [-1, 0]
    assert cols["promoted"][0].startswith(repr(tok.decode([gene_tok])))
    with pytest.raises(BioLLMError, match="decoder width"):
        logit_lens(torch.zeros(2, 7), W_U)


def test_base_tracks_take_the_max_over_overlapping_windows(tmp_path):
    # record 0 is 10 bases, read by two overlapping windows: bases 0-5 and 4-9
    unit = np.r_[np.arange(0, 6), np.arange(4, 10), np.arange(0, 3)]
    record = np.r_[np.zeros(12, int), np.ones(3, int)]
    position = np.r_[np.arange(6), np.arange(6), np.arange(3)]
    acts = np.zeros((15, 3), np.float32)
    acts[4, 1] = 1.0     # window 1, base 4
    acts[6, 1] = 2.0     # window 2, base 4: the max wins
    acts[11, 1] = 0.5    # base 9
    acts[13, 2] = 4.0    # record 1, base 1
    src = TokenSources(record, position, np.full(15, 65), unit)
    tracks = base_tracks(chunked(sp.csr_matrix(acts), src, 5), [1, 2], {0: 10, 1: 3})
    expect0 = np.zeros((2, 10), np.float32)
    expect0[0, 4], expect0[0, 9] = 2.0, 0.5
    np.testing.assert_array_equal(tracks[0], expect0)
    np.testing.assert_array_equal(tracks[1], [[0, 0, 0], [0, 4.0, 0]])
    # a 3-base token (k-mer tokenizer) covers its bases
    span = np.ones(100, int)
    span[65] = 3
    wide = base_tracks(chunked(sp.csr_matrix(acts), src, 50), [2], {0: 10, 1: 3}, span=span)
    np.testing.assert_array_equal(wide[1], [[0, 4.0, 4.0]])

    path = write_bedgraph(expect0[0], "chr1", tmp_path / "f1.bedgraph", name="feature_1")
    lines = path.read_text().splitlines()
    assert lines == ["track type=bedGraph name=feature_1", "chr1\t4\t5\t2", "chr1\t9\t10\t0.5"]
    with pytest.raises(BioLLMError, match="chromosome"):
        write_bedgraph(expect0[0], "chr 1", tmp_path / "x.bedgraph")
    with pytest.raises(BioLLMError, match="out of range"):
        base_tracks(chunked(sp.csr_matrix(acts), src, 50), [7], {0: 10, 1: 3})


def reference_bedgraph(blocks, skip_zeros=True) -> list[str]:
    """Runs of equal value base by base: the plain reading of the bedGraph format."""
    runs = []
    for chrom, start, values in blocks:
        for i, v in enumerate(np.asarray(values, np.float64)):
            if runs and runs[-1][0] == chrom and runs[-1][2] == start + i and runs[-1][3] == v:
                runs[-1][2] += 1
            else:
                runs.append([chrom, start + i, start + i + 1, v])
    return [f"{c}\t{s}\t{e}\t{v:.6g}" for c, s, e, v in runs if not (skip_zeros and v == 0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["chr1", "chr%2"]), st.integers(0, 3),
                          st.lists(st.sampled_from([0.0, 0.0, 1.5, 2.25, 1 / 3, -7.0]),
                                   max_size=30)), max_size=6),
       st.booleans())
def test_bedgraph_writer_writes_the_runs_of_a_base_by_base_reading(tmp_path_factory, parts,
                                                                   skip_zeros):
    """Blocks as the stream hands them over (some contiguous, some with gaps or a new chrom):
    the vectorised writer gives the same lines as a base-by-base reading."""
    blocks, pos = [], {}
    for chrom, gap, values in parts:
        start = pos.get(chrom, 0) + gap
        blocks.append((chrom, start, np.asarray(values, np.float32)))
        pos[chrom] = start + len(values)
    path = tmp_path_factory.mktemp("bg") / "t.bedgraph"
    with BedGraphWriter(path, "t", skip_zeros=skip_zeros) as w:
        for chrom, start, values in blocks:
            w.write(chrom, start, values)
    lines = path.read_text().splitlines()
    assert lines[0] == "track type=bedGraph name=t"
    assert lines[1:] == reference_bedgraph(blocks, skip_zeros)
