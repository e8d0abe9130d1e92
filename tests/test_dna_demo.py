"""The DNA demo: real SBW25 sequence and annotations, a quick deterministic build that learns,
and the committed demo's tracks (one value per base, equal to the committed bedGraphs)."""

import math

import numpy as np
import pandas as pd
import pytest

from biollm_engine.cli import main
from biollm_engine.demo.dna import DEFAULT_DNA_DEMO, build_dna_demo
from biollm_engine.demo.dna_data import TYPES, base_labels, codon_edges, load_records
from biollm_engine.fileio import read_json
from biollm_engine.inputs.dna import reverse_complement

FIGURES = DEFAULT_DNA_DEMO.parents[2] / "docs" / "figures"


@pytest.fixture(scope="module")
def records():
    return load_records()


@pytest.fixture(scope="module")
def quick_builds(tmp_path_factory):
    # the second build goes through `biollm demo build`, which puts the DNA demo in <out>/dna
    a, b = tmp_path_factory.mktemp("dna_a"), tmp_path_factory.mktemp("dna_b")
    first = build_dna_demo(a, quick=True)
    assert main(["demo", "build", "--part", "dna", "--quick", "--out", str(b)]) == 0
    assert not (b / "workspace.json").exists()  # --part dna leaves the cell demo alone
    return (a, first), (b / "dna", read_json(b / "dna" / "dna_demo.json"))


def test_annotations_are_real_genes(records):
    assert len(records) == 40 and sum(len(r.seq) for r in records) == 244_634
    starts, stops = [], []
    for r in records:
        for c in r.cds:
            start, stop = codon_edges(c, len(r.seq))
            read = (lambda s: r.seq[s[0]:s[1]]) if c.strand == 1 else \
                (lambda s: reverse_complement(r.seq[s[0]:s[1]]))
            starts += [read(start)] if start else []
            stops += [read(stop)] if stop else []
    assert np.mean([s in ("ATG", "GTG", "TTG") for s in starts]) == 1.0
    assert np.mean([s in ("TAA", "TAG", "TGA") for s in stops]) == 1.0
    # codon position 3 of this GC-rich genome is far richer in G+C than positions 1 and 2
    r = records[0]
    labels = base_labels(r)
    gc = np.isin(np.frombuffer(r.seq.encode(), np.uint8), [ord("G"), ord("C")])
    third = gc[labels[TYPES.index("codon 3 +")] | labels[TYPES.index("codon 3 -")]].mean()
    second = gc[labels[TYPES.index("codon 2 +")] | labels[TYPES.index("codon 2 -")]].mean()
    assert third > 0.7 > 0.5 > second
    assert (labels[TYPES.index("CDS")] ^ labels[TYPES.index("intergenic")]).all()


def test_heldout_loci_do_not_overlap_training_windows(records):
    held = [r.genome_span for r in records if r.heldout]
    train = [r.genome_span for r in records if not r.heldout]
    assert 3 <= len(held) <= 10
    assert not any(a < d and c < b for a, b in held for c, d in train)


def test_byte_tokenizer_reads_as_evo2_bytes(quick_builds):
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models import load_model

    folder, _ = quick_builds[0]
    lm = load_model(str(folder / "model"), device="cpu")
    assert lm.tokenizer("ACGTN", add_special_tokens=False)["input_ids"] == [65, 67, 71, 84, 78]
    cfg = dict(window=100, stride=60)
    by_model = list(DnaDataset(folder / "heldout.fa", DnaConfig(tokenizer="model", **cfg))
                    .examples(lm.tokenizer, indices=range(5)))
    by_byte = list(DnaDataset(folder / "heldout.fa", DnaConfig(tokenizer="byte", **cfg))
                   .examples(indices=range(5)))
    for m, b in zip(by_model, by_byte):
        assert np.array_equal(m.input_ids, b.input_ids) and np.array_equal(m.unit, b.unit)


def test_quick_build_learns_and_is_deterministic(quick_builds):
    (_, first), (folder, second) = quick_builds
    history = first["model"]["history"]
    assert history[0]["loss"] > 3  # starts near ln 256: bytes, not bases
    assert history[-1]["loss"] < math.log(4) - 0.02
    assert first["model"]["heldout_loss_nats"] < math.log(4) - 0.02
    assert first["sha256"] and first["sha256"] == second["sha256"]
    assert {"model/model.safetensors"} < set(first["sha256"])
    assert first["sae"]["fvu"] < 0.7
    bed = pd.read_csv(folder / "annotations.bed", sep="\t", header=None)
    assert set(bed[3]) == {"CDS", "start_codon", "stop_codon", "intergenic"}
    assert (folder / "source").exists() is False  # the copied source lives only in resources


def test_committed_demo_tracks_have_one_value_per_base(tmp_path):
    """The committed model and SAE, re-run on one held-out window, give every base exactly one
    value, equal to the committed bedGraph of each chosen feature."""
    from biollm_engine.analysis.dna_tracks import read_bedgraph
    from biollm_engine.analysis.encode import encode_live
    from biollm_engine.analysis.tracks import stream_tracks
    from biollm_engine.demo.dna_analysis import demo_paths
    from biollm_engine.dictionaries.formats import load_dictionary
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models import load_model

    p = demo_paths()
    best = pd.read_csv(FIGURES / "dna_enrichment.csv")
    features = sorted(set(best[best["rank"] == 1]["feature"]))
    text = p["heldout"].read_text()
    first = ">" + text.split(">")[1]
    (tmp_path / "one.fa").write_text(first)
    name = first[1:].split()[0]
    data = DnaDataset(tmp_path / "one.fa", DnaConfig(window=p["window"],
                                                     stride=p["window"] // 2))
    length = int(data.records["length"][0])
    lm = load_model(str(p["model"]), device="cpu")
    sae = load_dictionary(p["sae"])
    covered = np.zeros(length, int)
    values = np.zeros((len(features), length), np.float32)
    for record, start, vals in stream_tracks(encode_live(lm, data.examples(), sae),
                                             features, data.windows_table(), [length]):
        covered[start:start + vals.shape[1]] += 1
        values[:, start:start + vals.shape[1]] = vals
    assert (covered == 1).all()
    for i, f in enumerate(features):
        committed = read_bedgraph(FIGURES / "dna_tracks" / f"feature_{f}.bedgraph", name, length)
        # batches differ from the committed run's, so float rounding may flip a near-tie at
        # the TopK cut on a rare base; everywhere else the values are the committed ones
        same = np.isclose(values[i], committed, rtol=1e-4, atol=1e-4)
        assert same.mean() > 0.999 and (values[i] > 0).mean() > 0.01


def test_record_tracks_of_one_record_match_the_committed_bedgraph():
    """What the workbench's Tracks panel shows (its test covers the top-N choice)."""
    from biollm_engine.analysis.dna_tracks import read_bedgraph, record_tracks
    from biollm_engine.demo.dna_analysis import demo_paths
    from biollm_engine.errors import BioLLMError

    p = demo_paths()
    best = pd.read_csv(FIGURES / "dna_enrichment.csv")
    f = int(best[best["rank"] == 1]["feature"].iloc[0])
    args = dict(model=str(p["model"]), data=str(p["heldout"]), dictionary=str(p["sae"]),
                record=1, window=p["window"], stride=p["window"] // 2, device="cpu")
    t = record_tracks(features=[f], **args)
    committed = read_bedgraph(FIGURES / "dna_tracks" / f"feature_{f}.bedgraph", t.name,
                              t.values.shape[1])
    assert t.values.shape == (1, len(committed))
    assert np.isclose(t.values[0], committed, rtol=1e-4, atol=1e-4).mean() > 0.999
    with pytest.raises(BioLLMError, match="out of range"):
        record_tracks(features=[10_000], **args)
