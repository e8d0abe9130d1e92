"""Annotation readers: GenBank compound locations part by part, BED name column as types only
when it holds categories, GFF3 percent-decoding."""

import gzip

import numpy as np
import pytest

from biollm_engine.errors import BioLLMError
from biollm_engine.inputs.annotations import (MAX_BED_TYPES, annotation_types, base_masks,
                                              read_annotations)
from biollm_engine.inputs.dna import read_features


def write_genbank(path, features, length=1000, circular=False):
    from Bio.Seq import Seq
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rng = np.random.default_rng(0)
    rec = SeqRecord(Seq("".join(rng.choice(list("ACGT"), length))), id="NC_X.1", name="NC_X",
                    annotations={"molecule_type": "DNA",
                                 "topology": "circular" if circular else "linear"})
    rec.features = features
    write([rec], str(path), "genbank")
    return path


def inside(table, types, length=1000):
    return {t: np.flatnonzero(m) for t, m in
            zip(types, base_masks(table, "NC_X.1", 0, length, types))}


def test_genbank_join_leaves_the_intron_outside_the_cds(tmp_path):
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature

    cds = CompoundLocation([FeatureLocation(100, 200, strand=-1),
                            FeatureLocation(300, 420, strand=-1)])
    path = write_genbank(tmp_path / "intron.gb", [
        SeqFeature(FeatureLocation(0, 1000, strand=1), type="source"),
        SeqFeature(cds, type="CDS", qualifiers={"gene": ["abcA"]})])
    assert "join(" in path.read_text()
    table = read_annotations(path)
    assert table[["start", "end", "strand", "name"]].values.tolist() == \
        [[100, 200, "-", "abcA"], [300, 420, "-", "abcA"]]
    mask = inside(table, ["CDS"])["CDS"]
    np.testing.assert_array_equal(mask, np.r_[100:200, 300:420])  # intron 200..300 outside


def test_genbank_cds_across_the_origin_of_a_circular_record(tmp_path):
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature

    cds = CompoundLocation([FeatureLocation(940, 1000, strand=1),
                            FeatureLocation(0, 30, strand=1)])
    path = write_genbank(tmp_path / "circ.gb", [SeqFeature(cds, type="CDS")], circular=True)
    mask = inside(read_annotations(path), ["CDS"])["CDS"]
    np.testing.assert_array_equal(mask, np.r_[0:30, 940:1000])  # not the 910 bases between
    feats = read_features(path)
    assert feats[["start", "end"]].values.tolist() == [[940, 1000], [0, 30]]


def test_genbank_part_on_another_record_is_left_out(tmp_path):
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature

    cds = CompoundLocation([FeatureLocation(0, 90, strand=1, ref="AB000001.1"),
                            FeatureLocation(10, 50, strand=1)])
    path = write_genbank(tmp_path / "remote.gb", [SeqFeature(cds, type="CDS")])
    assert "AB000001.1:" in path.read_text()
    assert read_annotations(path)[["start", "end"]].values.tolist() == [[10, 50]]


def test_bed3_is_one_type_named_after_the_file(tmp_path):
    bed = tmp_path / "enhancers.hg38.bed.gz"
    bed.write_bytes(gzip.compress(b"chr1\t10\t20\nchr1\t30\t35\n"))
    b = read_annotations(bed)
    assert annotation_types(b) == ["enhancers"] and list(b["name"]) == ["", ""]


def test_bed_names_are_types_when_they_are_categories(tmp_path):
    names = [f"cat{i % MAX_BED_TYPES}" for i in range(3 * MAX_BED_TYPES)]
    bed = tmp_path / "classes.bed"
    bed.write_text("".join(f"chr1\t{10 * i}\t{10 * i + 5}\t{n}\t0\t+\n"
                           for i, n in enumerate(names)) + "chr1\t5000\t5010\t.\n")
    b = read_annotations(bed)
    assert len(annotation_types(b)) == MAX_BED_TYPES + 1  # 64 names and the unnamed line
    assert list(b["type"][:3]) == ["cat0", "cat1", "cat2"] and b["type"].iloc[-1] == "classes"


def test_bed_of_genes_is_one_type_keeping_the_gene_names(tmp_path):
    genes = [f"GENE{i}" for i in range(MAX_BED_TYPES + 1)]
    bed = tmp_path / "refGene.bed"
    bed.write_text("".join(f"chr1\t{100 * i}\t{100 * i + 50}\t{g}\t0\t-\n"
                           for i, g in enumerate(genes)))
    b = read_annotations(bed)
    assert annotation_types(b) == ["refGene"]
    assert list(b["name"]) == genes and set(b["strand"]) == {"-"}
    mask = base_masks(b, "chr1", 0, 300, ["refGene"])[0]
    np.testing.assert_array_equal(np.flatnonzero(mask), np.r_[0:50, 100:150, 200:250])


def test_gff3_is_percent_decoded(tmp_path):
    gff = tmp_path / "esc.gff3"
    gff.write_text("##gff-version 3\n"
                   "ctg%7C1\tx\tgene\t1\t10\t.\t+\t.\tID=g1;Name=a%3Bb%3Dc%26d%2Ce%09f%25\n"
                   "ctg%7C1\tx\tmisc%20RNA\t5\t8\t.\t?\t.\tID=r%3B1;Note=x\n")
    g = read_annotations(gff)
    assert list(g["record_name"]) == ["ctg|1", "ctg|1"]
    assert list(g["name"]) == ["a;b=c&d,e\tf%", "r;1"]  # escaped ';' splits nothing
    assert list(g["type"]) == ["gene", "misc RNA"] and list(g["strand"]) == ["+", "."]


def test_malformed_lines_name_file_and_line(tmp_path):
    gff = tmp_path / "bad.gff3"
    gff.write_text("##gff-version 3\nc\tx\tgene\t1\t10\t.\t+\t.\tID=a\nc\tx\tgene\tone\t10\t.\t+"
                   "\t.\tID=b\n")
    with pytest.raises(BioLLMError, match=r"bad.gff3 line 3: start 'one' is not a whole number"):
        read_annotations(gff)
    bed = tmp_path / "bad.bed"
    bed.write_text("c\t10\t20\tx\nc\t30\t25\tx\n")
    with pytest.raises(BioLLMError, match=r"bad.bed line 2: interval 30..25"):
        read_annotations(bed)
