"""Harvest overhead over a bare forward pass of the same truncated model on the same batches.

A 4-layer, width-256 GPTNeoX (random weights, made from its config in a temporary folder) reads
cell-sentence-length examples. `harvest` of `layers.2` (it stops after block 2) into a float16
cache is timed against a forward pass of the model cut to blocks 0-2, on the same padded
batches, alternating the two so that a busy machine slows both alike; medians are compared.

    /work/venv/bin/python bench/harvest_overhead.py [--examples 48] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_model(folder: Path, layers: int = 4, width: int = 256, vocab: int = 2048) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"G{i}": i + 2 for i in range(vocab - 2)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                               pad_token="<|pad|>").save_pretrained(folder)
    cfg = tf.GPTNeoXConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                           num_attention_heads=8, intermediate_size=4 * width,
                           max_position_embeddings=1024, rotary_pct=0.25, pad_token_id=1,
                           use_parallel_residual=True)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)


def make_examples(n: int, vocab: int, seed: int = 0):
    from biollm_engine.inputs.base import TokenizedExample

    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        T = int(rng.integers(220, 260))  # a 200-gene cell sentence with its prompt
        ids = rng.integers(2, vocab, size=T).astype(np.int64)
        keep = np.zeros(T, dtype=bool)
        keep[30:] = True  # gene tokens only, not the prompt
        unit = np.where(keep, np.arange(T) - 30, -1).astype(np.int32)
        out.append(TokenizedExample(r, ids, keep, unit))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from biollm_engine.harvest import HarvestConfig, harvest, pad_batch
    from biollm_engine.models import load_model, resolve_hookpoint

    tmp = Path(tempfile.mkdtemp(prefix="harvest_bench_"))
    make_model(tmp / "model")
    lm = load_model(str(tmp / "model"), device="cpu")
    examples = make_examples(args.examples, 2048)
    hookpoint = "layers.2"
    deepest = resolve_hookpoint(lm, hookpoint).layer
    cfg = HarvestConfig(hookpoints=[hookpoint], batch_size=args.batch_size)
    batches = [pad_batch(examples[i:i + args.batch_size], 1, None)
               for i in range(0, len(examples), args.batch_size)]
    batches = [(torch.from_numpy(ids), torch.from_numpy(mask).long()) for ids, mask, *_ in batches]
    real_tokens = sum(len(e.input_ids) for e in examples)
    kept = sum(int(e.keep.sum()) for e in examples)
    base = lm.base
    full_layers = base.layers
    truncated = torch.nn.ModuleList(list(full_layers)[:deepest + 1])

    def bare() -> float:
        base.layers = truncated
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for ids, mask in batches:
                    base(input_ids=ids, attention_mask=mask, use_cache=False)
            return time.perf_counter() - t0
        finally:
            base.layers = full_layers

    def harvested(r: int) -> float:
        t0 = time.perf_counter()
        cache = harvest(lm, examples, cfg, tmp / f"cache{r}")
        dt = time.perf_counter() - t0
        assert cache.num_tokens == kept
        return dt

    bare()  # warm up both paths once
    harvested(-1)
    t_bare, t_harv = [], []
    for r in range(args.rounds):
        t_bare.append(bare())
        t_harv.append(harvested(r))
    b, h = statistics.median(t_bare), statistics.median(t_harv)
    print(f"{args.examples} examples, {real_tokens} tokens ({kept} kept), batch {args.batch_size}, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"harvest overhead: {100 * (h / b - 1):.1f}% (harvest {real_tokens / h:,.0f} tok/s, "
          f"bare forward {real_tokens / b:,.0f} tok/s)")


if __name__ == "__main__":
    main()
