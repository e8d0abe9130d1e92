"""Time to build one attribution graph, and how it grows with prompt length and depth.

Model: a GPTNeoX of the demo's size (width 256, 8 heads, MLP 1024; random weights made from its
config, saved to a temporary folder) with the demo's word-level tokenizer (one token per gene)
built over pbmc68k_reduced's genes and cell types. Transcoders: random, one per layer, 2,048
latents, TopK k=32 (exactness and cost do not depend on training). Prompts: real
pbmc68k_reduced cells in the C2S cell-type prompt, top 50 / 100 / 200 genes.

Each graph is timed beside one plain forward pass of the same prompt (median of 3), so the ratio
is comparable across machines; the machine is shared, so absolute times are noisy.

    /work/venv/bin/python bench/circuit_build.py [--max-features 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_model(folder: Path, tokenizer, layers: int, width: int = 256) -> None:
    import transformers as tf

    cfg = tf.GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                           num_attention_heads=8, intermediate_size=4 * width,
                           max_position_embeddings=1024, rotary_pct=0.25,
                           pad_token_id=tokenizer.pad_token_id, use_parallel_residual=True)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def make_transcoders(lm, latents: int = 2048, k: int = 32):
    from biollm_engine.dictionaries import Dictionary, DictionaryConfig

    torch.manual_seed(1)
    out = []
    for i in range(lm.num_layers):
        d = Dictionary(DictionaryConfig(kind="transcoder", d_in=lm.d_model, num_latents=latents,
                                        k=k, hookpoint=f"layers.{i}.mlp.in",
                                        target=f"layers.{i}.mlp.out"))
        with torch.no_grad():
            d.W_dec.normal_(0, 0.02)
        out.append(d.eval())
    return out


def forward_time(lm, ids) -> float:
    times = []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            lm.model(ids[None])
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import scanpy as sc

    from biollm_engine.circuits import attribute, prune
    from biollm_engine.demo.tokenizer import build_tokenizer
    from biollm_engine.inputs.cells import TEMPLATES, CellDataset, CellSentenceConfig
    from biollm_engine.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-features", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    adata = sc.datasets.pbmc68k_reduced()
    labels = sorted(set(adata.obs["bulk_labels"].astype(str)))
    tok = build_tokenizer([g.upper() for g in adata.var_names], labels,
                          [TEMPLATES["cell_type_prediction"]])
    runs = [(50, 4), (100, 4), (200, 4), (200, 2), (200, 6)]
    print(f"GPTNeoX width 256 from config (random weights), transcoders 2048 latents k=32, "
          f"max_features={args.max_features}, batch_size={args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'genes':>5} {'layers':>6} {'tokens':>6} {'active':>7} {'rows':>5} {'graph s':>8} "
          f"{'forward ms':>10} {'ratio':>7} {'prune s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for genes, layers in runs:
            if layers not in models:
                folder = Path(tmp) / f"neox{layers}"
                make_model(folder, tok, layers)
                lm = load_model(str(folder), device="cpu")
                models[layers] = (lm, make_transcoders(lm))
            lm, tcs = models[layers]
            ds = CellDataset(adata, CellSentenceConfig(top_k=genes))
            ex = next(ds.examples(lm.tokenizer, [0]))
            ids = torch.as_tensor(ex.input_ids)
            fwd = forward_time(lm, ids)
            t = time.perf_counter()
            g = attribute(lm, tcs, ex.text, input_ids=ids, max_features=args.max_features,
                          batch_size=args.batch_size)
            build = time.perf_counter() - t
            t = time.perf_counter()
            prune(g)
            pr = time.perf_counter() - t
            print(f"{genes:>5} {layers:>6} {len(ids):>6} {g.meta['n_active_features']:>7} "
                  f"{g.n_features:>5} {build:>8.2f} {fwd * 1e3:>10.1f} {build / fwd:>7.0f} "
                  f"{pr:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
