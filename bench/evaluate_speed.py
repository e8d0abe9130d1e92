"""`biollm evaluate` throughput against a bare batched forward of the same prompts.

A demo-size GPTNeoX (4 layers, width 128, random weights) with the demo's word-level tokenizer
(one token per gene and per cell type), made from its config in a temporary folder, or the demo
model itself when resources/demo has been built. The cells are pbmc68k_reduced with 200-gene C2S
prompts. Timed, alternating so that a busy machine slows all alike (medians of --rounds):
- forward: one batched forward of the pre-tokenized prompts (right-padded, no cache);
- evaluate c2s with --max-new-tokens 1 and 2 (the demo answers one token then end-of-sequence);
- evaluate choice, letter scoring (one forward per cell).
evaluate's times include building and tokenizing the prompts and matching the answers.

    /work/venv/bin/python bench/evaluate_speed.py [--cells 64] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def make_model(folder: Path, dataset, labels) -> None:
    import transformers as tf

    from biollm_engine.demo.model import gpt_neox_config
    from biollm_engine.demo.tokenizer import build_tokenizer

    tok = build_tokenizer(dataset.genes, labels, [dataset.prompt(0)])
    torch.manual_seed(0)
    tf.GPTNeoXForCausalLM(gpt_neox_config(tok, 4, 128, 4, 512)).save_pretrained(folder)
    tok.save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from biollm_engine.demo.data import LABEL_COLUMN, load_pbmc
    from biollm_engine.evaluation import EvaluateConfig, evaluate
    from biollm_engine.evaluation.predict import _pad
    from biollm_engine.inputs.cells import CellDataset, CellSentenceConfig
    from biollm_engine.models import load_model

    adata = load_pbmc()
    dataset = CellDataset(adata, CellSentenceConfig(top_k=200))
    with tempfile.TemporaryDirectory() as tmp:
        if (DEMO / "model" / "config.json").is_file():
            folder, source = DEMO / "model", "the demo model"
        else:
            folder, source = Path(tmp) / "model", "a demo-size GPTNeoX from its config"
            make_model(folder, dataset, list(adata.obs[LABEL_COLUMN].cat.categories))
        lm = load_model(str(folder), device="cpu")
        cells = str(args.cells)
        first = list(range(args.cells))
        prompts = [e.input_ids.tolist() for e in dataset.examples(lm.tokenizer, indices=first)]

        @torch.inference_mode()
        def forward():
            for s in range(0, len(prompts), args.batch_size):
                ids, mask = _pad(prompts[s:s + args.batch_size], lm.tokenizer.pad_token_id, False)
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)

        def run(**kw):
            cfg = EvaluateConfig(cells="all", batch_size=args.batch_size, **kw)
            return lambda: evaluate(lm, sub, LABEL_COLUMN, cfg)

        sub = CellDataset(adata[:args.cells].copy(), CellSentenceConfig(top_k=200))
        jobs = {"forward": forward,
                "evaluate c2s, 1 new token": run(max_new_tokens=1),
                "evaluate c2s, 2 new tokens": run(max_new_tokens=2),
                "evaluate choice (letter)": run(format="choice", choice_scoring="letter")}
        times = {k: [] for k in jobs}
        for _ in range(args.rounds):
            for k, job in jobs.items():
                t = time.perf_counter()
                job()
                times[k].append(time.perf_counter() - t)
    base = statistics.median(times["forward"])
    mean_tokens = sum(map(len, prompts)) // len(prompts)
    print(f"{source}; {args.cells} cells, 200-gene prompts ({mean_tokens} tokens on average)"
          f", batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.rounds} rounds")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<28} {args.cells / med:8.1f} cells/s   {med / base:5.2f}x the forward time")


if __name__ == "__main__":
    main()
