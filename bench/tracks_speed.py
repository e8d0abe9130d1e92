"""`biollm tracks` on a 1 Mb record: time against a bare forward over the same windows, and
peak memory.

A GPTNeoX reading byte tokens (random weights, made from its config in a temporary folder;
2 layers of width 64 by default, `--layers 4 --width 256` for something like the smallest real
DNA LMs) and a ReLU SAE of 8 x width latents on its last layer (biases set so each latent fires
on a few % of bases) run over a 1,000,000-base random record (FASTA, one line per 80 bases) in
windows of 1024 with stride 512 (every base read twice). `run_tracks` (model, SAE, per-base
merge, 4 bedGraphs, statistics, logos) is timed against the model's body alone over the same
windows and batches. Tracks run their forward on a worker thread (the merge and writing of one
batch overlap the next batch's forward), so the bare forward is timed both from the main thread
and from a worker thread, before and after each tracks run; on a shared machine the best of
each side is compared, and each tracks run against the bare runs beside it. CPU seconds (all
threads) are printed too. Peak RSS is read from the kernel (ru_maxrss) after each stage; a
whole-record in-memory track would need 4 bytes x features x bases on top. `--device cuda`
puts the model and SAE on the GPU (the merge and files stay on the CPU).

    /work/venv/bin/python bench/tracks_speed.py [--bases 1000000] [--layers 2 --width 64]
        [--device cpu|cuda] [--repeat 2] [--top N] [--outside-only]

"CPU seconds outside the forward per Mb" times `run_tracks` once more with the model's forward
replaced by a replay of recorded activations (`outside_forward`; torch on one thread so idle
pool threads do not count): what a GPU machine's CPU must do beside a small model's forward.
`--outside-only` times only that (quick: no bare forward, no real tracks).

Measured 2026-11-25 on the 2-core dev machine shared with two other engineers' runs (load
average 2-3; single bare forwards of the same windows ranged 32-68 s):
- before (commit 6515da6, at low load): 1 Mb 55.7 s, 2.28x the bare forward (mean of 29.6 and
  19.2 s), peak RSS 667 MB; the SAE encoding to sparse (a top-k over all 512 latents and
  scipy's index sort) and the per-run bedGraph writer cost more than this tiny forward.
- now, default, run twice: tracks 43.9 and 32.4 s against bare forwards of 32.4-68.1 s: 1.00x
  best against best, 1.20x and 0.93x against the bare runs beside them, CPU seconds 1.24x;
  then tracks 46.8 and 49.1 s against 30.9-120.1 s: 1.52x best against best, 1.22x and 1.19x
  beside, CPU 1.15x. Peak RSS 657 / 647 MB. What is left on top of the forward: about 1.3 s
  per Mb of merging, bedGraph text (the %.6g formatting is the largest part) and statistics,
  overlapped with the forward, and about 1.5 s once (imports, loading, logos).
- now, default at 250 kb and low load (0.9-1.5): tracks 9.95 (first, with imports) and
  8.13 s against bare forwards of 6.26-7.91 s: 1.30x best against best, CPU 1.19x.
- now, `--layers 4 --width 256 --bases 250000` (2048 latents): 45.5 and 63.7 s against bare
  forwards of 44.2-60.7 s, 1.03x best against best, 0.93x and 1.17x beside; with `--repeat 1`
  68.5 s against 58.0-85.4 s, 1.18x best against best, 1.10x beside, CPU 1.15x; peak RSS
  0.89-1.14 GB (a worker thread's own malloc arena holds the attention's temporaries).
- on an H100 (16 cores, `--device cuda`): 2 x 64 at 1 Mb: 3.47 s against 0.62 s, 5.6x; 12 x 512
  at 1 Mb: 9.07 s against 5.27 s, 1.72x. There the forward of such small models is shorter
  than the CPU side (reading and batching windows, each batch's copy to the CPU, merging and
  bedGraph text: 1-3 s per Mb); 12 x 768 (6144 latents): 14.95 s against 10.41 s, 1.44x best of
  two (a single run: 1.73x). A real DNA model's forward dominates it: Evo 2 7B's architecture
  (vortex's StripedHyena from evo2's evo2-7b-8k config, random weights in the dtypes evo2's
  loading sets, FlashAttention off; `python bench/evo2_forward.py`) took 303 ms per batch
  of 8 x 1024 on the same H100, 74 s per Mb at stride 512, so the CPU side's 1-5 s per Mb would
  add at most 7% if none of it overlapped (an estimate: the whole of `biollm tracks` was not run
  on Evo 2 7B, whose weights cannot be downloaded here).
Memory does not grow with the record: peak RSS 696 MB at 250 kb, 705 MB at 1 Mb, 681 MB at 2 Mb.

Measured 2026-11-25 session 4 (same 2-core machine, load average 2-3.5; "old" is commit 3dc4394
run with this bench, PYTHONPATH=<its biollm_engine>, interleaved with "new"):
- CPU seconds outside the forward per Mb (`--outside-only --repeat 3`, 1 Mb, best of 3 per
  run, three old/new pairs): old 3.63, 3.56, 3.06; new 2.53, 1.81, 2.22 (about 1.2 s less).
  About 1 s of it is per run, not per Mb (loading, 4 logos of ~0.15 s each, one more read of
  the file for top windows and logo contexts).
- `--top 4 --outside-only --repeat 1`, 1 Mb: old 32.35, new 9.68 CPU s per Mb: choosing the
  features no longer builds sparse chunks of all 512 latents (firing_counts; the rest of that
  pass is the SAE's 512-latent GEMM and the comparison, on the GPU on a GPU machine).
- whole bench, default 1 Mb, `--repeat 2`: tracks 41.29 and 33.89 s against bare forwards of
  36.0-38.9 s from a worker thread (89.8-99.6 s from the main thread at load 2.4-3.6): 0.94x
  best against best, 1.11x and 0.91x beside, CPU 0.95x; forward replayed 2.78 CPU s per Mb.
  Peak RSS 782 MB: numba and llvmlite, loaded for the bedGraph text, add about 100 MB once.
- 250 kb, `--repeat 2`, old then new at load 3.2-3.5: old 1.35x best against best (CPU
  1.36x, replay 1.44 CPU s); new 1.43x (CPU 1.14x, replay 1.32 CPU s): on 2 busy cores the
  wall ratio moves with the load more than with the CPU side.
- bedGraph text alone: 135-170 ns a line with the compiled loop against 500-650 ns with the
  %-format, for 100 to 100,000 lines a call (the same text: tests/test_dna_bedgraph.py).
- Not done: `--top` in one pass. The chosen features' values come from `FeatureEncoder`
  (their columns of the encoder only), which differ from the full encoding's columns by up to
  1.4e-6 (MKL, measured), so keeping the full encoding of the one pass would change printed
  digits; keeping the hookpoint's activations instead costs tokens x width x 4 bytes on disk
  (512 MB per Mb at width 64, 32 GB per Mb for Evo 2 7B), about what a second forward costs
  for a small model. The extra pass now runs the model and the SAE but builds no chunks.

Measured 2026-12-07 on the same 2-core machine, quiet (load 1.3 before, 1.7 after; nothing else
running), default 1 Mb, `--repeat 2`: bare forwards 12.83 / 15.02, 14.72 / 13.90, 12.63 / 12.98 s
(main thread / worker thread), tracks 15.82 and 15.19 s: 1.20x best against best, 1.18x and
1.15x against the bare runs beside them, CPU 1.12x; forward replayed 1.38 CPU s per Mb; peak
RSS 854 MB (+286 MB for tracks).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds of this process, all threads (less moved by other processes than wall)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def clocked(fn, *args, **kw) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of fn(*args, **kw)."""
    t, c = time.perf_counter(), cpu_s()
    out = fn(*args, **kw)
    return time.perf_counter() - t, cpu_s() - c, out


def make_model(folder: Path, layers: int = 2, width: int = 64) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, **{chr(i): i for i in range(1, 256)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                               eos_token="<pad>").save_pretrained(folder)
    cfg = tf.GPTNeoXConfig(vocab_size=256, hidden_size=width, num_hidden_layers=layers,
                           num_attention_heads=max(4, width // 64), intermediate_size=4 * width,
                           max_position_embeddings=2048, rotary_pct=0.25, pad_token_id=0)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


def make_sae(path: Path, lm, data, latents: int) -> Path:
    """Random encoder, biases set so each latent fires on about 3% of the first window's bases."""
    from biollm_engine.dictionaries.config import DictionaryConfig
    from biollm_engine.dictionaries.dictionary import Dictionary
    from biollm_engine.harvest import kept_activations

    hookpoint = f"layers.{lm.num_layers - 1}"
    torch.manual_seed(1)
    d = Dictionary(DictionaryConfig(kind="sae", activation="relu", d_in=lm.d_model,
                                    num_latents=latents, hookpoint=hookpoint))
    first = next(iter(data.examples(indices=[0])))
    acts, _, _ = next(kept_activations(lm, [first], [hookpoint], dtype=torch.float32))
    with torch.no_grad():
        pre = d.pre_acts(acts[hookpoint])
        d.b_enc.sub_(torch.quantile(pre, 0.97, dim=0))
    return d.save(path)


def bare_forward(lm, data, batch_size: int, limit: int | None = None,
                 thread: bool = False) -> float:
    """Seconds for the model's body up to the SAE's layer over the windows, in the same
    batches as `biollm tracks` (on CUDA, synchronised before the clock is read); `thread`:
    from a worker thread, as `biollm tracks` runs its forward."""
    import itertools

    if thread:
        out = []
        worker = threading.Thread(target=lambda: out.append(
            bare_forward(lm, data, batch_size, limit)))
        worker.start()
        worker.join()
        return out[0]

    from biollm_engine.harvest import _batches, pad_batch
    from biollm_engine.models import capture, run_to

    hookpoint = f"layers.{lm.num_layers - 1}"
    t = time.perf_counter()
    with torch.inference_mode():
        for batch in itertools.islice(_batches(data.examples(), batch_size), limit):
            ids, mask, *_ = pad_batch(batch, 0, None)
            with capture(lm, [hookpoint]):
                run_to(lm, torch.from_numpy(ids).to(lm.device),
                       torch.from_numpy(mask).long().to(lm.device))
    if str(lm.device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def outside_forward(cfg, lm, data, batch_size: int, keep: int = 8) -> tuple[float, float]:
    """(wall, CPU seconds) of `run_tracks` with the model's forward replaced by a replay of the
    activations it gave on the first `keep` batches (batch i gets batch i mod keep's, cut to its
    shape; the windows, tokens and sources stay real): everything `biollm tracks` does on the CPU
    apart from the forward (reading and batching windows, the SAE's few columns, sparse chunks,
    the per-base merge, bedGraph text, statistics, logos). On a GPU the forward runs beside
    this, so it bounds the seconds per Mb of a small model there."""
    import contextlib
    import itertools

    from biollm_engine import harvest
    from biollm_engine.analysis.dna_tracks import run_tracks
    from biollm_engine.models import capture, run_to

    hookpoint = f"layers.{lm.num_layers - 1}"
    recorded = []
    with torch.inference_mode():
        for batch in itertools.islice(harvest._batches(data.examples(), batch_size), keep):
            ids, mask, *_ = harvest.pad_batch(batch, 0, None)
            with capture(lm, [hookpoint]) as acts:
                run_to(lm, torch.from_numpy(ids).to(lm.device),
                       torch.from_numpy(mask).long().to(lm.device))
            recorded.append(acts[hookpoint].to(lm.device).clone())
    count, shape = itertools.count(), []

    def no_forward(_lm, ids, _mask):
        shape[:] = ids.shape

    @contextlib.contextmanager
    def replay(_lm, names):
        acts: dict = {}
        yield acts
        b, t = shape
        a = recorded[next(count) % len(recorded)]
        acts.update({h: a[:b, :t] for h in names})

    real = harvest.capture, harvest.run_to, torch.get_num_threads()
    # torch on one thread: its idle pool threads would otherwise spin and count as CPU seconds
    harvest.capture, harvest.run_to = replay, no_forward
    torch.set_num_threads(1)
    try:
        wall, cpu, _ = clocked(run_tracks, cfg)
    finally:
        harvest.capture, harvest.run_to = real[:2]
        torch.set_num_threads(real[2])
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bases", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2, help="model depth (2: the tiny default)")
    ap.add_argument("--width", type=int, default=64, help="model width (64: the tiny default)")
    ap.add_argument("--latents", type=int, default=None, help="SAE latents (default 8 x width)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (model and SAE there)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of tracks, each between two bare forwards; minimums compared")
    ap.add_argument("--top", type=int, default=None,
                    help="tracks of the N features firing most (--top N) instead of 0,1,2,3")
    ap.add_argument("--outside-only", action="store_true",
                    help="only time tracks with the forward replayed (CPU outside the forward)")
    args = ap.parse_args()
    from biollm_engine.analysis.dna_tracks import TracksConfig, run_tracks
    from biollm_engine.inputs.dna import DnaConfig, DnaDataset
    from biollm_engine.models import load_model

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", args.layers, args.width)
        rng = np.random.default_rng(0)
        # one byte per base, so the bench's own sequence does not set the peak it measures
        seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, args.bases)].tobytes().decode()
        fasta = tmp / "chr.fa"
        fasta.write_text(">chr1\n" + "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80))
                         + "\n")
        del seq
        stride = args.window // 2
        lm = load_model(str(tmp / "model"), device=args.device)
        data = DnaDataset(fasta, DnaConfig(window=args.window, stride=stride, tokenizer="byte"))
        sae = make_sae(tmp / "sae", lm, data, args.latents or 8 * args.width)
        cfg = TracksConfig(model=str(tmp / "model"), data=str(fasta), dict=str(sae),
                           out=str(tmp / "out"), window=args.window, top=args.top,
                           features=None if args.top else "0,1,2,3",
                           stride=stride, tokenizer="byte", batch_size=args.batch_size,
                           device=args.device)
        bare_forward(lm, data, args.batch_size, limit=2)  # warm-up: kernels, caches
        load = os.getloadavg()
        if args.outside_only:
            outside_forward(cfg, lm, data, args.batch_size)  # warm-up: imports, glyphs
            runs = [outside_forward(cfg, lm, data, args.batch_size)
                    for _ in range(max(1, args.repeat))]
            print(f"{args.bases:,} bases, {len(data)} windows; GPTNeoX {args.layers} x "
                  f"{args.width}, {args.latents or 8 * args.width}-latent SAE; load average "
                  f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
            print("tracks with the forward replayed, wall / CPU s: "
                  + ", ".join(f"{w:.2f} / {c:.2f}" for w, c in runs)
                  + f" -> CPU seconds outside the forward per Mb: "
                  f"{min(c for _, c in runs) / args.bases * 1e6:.2f}")
            return
        start_rss = rss_mb()
        bare, tracks, bare_cpu, tracks_cpu = [], [], [], []

        def bare_pair():  # from the main thread and from a worker thread
            runs = [clocked(bare_forward, lm, data, args.batch_size, thread=w)
                    for w in (False, True)]
            bare.append([wall for wall, _, _ in runs])
            bare_cpu.extend(cpu for _, cpu, _ in runs)

        bare_pair()
        bare_rss = rss_mb()
        for _ in range(args.repeat):
            wall, cpu, result = clocked(run_tracks, cfg)
            tracks.append(wall)
            tracks_cpu.append(cpu)
            bare_pair()
        tracks_rss = rss_mb()
        out_wall, out_cpu = outside_forward(cfg, lm, data, args.batch_size)
        lines = sum(1 for _ in open(result.bedgraphs[0])) - 1
        name = torch.cuda.get_device_name() if args.device == "cuda" else \
            f"{torch.get_num_threads()} threads"
        print(f"{args.bases:,} bases, {len(data)} windows of {args.window} (stride {stride}), "
              f"batch {args.batch_size}; GPTNeoX {args.layers} layers x {args.width}, "
              f"{args.latents or 8 * args.width}-latent SAE on {args.device} ({name}); "
              f"load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
        print("bare forward, from the main thread / a worker thread: "
              + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in bare) + " s "
              f"({args.bases / np.min(bare) / 1e3:.0f} kb/s at best)")
        print(f"biollm tracks, {f'--top {args.top}' if args.top else '4 features'}: " + ", ".join(f"{x:.2f}" for x in tracks) + " s")
        beside = [(min(bare[i]) + min(bare[i + 1])) / 2 for i in range(len(tracks))]
        print(f"-> {min(tracks) / np.min(bare):.2f}x the bare forward (best against best; each "
              "run against the mean of the best bare runs beside it: "
              + ", ".join(f"{x / b:.2f}x" for x, b in zip(tracks, beside)) + ")")
        print(f"CPU time: bare forward {min(bare_cpu):.2f} s at least, tracks "
              f"{min(tracks_cpu):.2f} s -> {min(tracks_cpu) / min(bare_cpu):.2f}x")
        print(f"tracks with the forward replayed: {out_wall:.2f} s, {out_cpu:.2f} CPU s -> "
              f"CPU seconds outside the forward per Mb: {out_cpu / args.bases * 1e6:.2f}")
        print(f"feature 0 fires on {result.summary['frequency'][0]:.1%} of bases, "
              f"{lines:,} bedGraph runs")
        print(f"peak RSS: {start_rss:.0f} MB before, {bare_rss:.0f} MB after the bare forward, "
              f"{tracks_rss:.0f} MB after tracks (+{tracks_rss - bare_rss:.0f} MB); in-memory "
              f"tracks of 4 features would hold {4 * 4 * args.bases / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
