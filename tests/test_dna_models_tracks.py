"""Causal Hugging Face DNA models with their own BPE tokenizers (tokens of several bases, of
varying length) through `biollm tracks`: a tiny Llama with a BOS token and a tiny GPT-2 with a
byte-level BPE, each checked against its own forward run directly with transformers."""

import numpy as np
import pytest
import torch

from biollm_engine.cli import main
from test_dna_tracks import SEQ

D = 32
RECORD = SEQ[:900]
WINDOW, STRIDE = 64, 48  # overlapping windows whose edges cut through the BPE tokens


def dna_bpe(arch: str):
    """A BPE trained on DNA: Llama-style with `<s>` before every sequence, GPT-2-style byte-level
    without. Tokens run from one base to several."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if arch == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials,
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    tok.train_from_iterator([SEQ[i:i + 90] for i in range(0, len(SEQ), 90)], trainer=trainer)
    if arch == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def dna_lm(request, tmp_path_factory):
    """(model folder, its tokenizer) of a tiny random causal DNA model, saved as a user's is."""
    import transformers as tf

    arch = request.param
    tokenizer = dna_bpe(arch)
    lengths = [len(t) for t in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
    assert max(lengths) >= 4  # multi-base tokens
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=128, **ids)
    else:
        cfg = tf.GPT2Config(n_embd=D, n_layer=2, n_head=4, n_positions=128, **ids)
    path = tmp_path_factory.mktemp(arch)
    tf.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    """A ReLU SAE on layers.0; feature 0 fires on every token."""
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary

    torch.manual_seed(2)
    d = Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=D, num_latents=6,
                                    hookpoint="layers.0"))
    with torch.no_grad():
        d.b_enc[0] = 100.0
    return d.save(tmp_path_factory.mktemp("dict") / "sae")


def direct_tracks(path, tokenizer, sae_path, features, window, stride):
    """Per-base values computed without the engine's reader, offsets or merging: each window
    through transformers, each token's bases found by walking its text along the window."""
    import transformers as tf

    from biollm_engine.dictionaries.formats import load_dictionary

    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    d = load_dictionary(sae_path)
    out = np.zeros((len(features), len(RECORD)), np.float32)
    spanned = 0
    for start in range(0, len(RECORD), stride):
        seq = RECORD[start:start + window]
        ids = tokenizer(seq)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
            acts = d.encode(hidden)[:, features].numpy()
        at = start
        for j, t in enumerate(tokenizer.convert_ids_to_tokens(ids)):
            if ids[j] in tokenizer.all_special_ids:
                continue
            n = len(t)
            out[:, at:at + n] = np.maximum(out[:, at:at + n], acts[j][:, None])
            spanned += n > 1
            at += n
        assert at == start + len(seq)  # the tokens spell the window
        if start + window >= len(RECORD):
            break
    assert spanned > 50
    return out


def test_causal_bpe_model_tracks_match_its_own_forward(dna_lm, sae, tmp_path):
    from biollm_engine.analysis.dna_tracks import read_bedgraph

    path, tokenizer = dna_lm
    fasta = tmp_path / "r.fa"
    fasta.write_text(f">rec one\n{RECORD}\n")
    out = tmp_path / "out"
    assert main(["tracks", "--model", str(path), "--data", str(fasta), "--dict", str(sae),
                 "--features", "0,1,2", "--out", str(out), "--tokenizer", "model",
                 "--window", str(WINDOW), "--stride", str(STRIDE), "--device", "cpu"]) == 0
    want = direct_tracks(path, tokenizer, sae, [0, 1, 2], WINDOW, STRIDE)
    # feature 0 fires everywhere: its bedGraph gives every base exactly one value
    lines = (out / "feature_0.bedgraph").read_text().splitlines()[1:]
    runs = [(int(s), int(e)) for _, s, e, _ in (x.split("\t") for x in lines)]
    assert runs[0][0] == 0 and runs[-1][1] == len(RECORD)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))  # no gap, no overlap
    assert (want[0] > 0).all()
    for i, f in enumerate([0, 1, 2]):
        got = read_bedgraph(out / f"feature_{f}.bedgraph", "rec", len(RECORD))
        np.testing.assert_allclose(got, want[i], rtol=1e-4, atol=1e-4)
    assert (want[1:] > 0).any() and (want[1:] == 0).any()


def test_each_base_of_a_token_gets_that_tokens_value(dna_lm, sae):
    """Without overlap each base holds exactly its one token's value: the first window's tokens
    of several bases, against the model run directly on that window."""
    import transformers as tf

    from biollm_engine.analysis.dna_tracks import record_tracks
    from biollm_engine.dictionaries.formats import load_dictionary

    path, tokenizer = dna_lm
    fasta = path.parent / f"{path.name}.fa"
    fasta.write_text(f">rec\n{RECORD}\n")
    got = record_tracks(str(path), str(fasta), str(sae), features=[1, 2, 3], window=WINDOW,
                        tokenizer="model", device="cpu").values
    seq = RECORD[:WINDOW]
    enc = tokenizer(seq, return_offsets_mapping=True)
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([enc["input_ids"]]), output_hidden_states=True)
        acts = load_dictionary(sae).encode(hidden.hidden_states[1][0])[:, [1, 2, 3]].numpy()
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    at, checked = 0, 0
    for j, t in enumerate(tokens):
        if enc["input_ids"][j] in tokenizer.all_special_ids:
            continue
        if len(t) > 1:
            np.testing.assert_allclose(got[:, at:at + len(t)],
                                       np.repeat(acts[j][:, None], len(t), axis=1),
                                       rtol=1e-4, atol=1e-5)
            checked += 1
        at += len(t)
    assert checked >= 5


def test_window_longer_than_learned_positions_is_one_line(dna_lm, sae, tmp_path, capsys):
    """GPT-2 reads at most n_positions tokens (128 here); Llama's rotary positions go on."""
    path, tokenizer = dna_lm
    fasta = tmp_path / "r.fa"
    fasta.write_text(f">rec\n{RECORD}\n")
    rc = main(["tracks", "--model", str(path), "--data", str(fasta), "--dict", str(sae),
               "--features", "0", "--out", str(tmp_path / "out"), "--tokenizer", "model",
               "--window", "900", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    if path.name.startswith("gpt2"):
        assert rc == 2 and "\n" not in err
        assert "longer than the 128 positions" in err and "smaller window" in err
        assert not (tmp_path / "out" / "feature_0.bedgraph").exists()
    else:
        assert rc == 0
