"""DNA tracks end to end on real sequence: 6 kb of Bacillus velezensis FZB42 (the first bases of
MIBiG BGC0001090 as shipped in pyhmmer's MIT-licensed test data) through tiny DNA models."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from biollm_engine.cli import main
from biollm_engine.errors import BioLLMError

SEQ = "".join([
    "TGCCTTTAACGCTTTACAACAAATGTTGTCACGCTTTGAGCCGGCAGATGGGCCCAAAAATGATTGTCCGTTACTTTGAG"
    "ATCCGTTCCAGGTTGAAGATTGCTGCTGCTGCTCGTGATCCATCTGGATACTTGCGAAGCAGTTCCATTCTGCAATACGA"
    "AGTTTTGGTTGACCCCTGTGTTATTTTTATTAATGGCAACAATCACGACCTTATTGTCTCCTTTATAGGCTGACACGTAA"
    "ACATTCGGTTCAGGATTTTTCGTTGCATCAATCCTTACATAGCCAGGGCGCACAAATTTTGAGAAATGAGCCATATTGTA"
    "TCCGCGTTTGCTGATCATCCCATCTTCTTTCATAGGGCCGTATGATCTGCGGATGTACCACCACACGTAAGCTTGAAAAT"
    "CTCCCTCTACCATTGAATGATGAATATGCTCTGAAACACCTAAAGCCTCAGGCCAGCGATCCGCTGAATTGTTGTCACTA"
    "TTCGGATAGTATACCTCCGTCATCCATAGCTCTTTCCCTCCTCCTTTTTGTTTGAAAAGAGGATAAGGAAACTGACTGAC"
    "CTGAGTGCCGTACAGGTGGGTTCCGAGGATATCCATATTCCTAAGCGCCTGCGGATCGTTCAAAATGGGGTCCGATATAT"
    "TTTTCAGGTATTGAAATGATTCCGGCGCAATCACACGAGCATTAATGGAACCGGCATTCTCTCTCATGAAACGCAGGATT"
    "TCTTGGGGCGTCCACCATGTCCATTCGTGAGCGTAATCAGGCTCGTTTTGCATAGAAATCGCATACAGATTCACACCATT"
    "ACTTTTCATGAAATTAACGAAATCGTTAAGATGCTGCGCGTATGCGGCGTACTTATCGTATCTCAGCCGCTTAGCTGTTG"
    "TGTCACCATTATGATTGAAAGTCTCAACCATATCGTTTGGCGGATTCCAAGGGGAAGCAAAAACGATTGCTCCATGTTTG"
    "ATCGCACTCTTTGCAGTCTCCACTTCCTTGTACCAATTATTTCTATTTTCATCTACATGAATTCTTAAGACCGAAAAACC"
    "TAACTGATTCTGTCCATTGCCAAAAGCGGTCTCCCGTTGAGCCGCAGTCAAGTCTCCAATCCAAGCCGGGTGGTTCATTC"
    "CTCCAAAACCGCGAATCACTTGTCTTTCTGCAGATATATTAACTGTTGCATCACTTGCTGCTGAAACTTCAGTAACTCCC"
    "GGTCCTAAGAGCATGACGGACAGCATTGTGAAACATACCAATAATACACAAATTGTTTTTTTTACGCTCGACATCATTTT"
    "TTCCTCTCCTTCATATGTCGTTTATGGACTTAGAAAACGTACCTTTGTCTCCCTTTGCTTATCTTTGTGTAAACTGCCAG"
    "TAATCAAAATTAAACAAGTTTCCTGTACCAGTTCCGGTAAATACAAAGAATACGTTGTGAACACCGGATGCGCCGCTTAC"
    "CGCAGTTTCTATTTCTCTCCAAGATTGCGTTCCGCCTGTGGAAGGGACATTCAAGGTTCCGACAAGCTTACCGTTTGCAC"
    "TGTCTAGCCGCACTTCTATTTTCCCGCCAAGAGCGGACGCTACATTTGCTTTAAACGTCCTGGCACCGCCTGAGCCGAAG"
    "TCTGCATTTCCAACAGCAATCCAGTCTCCGTTATGAATGTTTGTGACATGTTGATTATTGACCGGGCCGCCGGGTGCTGA"
    "GGATGCCTCTGTCAAAATCCGTCCGTTCCAGGCAAACGTTTCCGCTTCTACGCGGTGATATGGATTCAAATTGGATAGCT"
    "GTTTGACACCTGCAAAATTTGCCGCTACCTCTTGCAGGGAGCCATCTGGATTATGCACAAGCTTATTAATATGGGGAGAA"
    "CGGTAACCTTTGCCGGCCCCGTAAAGAGCGGAGCTGACAGTTTGAGTATGATACACCACATACCACTCGTTTTTAAAATT"
    "GAAAACAGCATGATGATTGTTCCCGCCGCCTCCGAAAAATGCTCCCGGATTTTTCAGAAAGTGCCCTCTATACGAAAAAG"
    "AATCCATAGGACTTGAGCTGGTCATATAACCGATCTCACCTGGAGGTTTATCGGCCGGGTGCGCGCCCCCGAAATTGATA"
    "CAATAGGAATAGTAATATTTTCCGTTATACTTATGCATTCCCGAATCTTCAAACATAAAAGGCGCATCAATCGTAGACGC"
    "ATTTCCGGCAACACTGGTCATATCAGGACCTAATTTCATGACTCTTGCTGTTTTAGGATTGGCCCATTGCCCCTGTGCGG"
    "GATTTGAACCGCCCGGAACGCCTCCGCCGGCATATAGGTAACCGGTACCGTCATCATCTACGAATACTGCCGGATCAAAA"
    "AGCCATACAACACCGGACATTCCTGGCGTATTTGGCGTTACCAGCGCTTTTCCGATCGGATCTGTCCATGGGCCGGTCGG"
    "GCTGTCTGCGGTGAGAACCCCGATACCTCCGCCGCCGTTTGCGAAATAAAGGAAAAATTTATCCTTACCATTGATCTTTT"
    "TCACCGCGGCTGACGGGGCCCATGATGCTCCTGCCCATTTGGCAATCCCCCGGCCGCCATTCAGCCCATTGGCACCCGCT"
    "GCGGGAATCGTTCCGTGATCTGTCCAGTTCACCATATTCGCTGAAGATATGACGGATATTTTATTCAAATTGGCAAATGA"
    "ATTATCCTTAATCGTGCCGTCGCTATTATATTCATAGTCATCGCTTGACATATAGATGTAGACTCTTCCATTATAGGTCA"
    "GCGCAAACGGATCTGCGCCCAAATGATGGTCGATAAGCGGATTTGAATTCCCAACATGTTTTGCAATTGGAGTGCTGGCA"
    "GCATACGCAGACTTCCCAGTGAAGCAACTCAATAATAAAGCAAGGACCCATAGGCATACCCAACATTTTTTACACATAAC"
    "TTAACGCTCCTCCTTTTTTTAAAAATTTAGGCAACTTTTACCATTTGGGAACAAATTGCAGTACCGGCAGTAAAAAGCAG"
    "ACTCCGCAGTTAAGCAACTCAATAATAGAGCTAGTACCCATAAACATACGCTACACTTTTTTCTAATAACTTGACATCCT"
    "CCTTTTTCCTTAAAATGTATGATGATTTTTTTACCATTTGATGACAACTGGTCATGGAGAACGGCTCTGGAGTAAACCTT"
    "GCGAACACAGGAGTATGACTCTCGCCTTTTTAATAAAAACGCCGCTGAGTGCCAGGCCAGCGGCGTTTTACACTTGATCA"
    "TTTACATTTTGTCAAACTTTGCGTCCCCCGCAAACGATCCCATTGACAGTTGTTCTTCAAGAACAAGTCCGTGATGATGC"
    "CGTTCTTCAATCCTTTTGATAATAGATCGAATTGTATCCGTATTTTCTTCAATATTGTGAGGGTCAAAGATCGTCACATG"
    "GTCTCCTTTTAATTTGTACTCAAGGTAATGCTGTGCGGTTGATTGCTTCCATCCTCTATCGGTCAACTCGCCGCATAGAA"
    "AATGATGAATGTTGGCGTTCACCGCGCCGGAATTGATCAGTTTATTGTGATATGTGAGATAGCTTCTGATTTTATCCTTA"
    "ATGGAAGGAATGGTTAATAATTCTCTATAATAATCCGGAATGATATCCAGATTCCGATGAATGATCTCTTCGGTTTCCTC"
    "TTCCGAAAAATAATTCACCGAAACGGCTCTTTTAGAATCAAGCATCATAATGTCCGATACGATGCGTCCGCGCTTCTCCA"
    "AGGCTTTGGCAACCTCAAAAGCCAAATTCGACCCCGAGGAGTAACCAAGTAAAACAAAGGGCCCTTGTTCCTGAATGCCT"
    "ATCATGCTTTCTGCATACCGGTCAACGATCTCTTTTTCGTAAGACGGCTCTTCTAGGAAATCAGCGGCATAGACGGTGCA"
    "GCGGCCGTCAAGTCTTTTCGCCATTTCATTATAGACCAGCCCGTATCCGATTAAAGGCGGGAAACAGAACACAGGGATTG"
    "AACCGTTCTGATTCATCTTGACGAATACGTTATCCGTCTTGGACTCGAAAACTGCCGCTTGAATGGCGCGTGCCATTGTT"
    "TCGATGGTAGGAAAATCGTATACGGCTTGATAATGCATTTTGATTCCCATACGGTCGTTGATTTGATGAATAACTTGCAA"
    "TACTTTGAGCGAATGGCCGCCAACGTCAAAGAAGTTATCTTTAATTCCCGGGTCGCTGAGAGCTAAAATGTTCTTCCATA"
    "TCTCGGCCAGCTGCTTTTCAATTAACGTTCCGGGCGCTTCGTATTCGGTTCCGGTGAGCCTATTTCCCTCAGGGGCCGGC"
    "AAAGCTTTTCGATCGATTTTTCCATTTGCGGTTATCGGCATCTTCTCCATTTGTACAAAGTAAGCCGGTATCATATAAGC"
    "GGGCAGTTTGTTCAGTAAATGATGCTTCAGCTGCGCCGTATTTAATGAATCGTCTCCTGACAAGTAGGCGCACAGCTGCT"
    "TTGAGCCCTCTTCTTCAATTGCGATGACGACCGCTTCTTTGACAGATTCCAGTTGCAATAAAGCCGCTTCGACCTCGCCA"
    "ATTTCAATCCGGTAGCCCCGTATTTTCACCTGATGATCAATTCTTCCCAAATACTCGATATTGCCGTCCGGCAGCCACCG"
    "GGCGACATCTCCCGTTTTGTACATTTTTTCGCCTGCGGCAAACGGGTGTTCAACAAATTTCTCGCCCGTTAATTCAGGTC"
    "GGTTCAAATATCCTCTGGCCAGTCCCTCTCCTGCCACATAGAGCTCGCCCGGTATGCCCATTACCTGAATGCGCTGATAT"
    "TCGTCCAAAATATACGCTTGCAGAGTAGGAATAGGTTGTCCGATGTTGCTTCTGCCTTCGTCGATTTCCCGTTCCGTGAT"
    "TTCTTTATATGTGACATGAACGGTGGTTTCGGTGATGCCGTACATATTGATTAATTGGGTTAAAGGATATTTAAGCTTCC"
    "AGTCTTTCAAGAAGGATGGATTTAACGCCTCTCCGCCAAATATGATCTTTCGGATGTTTAAATTGGATTCGGGATCTGCT"
    "CTCTCCTCCTGCATCAGTTGATAGAAATAACTCGGCGTTTGATTTAAAATAGTCACAGCTTCCGATTTTAACAATTGCAA"
    "ATACCTTTCCGGGTTTTTTGCTATTTGTTTCGGAATAATCACTAATTTGCCCCCATACAGCAACGCTCCGTACATTTCCC"
    "ATACTGAAAAATCAAAGCAGAAGGAATGAAACAAAGTCCATGTGTCCGATGCATTAAAATCAAAAACATTTTTGTTGTTA"
    "AATAACAGACGAACCACGTTTTTATGTTCAATGAGCGTGCCTTTCGGATTCCCCGTTGTTCCTGATGTATAAATAACGTA"
    "GGCTAATTGATTTGGCATCACGTTCAGTTTGAGATTAGATGCTTCGGCGCCGTATGATGACGGATCGTCAAGGAAGACAG"
    "TATGACTTTGATAATCGGTACCTTCCAGAAGATGATGCTGCAATAATAAGATAGAGACGTTAGAATCCTCAAGCATATAA"
    "TGGATGCGTTCTTTCGGGTAATCCGGATCGATCGGTACGTAAACGCCCCCAGCTTTCAAAATAGCAAGGATGCCTATCAC"
    "CATCTCCGGTGAACGTTCCGCCATAATGCCGACAAGCTCCTCGGCCTGAAGTCCTTTGGCAACCAAGGTTCGGGCCAGCT"
    "GATTGGCGCGTTCATTTACTATCCGATACGTCATCTTCTTATCTTCAAAAACAATCGCTGCTTGCTCCGGCGTTCGCTCC"
    "GCTTGTTCTTCAAACAATTGATGAATCGTCTTTTCCTTCGGATACTCAGCCGCCGTATCGTTGAACTTATCTATCAGGAG"
    "CGATCGCTCATCCGCTGTTACGATATCGAGGTCTTGAACGCGAATTTCCTGATCGTCCGCCATTTGCTTCATAATTTGCA"
    "TGAAATGCGTCTGCATCCGTTCGACACTTGCTTGGTCATAAACATCTCGATTGTATACAAAACGAATGTCAATTTCTCCA"
    "TCCGGCATCACTATAAAAGTAAAATCGTAATGAGTATGTTCTTCCATATGAAAATCGAGAATGTCTAATGCGTTGTCATC"
])
MOTIF, MOTIF_RC = "TATAAA", "TTTATA"
D = 32


def write_genbank(path, seq=SEQ):
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rec = SeqRecord(Seq(seq), id="FZB42", name="FZB42", description="B. velezensis FZB42",
                    annotations={"molecule_type": "DNA"})
    rec.features = [SeqFeature(FeatureLocation(5, 1277, strand=-1), type="CDS"),
                    SeqFeature(FeatureLocation(1338, 2877, strand=-1), type="CDS")]
    write([rec], str(path), "genbank")
    return path


def kmer_tokenizer():
    """A 6-mer WordLevel tokenizer as Nucleotide Transformer v1 has: 6-mers from the start,
    leftover bases one by one."""
    import itertools

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<cls>", "<mask>", "<eos>"]
    words = ["".join(p) for p in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[ACGTN]{6}|[ACGTN]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   cls_token="<cls>", mask_token="<mask>", eos_token="<eos>")


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory):
    """A tiny ESM masked LM with a 6-mer tokenizer whose TATAAA embedding points along one
    direction, 20 long (other embeddings are ~0.02), so a feature can be planted on it."""
    import transformers as tf

    path = tmp_path_factory.mktemp("esm6")
    tokenizer = kmer_tokenizer()
    torch.manual_seed(0)
    cfg = tf.EsmConfig(vocab_size=len(tokenizer), hidden_size=D, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
                       position_embedding_type="absolute", token_dropout=False)
    model = tf.EsmForMaskedLM(cfg)
    with torch.no_grad():
        emb = model.esm.embeddings.word_embeddings.weight
        emb[tokenizer.convert_tokens_to_ids(MOTIF)] = 20 * torch.eye(D)[0]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def planted_dict(tmp_path_factory):
    """Feature 0 fires (value ~12) on the TATAAA direction only; feature 1 fires 1 everywhere."""
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary

    d = Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=D, num_latents=3,
                                    hookpoint="embed"))
    with torch.no_grad():
        d.W_enc.zero_()
        d.W_enc[0, 0] = 1.0
        d.b_enc.copy_(torch.tensor([-8.0, 1.0, -100.0]))
        d.b_dec.zero_()
    return d.save(tmp_path_factory.mktemp("dict") / "planted")


@pytest.fixture(scope="module")
def genbank(tmp_path_factory):
    return write_genbank(tmp_path_factory.mktemp("gb") / "fzb42.gb")


def motif_starts(seq, motif):
    return [m.start() for m in re.finditer(f"(?={motif})", seq)]


def read_bedgraph(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("track type=bedGraph")
    return [(c, int(s), int(e), float(v)) for c, s, e, v in (x.split("\t") for x in lines[1:])]


def test_planted_motif_feature_peaks_on_every_occurrence(esm_dir, planted_dict, genbank,
                                                         tmp_path):
    fwd = motif_starts(SEQ, MOTIF)
    assert fwd == [5267, 5931]  # the real sequence's occurrences
    bed = tmp_path / "motif.bed"
    bed.write_text("".join(f"FZB42\t{s}\t{s + 6}\tTATAAA\n" for s in fwd))
    out = tmp_path / "out"
    # stride 7 against 6-mers: every occurrence is read in frame by some window
    rc = main(["tracks", "--model", str(esm_dir), "--data", str(genbank), "--dict",
               str(planted_dict), "--features", "0,1", "--out", str(out), "--annotations",
               str(bed), "--window", "120", "--stride", "7", "--device", "cpu"])
    assert rc == 0
    peaks = read_bedgraph(out / "feature_0.bedgraph")
    assert [(s, e) for _, s, e, _ in peaks] == [(s, s + 6) for s in fwd]
    assert all(c == "FZB42" and v == pytest.approx(12, abs=0.5) for c, _, _, v in peaks)
    # feature 1 fires on every token: every base gets exactly one value, in one run
    assert read_bedgraph(out / "feature_1.bedgraph") == [("FZB42", 0, len(SEQ), 1.0)]
    enr = pd.read_csv(out / "enrichment.csv").set_index(["feature", "annotation"])
    assert enr.loc[(0, "TATAAA"), "auroc"] == pytest.approx(1.0)
    assert enr.loc[(0, "TATAAA"), "mean_outside"] == 0
    assert enr.loc[(1, "TATAAA"), "auroc"] == pytest.approx(0.5)
    top = pd.read_csv(out / "top_windows.csv")
    assert all(MOTIF in s for s in top[top.feature == 0]["sequence"])
    summary = pd.read_csv(out / "features.csv").set_index("feature")
    freq = summary["frequency"]
    assert freq[0] == pytest.approx(12 / len(SEQ)) and freq[1] == 1.0
    # per base, as the bedGraphs have them: feature 0 is about 12 on the motifs' 12 bases
    values = np.concatenate([np.full(e - s, v) for _, s, e, v in peaks])
    assert summary.at[0, "mean_firing"] == pytest.approx(values.mean(), rel=1e-5)
    assert summary.at[0, "mean"] == pytest.approx(values.sum() / len(SEQ), rel=1e-5)
    assert summary.at[1, "mean"] == summary.at[1, "mean_firing"] == pytest.approx(1.0)
    assert (out / "feature_0_logo.png").stat().st_size > 1000
    # the logo's numbers: every peak's first six bases spell the motif, the flanks vary
    pfm = pd.read_csv(out / "feature_0_logo.csv").set_index("position")
    assert list(pfm.columns) == [*"ACGT", "peaks"] and pfm["peaks"].iloc[0] == 2
    core = pfm.loc[0:5, list("ACGT")]
    assert "".join(core.idxmax(axis=1)) == MOTIF and (core.max(axis=1) == 1.0).all()
    assert pfm.loc[-10:-1, list("ACGT")].max(axis=1).min() < 1.0


def test_reverse_complement_reads_the_motif_on_the_minus_strand(esm_dir, planted_dict, genbank,
                                                               tmp_path):
    out = tmp_path / "rc"
    assert main(["tracks", "--model", str(esm_dir), "--data", str(genbank), "--dict",
                 str(planted_dict), "--features", "0", "--out", str(out), "--window", "120",
                 "--stride", "7", "--reverse-complement", "--device", "cpu"]) == 0
    peaks = read_bedgraph(out / "feature_0.bedgraph")
    both = sorted(motif_starts(SEQ, MOTIF) + motif_starts(SEQ, MOTIF_RC))
    assert [(s, e) for _, s, e, _ in peaks] == [(s, s + 6) for s in both]


def test_stream_equals_in_memory_tracks_and_covers_each_base_once(genbank, tmp_path,
                                                                  tiny_model_dirs):
    from biollm_engine.analysis.encode import encode_live
    from biollm_engine.analysis.tracks import base_tracks, stream_tracks
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models import load_model

    lm = load_model(str(tiny_model_dirs("gpt_neox")), device="cpu")
    torch.manual_seed(1)
    d = Dictionary(DictionaryConfig(kind="sae", activation="topk", k=4, d_in=lm.d_model,
                                    num_latents=16, hookpoint="layers.0"))
    fasta = tmp_path / "two.fa"
    fasta.write_text(f">a\n{SEQ[:1500]}\n>b\n{SEQ[1500:1800]}\n>c\n{SEQ[2000:2950]}\n")
    data = DnaDataset(fasta, DnaConfig(window=200, stride=150, reverse_complement=True))
    chunks = list(encode_live(lm, data.examples(), d, batch_size=4))
    feats = [0, 3, 7]
    table = data.windows_table()
    lengths = list(data.records["length"])
    blocks = list(stream_tracks(iter(chunks), feats, table, lengths))
    whole = base_tracks(iter(chunks), feats, lengths, windows=table)
    for r, n in enumerate(lengths):
        mine = [(s, v) for rr, s, v in blocks if rr == r]
        assert [s for s, _ in mine] == list(np.cumsum([0] + [v.shape[1] for _, v in mine])[:-1])
        merged = np.concatenate([v for _, v in mine], axis=1)
        assert merged.shape == (3, n)
        np.testing.assert_array_equal(merged, whole[r])
    # brute force: each base's value is the max over every token (both strands) covering it
    expect = np.zeros((3, lengths[0]), np.float32)
    for c in chunks:
        dense = c.acts[:, feats].toarray()
        rec = table["record"].to_numpy()[c.sources.record]
        for row in np.flatnonzero(rec == 0):
            u = c.sources.unit[row]
            expect[:, u] = np.maximum(expect[:, u], dense[row])
    np.testing.assert_array_equal(whole[0], expect)
    assert (expect > 0).any()


def test_kmer_tokens_give_each_base_their_value(esm_dir, genbank):
    from biollm_engine.analysis.tracks import token_spans

    tok = kmer_tokenizer()
    spans = token_spans(tok)
    assert spans[tok.convert_tokens_to_ids(MOTIF)] == 6
    assert spans[tok.convert_tokens_to_ids("A")] == 1
    assert spans[tok.pad_token_id] == 0


def test_annotations_from_genbank_gff3_and_bed(genbank, tmp_path):
    from biollm_engine.inputs.annotations import annotation_types, base_masks, read_annotations

    gb = read_annotations(genbank)
    assert list(gb["type"]) == ["CDS", "CDS"] and list(gb["start"]) == [5, 1338]
    gff = tmp_path / "a.gff3"
    gff.write_text("##gff-version 3\nFZB42\tx\tgene\t6\t1277\t.\t-\t.\tID=g1;Name=bmyD\n"
                   "##FASTA\n>FZB42\nACGT\n")
    g = read_annotations(gff)
    assert (g.loc[0, "start"], g.loc[0, "end"], g.loc[0, "name"]) == (5, 1277, "bmyD")
    bed = tmp_path / "m.bed"
    bed.write_text("track name=x\nFZB42\t10\t16\tTATA\t0\t+\nFZB42\t20\t22\n")
    b = read_annotations(bed)
    assert annotation_types(b) == ["TATA", "m"]
    mask = base_masks(b, "FZB42", 12, 24, ["TATA", "m"])
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(mask[1]), [8, 9])
    bad = tmp_path / "bad.bed"
    bad.write_text("FZB42\t10\t16\nFZB42\tten\t20\n")
    with pytest.raises(BioLLMError, match=r"bad.bed line 2: start 'ten'"):
        read_annotations(bad)
    badg = tmp_path / "bad.gff3"
    badg.write_text("##gff-version 3\nFZB42 x gene 1 5 . + . ID=a\n")
    with pytest.raises(BioLLMError, match="line 2: 1 tab-separated columns"):
        read_annotations(badg)


def test_esm_hookpoints_resolve_and_capture(esm_dir):
    from biollm_engine.models import capture, list_hookpoints, load_model, run_to

    lm = load_model(str(esm_dir), device="cpu")
    assert lm.arch.name == "esm" and not lm.is_causal
    names = [h.name for h in list_hookpoints(lm)]
    assert names[:5] == ["embed", "layers.0.attn.out", "layers.0.mlp.in", "layers.0.mlp.out",
                         "layers.0"]
    ids = torch.tensor([lm.tokenizer(SEQ[:60])["input_ids"]])
    with capture(lm, names, stop=False) as acts:
        run_to(lm, ids)
    assert all(acts[n].shape == (1, 10, D) for n in names)
    # the MLP chain applied to mlp.in gives mlp.out
    mlp = lm.module("encoder.layer.1.output.dense")(lm.module("encoder.layer.1.intermediate")(
        acts["layers.1.mlp.in"]))
    torch.testing.assert_close(mlp, acts["layers.1.mlp.out"])


def test_tracks_cli_bad_input_exits_2(esm_dir, planted_dict, genbank, tmp_path, capsys):
    base = ["tracks", "--model", str(esm_dir), "--data", str(genbank), "--dict",
            str(planted_dict), "--out", str(tmp_path / "o"), "--device", "cpu"]
    bed = tmp_path / "other.bed"
    bed.write_text("chr9\t1\t5\tx\n")
    for extra, msg in [([], "exactly one of --features"),
                       (["--features", "a,b"], "comma-separated"),
                       (["--features", "9"], "out of range"),
                       (["--features", "0", "--annotations", str(bed)], "none of which"),
                       (["--features", "0", "--annotations", str(tmp_path / "no.bed")],
                        "does not exist")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cancelled_tracks_stop_and_leave_no_bedgraph(esm_dir, planted_dict, genbank, tmp_path):
    """The forward runs ahead on a worker thread; cancelling there stops the whole run."""
    from biollm_engine.analysis.dna_tracks import TracksConfig, run_tracks
    from biollm_engine.progress import Cancelled, CancelToken

    token, seen = CancelToken(), []

    def progress(p):
        seen.append(p.step)
        token.cancel()

    out = tmp_path / "cancelled"
    with pytest.raises(Cancelled):
        run_tracks(TracksConfig(model=str(esm_dir), data=str(genbank), dict=str(planted_dict),
                                out=str(out), features="0", window=120, stride=7,
                                device="cpu"), progress=progress, cancel=token)
    assert seen and not list(out.glob("*.bedgraph"))


def test_tracks_cli_leaves_its_inputs_untouched(esm_dir, planted_dict, tmp_path):
    import hashlib
    import os

    fasta = tmp_path / "fzb42.fa"
    fasta.write_text(">FZB42\n" + "\n".join(SEQ[i:i + 60] for i in range(0, len(SEQ), 60)) + "\n")
    bed = tmp_path / "motif.bed"
    bed.write_text("".join(f"FZB42\t{s}\t{s + 6}\tTATAAA\n" for s in motif_starts(SEQ, MOTIF)))
    for p in (fasta, bed):  # an old mtime, so that any rewrite would show however fast it is
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
              for p in (fasta, bed)}
    assert main(["tracks", "--model", str(esm_dir), "--data", str(fasta), "--dict",
                 str(planted_dict), "--features", "0", "--out", str(tmp_path / "out"),
                 "--annotations", str(bed), "--window", "120", "--stride", "60",
                 "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "enrichment.csv").is_file()
    assert {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in (fasta, bed)} == before


def test_tracks_cli_out_naming_a_file_exits_2_and_keeps_it(esm_dir, planted_dict, genbank,
                                                           tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_bytes(b"keep me\n")
    assert main(["tracks", "--model", str(esm_dir), "--data", str(genbank), "--dict",
                 str(planted_dict), "--features", "0", "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me\n"
