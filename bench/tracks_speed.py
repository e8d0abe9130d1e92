"""`biollm tracks` on a 1 Mb record: time against a bare forward over the same windows, and
peak memory.

A 2-layer, width-64 GPTNeoX reading byte tokens (random weights, made from its config in a
temporary folder) and a 512-latent ReLU SAE on `layers.1` (each latent firing on ~3% of
bases) run over a 1,000,000-base random
record (FASTA, one line per 80 bases) in windows of 1024 with stride 512 (every base read
twice). `run_tracks` (model, SAE, per-base merge, 4 bedGraphs, statistics, logos) is timed
against the model's body alone over the same windows and batches, bare forward first and last
so that a busy machine slows both alike. Peak RSS is read from the kernel (ru_maxrss) after
each stage; a whole-record in-memory track would need 4 bytes x features x bases on top.

    /work/venv/bin/python bench/tracks_speed.py [--bases 1000000] [--window 1024]

Measured 2026-11-25 on the 2-core dev machine at low load: 1 Mb 55.7 s, 2.28x the bare forward
(29.6 / 19.2 s), peak RSS 667 MB; 4 Mb 212 s, 2.36x (85 / 95 s), peak RSS 657 MB: memory does not
grow with the record. With this tiny model the SAE encoding and bedGraph writing cost more than
the forward; a real DNA model's forward would dominate.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_model(folder: Path) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, **{chr(i): i for i in range(1, 256)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                               eos_token="<pad>").save_pretrained(folder)
    cfg = tf.GPTNeoXConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=2048, rotary_pct=0.25, pad_token_id=0)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


def make_sae(path: Path, lm, data) -> Path:
    """Random encoder, biases set so each latent fires on about 3% of the first window's bases."""
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary
    from biollm_engine.harvest import kept_activations

    torch.manual_seed(1)
    d = Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=64, num_latents=512,
                                    hookpoint="layers.1"))
    first = next(iter(data.examples(indices=[0])))
    acts, _, _ = next(kept_activations(lm, [first], ["layers.1"], dtype=torch.float32))
    with torch.no_grad():
        pre = d.pre_acts(acts["layers.1"])
        d.b_enc.sub_(torch.quantile(pre, 0.97, dim=0))
    return d.save(path)


def bare_forward(lm, data, batch_size: int) -> float:
    from biollm_engine.harvest import _batches, pad_batch
    from biollm_engine.models import capture, run_to

    t = time.perf_counter()
    with torch.inference_mode():
        for batch in _batches(data.examples(), batch_size):
            ids, mask, *_ = pad_batch(batch, 0, None)
            with capture(lm, ["layers.1"]):
                run_to(lm, torch.from_numpy(ids), torch.from_numpy(mask).long())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    from biollm_engine.analysis.dna_tracks import TracksConfig, run_tracks
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model")
        rng = np.random.default_rng(0)
        # one byte per base, so the bench's own sequence does not set the peak it measures
        seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, args.bases)].tobytes().decode()
        fasta = tmp / "chr.fa"
        fasta.write_text(">chr1\n" + "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80))
                         + "\n")
        del seq
        stride = args.window // 2
        lm = load_model(str(tmp / "model"), device="cpu")
        data = DnaDataset(fasta, DnaConfig(window=args.window, stride=stride, tokenizer="byte"))
        sae = make_sae(tmp / "sae", lm, data)
        start_rss = rss_mb()
        bare1 = bare_forward(lm, data, args.batch_size)
        bare_rss = rss_mb()
        cfg = TracksConfig(model=str(tmp / "model"), data=str(fasta), dict=str(sae),
                           out=str(tmp / "out"), features="0,1,2,3", window=args.window,
                           stride=stride, tokenizer="byte", batch_size=args.batch_size,
                           device="cpu")
        t = time.perf_counter()
        result = run_tracks(cfg)
        tracks_s = time.perf_counter() - t
        tracks_rss = rss_mb()
        bare2 = bare_forward(lm, data, args.batch_size)
        bare = (bare1 + bare2) / 2
        lines = sum(1 for _ in open(result.bedgraphs[0])) - 1
        print(f"{args.bases:,} bases, {len(data)} windows of {args.window} (stride {stride}), "
              f"batch {args.batch_size}, {torch.get_num_threads()} threads")
        print(f"bare forward to layers.1: {bare1:.2f} s then {bare2:.2f} s "
              f"({args.bases / bare / 1e3:.0f} kb/s)")
        print(f"biollm tracks, 4 features: {tracks_s:.2f} s -> {tracks_s / bare:.2f}x the bare "
              f"forward; feature 0 fires on {result.summary['frequency'][0]:.1%} of bases, "
              f"{lines:,} bedGraph runs")
        print(f"peak RSS: {start_rss:.0f} MB before, {bare_rss:.0f} MB after the bare forward, "
              f"{tracks_rss:.0f} MB after tracks (+{tracks_rss - bare_rss:.0f} MB); in-memory "
              f"tracks of 4 features would hold {4 * 4 * args.bases / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
