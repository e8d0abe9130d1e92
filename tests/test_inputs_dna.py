"""DNA inputs: streaming FASTA / FASTA.gz / GenBank, windows, reverse complement, tokens → bases."""

import gzip
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biollm_engine.errors import BioLLMError
from biollm_engine.inputs import (DnaConfig, DnaDataset, open_data, read_features, read_sequences,
                                  reverse_complement, window_spans, windows)
from biollm_engine.inputs import dna as dna_module

IUPAC = "ACGTNRYSWKMBDHV"


def random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def write_fasta(path, records, width=60):
    with open(path, "w") as f:
        for name, seq in records:
            f.write(f">{name} some description\n")
            f.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
    return path


@pytest.fixture(scope="module")
def records():
    # chr2 is soft-masked in part and carries IUPAC ambiguity codes
    chr2 = random_dna(1500, 2)
    chr2 = chr2[:100] + chr2[100:300].lower() + "NNNNRYKM" + chr2[308:]
    return [("chr1", random_dna(2345, 1)), ("chr2", chr2), ("short", "ACGTTGCA")]


@pytest.fixture(scope="module")
def fasta(tmp_path_factory, records):
    return write_fasta(tmp_path_factory.mktemp("dna") / "genome.fa", records)


def test_reverse_complement_is_exact():
    assert reverse_complement("ACGTRYSWKMBDHVN") == "NBDHVKMWSRYACGT"
    assert reverse_complement("AACGTTTG") == "CAAACGTT"
    assert reverse_complement("ACGTRYKMBDHVSWN") == "NWSBDHVKMRYACGT"
    assert reverse_complement("acgTn") == "nAcgt"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=IUPAC + IUPAC.lower(), max_size=300))
def test_reverse_complement_is_an_involution(seq):
    rc = reverse_complement(seq)
    assert reverse_complement(rc) == seq and len(rc) == len(seq)
    assert set(rc) <= set(IUPAC + IUPAC.lower())


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 500), st.integers(1, 80), st.integers(1, 80))
def test_windows_with_stride_cover_every_base(length, window, stride):
    spans = window_spans(length, window, stride)
    covered = np.zeros(length, dtype=int)
    for s, e in spans:
        assert 0 <= s < e <= length and e - s <= window
        covered[s:e] += 1
    assert np.array_equal(spans[:, 0], np.arange(len(spans)) * stride)
    if stride <= window:
        assert covered.min(initial=1) >= 1
        assert length == 0 or spans[-1, 1] == length
    else:
        assert covered.max(initial=0) <= 1


def test_streamed_windows_are_the_sequence(fasta, records):
    ds = open_data(fasta, window=100, stride=70, reverse_complement=True)
    assert isinstance(ds, DnaDataset) and ds.units is None and ds.kind == "dna"
    assert ds.records.name.tolist() == ["chr1", "chr2", "short"]
    assert ds.records.length.tolist() == [len(s) for _, s in records]
    table = ds.windows_table()
    assert len(table) == len(ds) == 2 * sum(len(window_spans(len(s), 100, 70)) for _, s in records)
    seqs = {name: seq.upper() for name, seq in records}
    n = 0
    for w in ds.windows():
        row = table.loc[w.index]
        assert (row["name"], row.start, row.end, row.strand) == (w.name, w.start, w.end, w.strand)
        forward = seqs[w.name][w.start:w.end]
        assert w.seq == (forward if w.strand == "+" else reverse_complement(forward))
        n += 1
    assert n == len(ds)
    assert "3 records, 3,853 bases" in ds.describe() and "both strands" in ds.describe()


def test_long_record_streams_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(dna_module, "CHUNK_BASES", 1000)  # many chunk boundaries inside windows
    seq = random_dna(20_011, 5)
    path = write_fasta(tmp_path / "long.fa", [("long", seq)], width=77)
    chunks = list(read_sequences(path))
    assert "".join(c for *_, c in chunks) == seq and max(len(c) for *_, c in chunks) < 1100
    ds = DnaDataset(path, DnaConfig(window=1500, stride=1200))
    windows = list(ds.windows())
    assert [w.seq for w in windows] == [seq[s:e] for s, e in window_spans(len(seq), 1500, 1200)]
    assert [w.index for w in ds.windows(indices=[16, 3])] == [3, 16]


def test_one_line_records_and_long_headers_stream_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(dna_module, "READ_BLOCK", 37)  # lines and headers cross block boundaries
    monkeypatch.setattr(dna_module, "CHUNK_BASES", 100)
    a, b = random_dna(1000, 11), random_dna(333, 12)
    long_header = "chrA " + "description " * 10
    path = tmp_path / "oneline.fa"
    path.write_bytes(f">{long_header}\r\n{a}\r\n\r\n>chrB\n{b}".encode())
    chunks = list(read_sequences(path))
    assert max(len(c) for *_, c in chunks) <= 100 + 37
    assert {n for _, n, _, _ in chunks} == {"chrA", "chrB"}
    assert "".join(c for r, _, _, c in chunks if r == 0) == a
    assert "".join(c for r, _, _, c in chunks if r == 1) == b
    ds = DnaDataset(path, DnaConfig(window=128, stride=100))
    assert [w.seq for w in ds.windows() if w.name == "chrB"] == \
        [b[s:e] for s, e in window_spans(333, 128, 100)]
    path.write_text(f">chrA\n{a[:500]}J{a[501:]}\n")
    with pytest.raises(BioLLMError, match="'chrA' has 'J' at position 501 \\(line 2\\)"):
        DnaDataset(path)


def test_windows_in_assembly_gaps_can_be_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(dna_module, "CHUNK_BASES", 500)  # a gap across chunk boundaries
    seq = "N" * 1200 + random_dna(700, 6) + "n" * 300 + random_dna(250, 7) + "N" * 90
    path = write_fasta(tmp_path / "gaps.fa", [("chr", seq), ("allN", "N" * 400)])
    every = DnaDataset(path, DnaConfig(window=200, stride=100))
    ds = DnaDataset(path, DnaConfig(window=200, stride=100, max_n_fraction=0.5))
    spans = window_spans(len(seq), 200, 100)
    n_frac = [seq[s:e].upper().count("N") / (e - s) for s, e in spans]
    expected = [(s, e) for (s, e), f in zip(spans, n_frac) if f <= 0.5]
    assert 0 < len(expected) < len(spans) and len(every) == len(spans) + 3
    table = ds.windows_table()
    assert list(zip(table.start, table.end)) == expected and set(table.name) == {"chr"}
    assert [w.seq for w in ds.windows()] == [seq[s:e].upper() for s, e in expected]
    assert "over 50% N skipped" in ds.describe()


def test_byte_tokens_map_to_forward_bases(fasta, records):
    ds = open_data(fasta, window=64, stride=50, reverse_complement=True)
    forward = {name: seq.upper() for name, seq in records}
    table = ds.windows_table()
    for ex in ds.examples():
        w = table.loc[ex.record]
        bases = forward[w["name"]]
        assert ex.input_ids.dtype == np.int64 and ex.keep.all()
        assert bytes(ex.input_ids.astype(np.uint8)).decode() == ex.text
        read = np.array([bases[u] for u in ex.unit])
        letters = np.array(list(ex.text))
        if w.strand == "+":
            assert np.array_equal(ex.unit, np.arange(w.start, w.end))
            assert np.array_equal(read, letters)
        else:
            assert np.array_equal(ex.unit, np.arange(w.end - 1, w.start - 1, -1))
            assert "".join(read) == reverse_complement("".join(letters))[::-1]  # complement
    first = next(ds.examples())
    assert first.input_ids[:4].tolist() == [ord(c) for c in forward["chr1"][:4]]
    assert set(np.unique(first.input_ids)) <= {65, 67, 71, 84}
    assert len(next(ds.examples(max_length=10))) == 10
    with pytest.raises(BioLLMError, match="genes_only.*DNA has none"):
        next(ds.examples(genes_only=True))


def test_soft_masked_bases_kept_when_asked(fasta, records):
    ds = open_data(fasta, window=5000, uppercase=False)
    chr2 = [w for w in ds.windows() if w.name == "chr2"][0]
    assert chr2.seq == records[1][1] and chr2.seq[150].islower()


def test_model_tokenizer_tokens_map_to_their_first_base(fasta, records):
    from tiny_models import build_tokenizer

    tok = build_tokenizer()
    ds = open_data(fasta, window=120, stride=100, reverse_complement=True, tokenizer="model")
    forward = {name: seq.upper() for name, seq in records}
    table = ds.windows_table()
    multi = 0
    for ex in ds.examples(tok):
        w = table.loc[ex.record]
        covered = []
        for tid, u in zip(ex.input_ids, ex.unit):
            piece = tok.decode([tid])
            covered += range(u, u + len(piece))
            if w.strand == "+":
                assert forward[w["name"]][u:u + len(piece)] == piece
            else:
                assert reverse_complement(forward[w["name"]][u:u + len(piece)]) == piece
            multi += len(piece) > 1
        assert sorted(covered) == list(range(w.start, w.end))  # every base once, either strand
    assert multi > 50  # the BPE learned multi-base tokens
    with pytest.raises(BioLLMError, match="tokenizer"):
        next(ds.examples(None))


def test_kmer_tokenizer_without_offsets(fasta, records, tmp_path):
    from transformers import EsmTokenizer  # a slow k-mer tokenizer, as Nucleotide Transformer's

    specials = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>"]
    kmers = ["".join(p) for p in itertools.product("ACGTN", repeat=6)]
    (tmp_path / "vocab.txt").write_text("\n".join(specials + kmers + list("ACGTN")) + "\n")
    tok = EsmTokenizer(str(tmp_path / "vocab.txt"))
    ds = open_data(fasta, window=40, stride=40, tokenizer="model")
    ex = next(ds.examples(tok))
    assert not ex.keep[0] and not ex.keep[-1] and ex.unit[0] == -1  # <cls>, <eos>
    assert ex.unit[1:-1].tolist()[:6] == [0, 6, 12, 18, 24, 30]
    assert ex.unit[1:-1].tolist()[6:] == [36, 37, 38, 39]  # the tail as single bases


def test_fasta_gz_reads_the_same(fasta, tmp_path):
    gz = tmp_path / "genome.fa.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    a = DnaDataset(fasta, DnaConfig(window=300, stride=250))
    b = open_data(gz, window=300, stride=250)
    assert a.windows_table().equals(b.windows_table())
    assert [w.seq for w in a.windows()] == [w.seq for w in b.windows()]
    assert [w.seq for w in windows(gz, DnaConfig(300, 250))] == [w.seq for w in a.windows()]


def test_genbank_record_with_features(tmp_path):
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    seq = random_dna(900, 9)
    rec = SeqRecord(Seq(seq), id="NC_TEST.1", name="NC_TEST", description="test genome",
                    annotations={"molecule_type": "DNA"})
    rec.features = [
        SeqFeature(FeatureLocation(0, 900, strand=1), type="source"),
        SeqFeature(FeatureLocation(99, 402, strand=1), type="CDS",
                   qualifiers={"gene": ["abcA"], "locus_tag": ["T_0001"], "product": ["kinase"]}),
        SeqFeature(FeatureLocation(500, 800, strand=-1), type="gene",
                   qualifiers={"gene": ["xyzB"]}),
    ]
    path = tmp_path / "test.gbk"
    write([rec], path, "genbank")
    ds = open_data(path, window=256, stride=200)
    assert ds.format == "genbank" and "GenBank" in ds.describe()
    assert ds.records.name.tolist() == ["NC_TEST.1"]
    assert [w.seq for w in ds.windows()] == [seq[s:e] for s, e in window_spans(900, 256, 200)]
    feats = ds.features
    cds = feats[feats.type == "CDS"].iloc[0]
    assert (cds.start, cds.end, cds.strand, cds.gene, cds.locus_tag, cds["product"]) == \
        (99, 402, "+", "abcA", "T_0001", "kinase")
    gene = feats[feats.type == "gene"].iloc[0]
    assert (gene.start, gene.end, gene.strand) == (500, 800, "-")
    assert read_features(tmp_path / "test.gbk").equals(feats)


def test_bad_letters_name_record_and_position(tmp_path):
    good = random_dna(130, 3)
    path = write_fasta(tmp_path / "bad.fa", [("ok", good), ("chrX", good[:70] + "AXG" + good[73:])])
    with pytest.raises(BioLLMError, match=r"record 'chrX' has 'X' at position 72 \(line 7\)"):
        DnaDataset(path)
    (tmp_path / "twice.fa").write_text(">same\nACGT\n>same\nGGCC\n")
    assert open_data(tmp_path / "twice.fa", window=2).windows_table().name.tolist() == ["same"] * 4
    (tmp_path / "u.fa").write_text(">rna\nACGU\n")
    with pytest.raises(BioLLMError, match="'rna' has 'U' at position 4"):
        open_data(tmp_path / "u.fa")


def test_bad_inputs(tmp_path):
    with pytest.raises(BioLLMError, match="does not exist"):
        open_data(tmp_path / "none.fa")
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(BioLLMError, match="empty"):
        open_data(tmp_path / "empty.fa")
    (tmp_path / "blank.fa").write_text("\n\n")
    with pytest.raises(BioLLMError, match="empty"):
        open_data(tmp_path / "blank.fa")
    (tmp_path / "words.fa").write_text("hello world\n")
    with pytest.raises(BioLLMError, match="neither FASTA"):
        open_data(tmp_path / "words.fa")
    (tmp_path / "headers.fa").write_text(">a\n>b\n")
    with pytest.raises(BioLLMError, match="no sequence"):
        open_data(tmp_path / "headers.fa")
    cut = gzip.compress(b">a\n" + random_dna(20_000, 4).encode())[:2000]
    (tmp_path / "cut.fa.gz").write_bytes(cut)
    with pytest.raises(BioLLMError, match="cannot be read"):
        open_data(tmp_path / "cut.fa.gz")
    locus = "LOCUS       X                         8 bp    DNA     linear   UNK 01-JAN-1980\n"
    (tmp_path / "cut.gbk").write_text(locus + "FEATURES             Location/Qualifiers\nORIGIN\n")
    with pytest.raises(BioLLMError, match="not a valid GenBank"):
        open_data(tmp_path / "cut.gbk")
    (tmp_path / "z.gbk").write_text(locus + "ORIGIN\n        1 acgtacgt\n        9 zz\n//\n")
    with pytest.raises(BioLLMError, match="record 'X' has 'Z' at position 9"):
        open_data(tmp_path / "z.gbk")
    with pytest.raises(BioLLMError, match="window and stride"):
        DnaConfig(window=0)
    with pytest.raises(BioLLMError, match="does not apply to dna"):
        open_data(tmp_path / "headers.fa", top_k=3)
    ds = DnaDataset(write_fasta(tmp_path / "ok.fa", [("a", "ACGT")]))
    with pytest.raises(BioLLMError, match="out of range"):
        list(ds.windows(indices=[1]))
