"""The DNA demo: a small byte-level causal DNA model trained on 245 kb of the Pseudomonas
fluorescens SBW25 genome, a TopK SAE on one residual layer, and what its features track.

`build_dna_demo(out_dir)` writes into `out_dir` (default `resources/demo/dna/`, beside the copied
source data, which it never touches): `model/` (byte tokenizer + GPTNeoX, save_pretrained),
`dictionaries/sae/layers.N/` (the project's trainer), `sequences.fa.gz` (all 40 windows),
`heldout.fa` (the held-out loci), `annotations.bed` (CDS, start / stop codons, intergenic),
`records.csv` (genome origin and split of each window), `dna_demo.json` (what was measured) and
`workspace.json`. Fixed seeds, deterministic torch on one thread: a second build writes
byte-identical weights. `run_dna_analysis` (dna_analysis.py) compares the SAE's features with the
annotations.

    python -m biollm_engine.demo.dna [--quick] [--out DIR] [--analyse]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import to_dict
from ..errors import BioLLMError
from ..fileio import atomic_dir, atomic_path, write_json
from ..progress import CancelToken, ProgressCallback
from .dna_data import SOURCE, load_records, write_bed, write_fasta

DEFAULT_DNA_DEMO = SOURCE.parents[1]
OUTPUTS = ("model", "dictionaries", "sequences.fa.gz", "heldout.fa", "annotations.bed",
           "records.csv", "dna_demo.json", "workspace.json")


@dataclass
class DnaDemoConfig:
    """How the DNA demo is built; saved in its dna_demo.json."""

    layers: int = field(default=3, metadata={"help": "transformer layers"})
    width: int = field(default=128, metadata={"help": "model width (d_model)"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    context: int = field(default=256, metadata={"help": "bases per training crop"})
    steps: int = field(default=300, metadata={"help": "optimisation steps"})
    batch_size: int = field(default=16, metadata={"help": "crops per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (one-cycle)"})
    records: int = field(default=0, metadata={
        "help": "train on the first N training windows only (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and crops"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (fixed: determinism)"})
    sae_layer: int = field(default=2, metadata={
        "help": "residual layer of the SAE (layers.i); the last block's output holds the reading frame"})
    dict_latents: int = field(default=512, metadata={"help": "SAE latents"})
    dict_k: int = field(default=16, metadata={"help": "active latents per base (TopK)"})
    dict_tokens: int = field(default=800_000, metadata={"help": "SAE training tokens"})
    dict_batch_size: int = field(default=1024, metadata={"help": "tokens per SAE step"})

    def reduced(self) -> "DnaDemoConfig":
        """The quick variant for tests: a tiny model on four windows, seconds on a laptop."""
        return dataclasses.replace(self, layers=2, width=32, heads=2, context=64, steps=120,
                                   lr=1e-2, records=4, sae_layer=1, dict_latents=64, dict_k=4,
                                   dict_tokens=16_384, dict_batch_size=512)


def build_dna_demo(out_dir: str | Path = DEFAULT_DNA_DEMO, progress: ProgressCallback | None = None,
                   quick: bool = False, cancel: CancelToken | None = None,
                   cfg: DnaDemoConfig | None = None) -> dict:
    """Build the DNA demo into `out_dir`; return its report (also written as dna_demo.json)."""
    import transformers as tf

    from .dna_model import (LN4, base_entropy, byte_tokenizer, heldout_loss, markov_loss,
                            train_dna_model)
    from .model import deterministic, gpt_neox_config

    cfg = cfg or DnaDemoConfig()
    if quick:
        cfg = cfg.reduced()
    if not 0 <= cfg.sae_layer < cfg.layers:
        raise BioLLMError(f"sae_layer must be a layer of the model (0..{cfg.layers - 1}).")
    out = Path(out_dir)
    t0, cpu0 = time.perf_counter(), time.process_time()
    records = load_records()
    train_recs = [r for r in records if not r.heldout]
    train_recs = train_recs[:cfg.records] if cfg.records else train_recs
    test_recs = [r for r in records if r.heldout]
    train_seqs, test_seqs = [r.seq for r in train_recs], [r.seq for r in test_recs]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dna-demo-", dir=out) as tmp:
        tmp = Path(tmp)
        write_fasta(records, tmp / "sequences.fa.gz")
        write_fasta(test_recs, tmp / "heldout.fa")
        write_fasta(train_recs, tmp / "train.fa")
        write_bed(records, tmp / "annotations.bed")
        _records_csv(records, tmp / "records.csv")
        tokenizer = byte_tokenizer()
        t = time.perf_counter()
        with deterministic(cfg.seed, cfg.threads):
            model = tf.GPTNeoXForCausalLM(gpt_neox_config(tokenizer, cfg.layers, cfg.width,
                                                          cfg.heads, 2048))
            history = train_dna_model(model, train_seqs, steps=cfg.steps,
                                      batch_size=cfg.batch_size, context=cfg.context, lr=cfg.lr,
                                      seed=cfg.seed, progress=progress, cancel=cancel)
            test_loss = heldout_loss(model, test_seqs, cfg.context)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        model_s = time.perf_counter() - t
        t = time.perf_counter()
        sae_dir, sae_report = _train_sae(cfg, tmp, progress, cancel)
        sae_s = time.perf_counter() - t
        report = {
            "data": {"source": "minerva-dna 0.2.2 example_data/"
                               "TwoAYGGAY_Pseudomonas_fluorescens_SBW25.gb (Apache-2.0)",
                     "records": len(records), "bases": sum(len(r.seq) for r in records),
                     "train_records": len(train_recs),
                     "train_bases": sum(len(s) for s in train_seqs),
                     "heldout_records": [r.name for r in test_recs],
                     "heldout_bases": sum(len(s) for s in test_seqs),
                     "cds": sum(len(r.cds) for r in records)},
            "model": {"architecture": "GPTNeoX", "tokenizer": "bytes (Evo 2's CharLevelTokenizer "
                      "ids)", "layers": cfg.layers, "width": cfg.width, "heads": cfg.heads,
                      "context": cfg.context,
                      "parameters": int(sum(p.numel() for p in model.parameters())),
                      "train_tokens": cfg.steps * cfg.batch_size * cfg.context,
                      "history": history,
                      "heldout_loss_nats": test_loss,
                      "baselines_nats": {"uniform (ln 4)": LN4,
                                         "base composition": base_entropy(train_seqs),
                                         **{f"order-{k} Markov": markov_loss(train_seqs,
                                                                             test_seqs, k)
                                            for k in (2, 5)}}},
            "sae": {"path": sae_dir, **sae_report},
            "sha256": {p.relative_to(tmp).as_posix(): _sha256(p)
                       for p in sorted([*tmp.glob("model/*.safetensors"),
                                        *(tmp / sae_dir).glob("*.safetensors")])},
            "timings_s": {"model": round(model_s, 1), "sae": round(sae_s, 1),
                          "total": round(time.perf_counter() - t0, 1),
                          "cpu": round(time.process_time() - cpu0, 1)},
            "machine": {"platform": platform.platform(), "threads": cfg.threads},
            "config": to_dict(cfg), "quick": quick,
        }
        write_json(tmp / "dna_demo.json", report)
        write_json(tmp / "workspace.json", {
            "version": 1, "model": "model", "dictionaries": [sae_dir], "data": [],
            "sequences": ["sequences.fa.gz"], "caches": [], "analyses": [], "feature_labels": {},
            "figures": [], "settings": {"annotations": "annotations.bed"}})
        (tmp / "train.fa").unlink()
        for name in OUTPUTS:
            _replace(tmp / name, out / name)
    return report


def _train_sae(cfg: DnaDemoConfig, ws: Path, progress, cancel) -> tuple[str, dict]:
    """Harvest the SAE's layer over both strands of the training windows, then train it with
    the project's trainer."""
    import json

    from ..harvest import HarvestConfig, harvest
    from ..inputs.dna import DnaConfig, DnaDataset
    from ..models import load_model
    from ..training import TrainConfig, train
    from .build import relative_paths
    from .model import deterministic

    hookpoint = f"layers.{cfg.sae_layer}"
    with tempfile.TemporaryDirectory(prefix="biollm-dna-cache-") as cache, \
            deterministic(cfg.seed, cfg.threads):
        lm = load_model(str(ws / "model"), device="cpu")
        data = DnaDataset(ws / "train.fa", DnaConfig(window=cfg.context, stride=cfg.context,
                                                     reverse_complement=True, tokenizer="byte"))
        harvest(lm, data.examples(), HarvestConfig(hookpoints=[hookpoint], batch_size=16,
                                                   store_dtype="float32"),
                cache, progress=progress, cancel=cancel, total_examples=len(data),
                meta={"data": "train.fa"})
        steps = max(1, cfg.dict_tokens // cfg.dict_batch_size)
        written = train(TrainConfig(
            out=str(ws / "dictionaries" / "sae"), model=str(ws / "model"), cache=cache,
            kind="sae", hookpoint=[hookpoint], activation="topk", latents=cfg.dict_latents,
            k=cfg.dict_k, tokens=cfg.dict_tokens, batch_size=cfg.dict_batch_size,
            warmup_steps=max(1, steps // 10), device="cpu", seed=cfg.seed, checkpoint_every=0,
            eval_cells=0), progress=progress, cancel=cancel)
    folder = Path(written[hookpoint])
    relative_paths(folder, ws)
    cfg_json = json.loads((folder / "cfg.json").read_text())
    cfg_json["training"]["config"]["cache"] = ("(layer activations over both strands of the "
                                               "training windows, harvested during the build, "
                                               "then deleted)")
    write_json(folder / "cfg.json", cfg_json)
    for extra in ("checkpoints",):  # nothing to resume once the build is done
        shutil.rmtree(folder.parent / extra, ignore_errors=True)
    summary = {k: v for k, v in cfg_json.get("training", {}).items() if k != "config"}
    return folder.relative_to(ws).as_posix(), summary


def _records_csv(records, path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"name": [r.name for r in records], "origin": [r.origin for r in records],
                       "length": [len(r.seq) for r in records],
                       "cds": [len(r.cds) for r in records],
                       "split": ["heldout" if r.heldout else "train" for r in records]})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _replace(src: Path, dest: Path) -> None:
    if src.is_dir():
        with atomic_dir(dest) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    else:
        os.replace(src, dest)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    from ..progress import TqdmProgress

    ap = argparse.ArgumentParser(prog="python -m biollm_engine.demo.dna",
                                 description="Build the DNA demo (and analyse it).")
    ap.add_argument("--out", default=str(DEFAULT_DNA_DEMO))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--analyse", action="store_true",
                    help="then compare its features with the annotations (docs/figures/dna_*)")
    args = ap.parse_args(argv)
    with TqdmProgress("DNA demo", unit="tok") as bar:
        report = build_dna_demo(args.out, progress=bar, quick=args.quick)
    m = report["model"]
    print(f"DNA demo in {args.out}: held-out loss {m['heldout_loss_nats']:.4f} nats/base "
          f"(ln 4 = {m['baselines_nats']['uniform (ln 4)']:.4f}, order-5 Markov "
          f"{m['baselines_nats']['order-5 Markov']:.4f}); SAE FVU "
          f"{report['sae'].get('fvu', float('nan')):.3f}; built in "
          f"{report['timings_s']['total']:.0f} s")
    if args.analyse:
        from .dna_analysis import run_dna_analysis

        with TqdmProgress("DNA analysis", unit="tok") as bar:
            written = run_dna_analysis(args.out, progress=bar)
        for path in written:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
