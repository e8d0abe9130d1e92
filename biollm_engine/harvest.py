"""Run a model over tokenized examples and keep the activations of the tokens that matter.

`harvest` streams them into an on-disk `ActivationCache` (resumable); `live_batches` hands them
straight to a consumer, e.g. a trainer without a cache. Both keep only tokens that are real
(never padding) and marked `keep` by the data source, and both stop each forward pass after the
deepest hookpoint asked for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from .cache import STORE_DTYPES, ActivationCache, ShardWriter, new_index, read_index
from .config import to_dict
from .errors import BioLLMError
from .inputs.base import TokenizedExample
from .models.hookpoints import capture, resolve_hookpoint, run_to
from .models.loading import LoadedModel
from .progress import Cancelled, CancelToken, ProgressCallback, ProgressTracker


@dataclass
class HarvestConfig:
    """What to harvest and how."""

    hookpoints: list[str] = field(default_factory=list, metadata={
        "help": "hookpoints to capture, e.g. layers.3 or layers.3.mlp.out"})
    batch_size: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "stop after this many harvested tokens (default: the whole data set)"})
    max_length: int | None = field(default=None, metadata={
        "help": "truncate each example to this many tokens"})
    genes_only: bool = field(default=False, metadata={
        "help": "keep only the tokens of gene names (cell sentences)"})
    shard_tokens: int = field(default=65536, metadata={"help": "tokens per cache shard"})
    memory_budget_mb: float = field(default=1024.0, metadata={
        "help": "memory for buffered activations; shards shrink to fit it"})
    store_dtype: Literal["float16", "bfloat16", "float32"] = field(default="float16", metadata={
        "help": "dtype of the stored activations"})

    def __post_init__(self):
        if self.store_dtype not in STORE_DTYPES:
            raise BioLLMError(f"store dtype must be one of {', '.join(STORE_DTYPES)}.")
        for name in ("batch_size", "shard_tokens"):
            if getattr(self, name) < 1:
                raise BioLLMError(f"{name.replace('_', ' ')} must be at least 1.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BioLLMError("max tokens must be at least 1.")
        if self.max_length is not None and self.max_length < 1:
            raise BioLLMError("max length must be at least 1.")
        if self.memory_budget_mb <= 0:
            raise BioLLMError("memory budget must be positive.")


def _batches(examples: Iterable[TokenizedExample], size: int) -> Iterator[list[TokenizedExample]]:
    it = iter(examples)
    while batch := list(itertools.islice(it, size)):
        yield batch


def pad_batch(batch: list[TokenizedExample], pad_id: int, max_length: int | None):
    """Right-padded (ids, attention mask, keep, unit, record) numpy arrays [B, T]."""
    lengths = [len(e.input_ids) if max_length is None else min(len(e.input_ids), max_length)
               for e in batch]
    T = max(max(lengths), 1)
    ids = np.full((len(batch), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), T), dtype=bool)
    keep = np.zeros((len(batch), T), dtype=bool)
    unit = np.full((len(batch), T), -1, dtype=np.int32)
    for b, (e, n) in enumerate(zip(batch, lengths)):
        ids[b, :n] = e.input_ids[:n]
        mask[b, :n] = True
        keep[b, :n] = e.keep[:n]
        unit[b, :n] = e.unit[:n]
    record = np.array([e.record for e in batch], dtype=np.int64)
    return ids, mask, keep, unit, record


def kept_activations(lm: LoadedModel, examples: Iterable[TokenizedExample],
                     hookpoints: Sequence[str], batch_size: int = 8,
                     max_length: int | None = None, dtype=None, device="cpu"
                     ) -> Iterator[tuple[dict, dict, int]]:
    """Per forward batch: ({hookpoint: [n, d]}, {source field: [n]}, examples in the batch).

    Only kept, non-padding tokens, in example then position order, on `device` (None: where
    the model ran); `dtype` casts the activations (default: the model's).
    """
    import torch

    names = [resolve_hookpoint(lm, h).name for h in hookpoints]
    pad_id = lm.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    with torch.inference_mode():
        for batch in _batches(examples, batch_size):
            ids, mask, keep, unit, record = pad_batch(batch, pad_id, max_length)
            if lm.max_tokens is not None and ids.shape[1] > lm.max_tokens:
                raise BioLLMError(f"an input of {ids.shape[1]} tokens is longer than the "
                                  f"{lm.max_tokens} positions {lm.name} reads; use a smaller "
                                  "window (DNA) or max_length.")
            sel = keep & mask
            rows, cols = np.nonzero(sel)
            sources = {"record": torch.from_numpy(record[rows]),
                       "position": torch.from_numpy(cols.astype(np.int32)),
                       "token_id": torch.from_numpy(ids[rows, cols]),
                       "unit": torch.from_numpy(unit[rows, cols])}
            if len(rows) == 0:
                yield {h: torch.empty(0, lm.d_model, dtype=dtype) for h in names}, sources, len(batch)
                continue
            ids_t = torch.from_numpy(ids).to(lm.device)
            mask_t = torch.from_numpy(mask).to(device=lm.device, dtype=torch.long)
            with capture(lm, names) as acts:
                run_to(lm, ids_t, mask_t)
            # the kept rows by their flat index (a boolean mask would wait on the device to
            # count them); all of them, as in windows of DNA, without a copy
            flat = None if len(rows) == sel.size else \
                torch.from_numpy(rows * sel.shape[1] + cols).to(lm.device)
            out = {}
            for h in names:
                a = acts[h].reshape(-1, acts[h].shape[-1])
                out[h] = (a if flat is None else a.index_select(0, flat)).to(
                    device=device or a.device, dtype=dtype)
            yield out, sources, len(batch)


def live_batches(lm: LoadedModel, examples: Iterable[TokenizedExample], hookpoints: Sequence[str],
                 batch_size: int = 4096, forward_batch_size: int = 8,
                 max_length: int | None = None, drop_last: bool = False) -> Iterator[dict]:
    """Batches {hookpoint: tensor [batch_size, d]} of kept tokens straight from the model, in
    data order (float32, on the CPU)."""
    import torch

    parts: dict[str, list] = {}
    have = 0
    for acts, _, _ in kept_activations(lm, examples, hookpoints, forward_batch_size, max_length,
                                       dtype=torch.float32):
        for h, t in acts.items():
            parts.setdefault(h, []).append(t)
        have += len(next(iter(acts.values())))
        if have >= batch_size:
            pool = {h: torch.cat(p) for h, p in parts.items()}
            full = have - have % batch_size
            for i in range(0, full, batch_size):
                yield {h: t[i:i + batch_size] for h, t in pool.items()}
            parts = {h: [t[full:]] for h, t in pool.items()}
            have -= full
    if have and not drop_last:
        yield {h: torch.cat(p) for h, p in parts.items()}


def _same_harvest(index: dict, fresh: dict) -> bool:
    """Whether resuming `index` with `fresh`'s settings yields one consistent cache."""
    old_meta, new_meta = index.get("meta", {}), fresh["meta"]
    same = (all(index.get(k) == fresh[k] for k in ("hookpoints", "dtype"))
            and all(old_meta.get(k) == new_meta.get(k) for k in ("model", "data", "data_options")))
    old_cfg, new_cfg = old_meta.get("config", {}), new_meta["config"]
    same &= all(old_cfg.get(k) == new_cfg.get(k) for k in ("genes_only", "max_length"))
    if index.get("complete"):  # finished: only the same request is answered by it
        same &= old_cfg.get("max_tokens") == new_cfg.get("max_tokens")
    return same


def _open_writer(out_dir: Path, fresh: dict, overwrite: bool) -> ShardWriter:
    """A writer on `out_dir`: resuming a matching unfinished harvest, else starting anew."""
    if (out_dir / "index.json").exists():
        index = read_index(out_dir)
        if not overwrite and _same_harvest(index, fresh):
            index["meta"] = fresh["meta"]
            return ShardWriter(out_dir, index, background=True)
        if not overwrite:
            raise BioLLMError(f"{out_dir} holds a cache of another harvest (other model, data, "
                              "hookpoints or token selection); choose another output folder or "
                              "overwrite it.")
        for s in index.get("shards", []):
            (out_dir / s["file"]).unlink(missing_ok=True)
        (out_dir / "index.json").unlink()
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise BioLLMError(f"output folder {out_dir} is not empty and is not an activation cache; "
                          "choose a new or empty folder.")
    for stale in out_dir.glob("shard_*.safetensors") if out_dir.exists() else ():
        stale.unlink()
    writer = ShardWriter(out_dir, fresh, background=True)
    writer.save_index()
    return writer


def harvest(lm: LoadedModel, examples: Iterable[TokenizedExample], cfg: HarvestConfig,
            out_dir: str | Path, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None, meta: dict | None = None,
            total_examples: int | None = None, overwrite: bool = False) -> ActivationCache:
    """Harvest `cfg.hookpoints` over `examples` into a cache at `out_dir` and return it.

    `meta` is stored in the index (give `data` and `units`, the gene names `unit` indexes). A
    folder holding an unfinished harvest of the same model, data and hookpoints is resumed from
    its last complete shard; a finished one is returned as it is.
    """
    import torch

    if not cfg.hookpoints:
        raise BioLLMError("no hookpoints to harvest; give at least one, e.g. layers.0.")
    hps = [resolve_hookpoint(lm, h) for h in dict.fromkeys(cfg.hookpoints)]
    names = [h.name for h in hps]
    out_dir = Path(out_dir)
    fresh = new_index(names, {h.name: h.width for h in hps}, cfg.store_dtype,
                      {"model": lm.name, "arch": lm.arch.name, **(meta or {}),
                       "config": to_dict(cfg)})
    writer = _open_writer(out_dir, fresh, overwrite)
    index = writer.index
    if index["complete"]:
        writer.close()
        return ActivationCache(out_dir)
    done_examples = int(index["examples_consumed"])
    done_tokens = int(index["num_tokens"])
    if total_examples is None and hasattr(examples, "__len__"):
        total_examples = len(examples)  # type: ignore[arg-type]
    by_tokens = cfg.max_tokens is not None
    tracker = ProgressTracker("harvest", cfg.max_tokens if by_tokens else total_examples,
                              progress, cancel, start_step=done_tokens if by_tokens else done_examples)
    bytes_per_token = sum(h.width for h in hps) * torch.finfo(getattr(torch, cfg.store_dtype)).bits // 8
    # alive at once: the buffer being filled, the pending shard and its concatenated copy
    shard_tokens = max(1, min(cfg.shard_tokens,
                              int(cfg.memory_budget_mb * 2**20 / (3 * bytes_per_token))))
    dtype = getattr(torch, cfg.store_dtype)
    buf_acts: dict[str, list] = {h: [] for h in names}
    buf_src: dict[str, list] = {}
    buf = {"tokens": 0, "examples": 0}

    def flush() -> None:
        nonlocal buf_acts, buf_src
        if buf["examples"] == 0:
            return
        writer.write(buf_acts, buf_src, buf["examples"])  # the writer owns these lists now
        buf_acts, buf_src = {h: [] for h in names}, {}
        buf.update(tokens=0, examples=0)

    total = done_tokens
    remaining = itertools.islice(examples, done_examples, None)
    if by_tokens and total >= cfg.max_tokens:  # stopped after its last shard, before marking
        remaining = iter(())
    try:
        tracker.cancel.raise_if_cancelled()
        for acts, sources, n_ex in kept_activations(lm, remaining, names, cfg.batch_size,
                                                    cfg.max_length, dtype):
            n = len(sources["record"])
            if by_tokens and total + n > cfg.max_tokens:
                n = cfg.max_tokens - total
                acts = {h: t[:n] for h, t in acts.items()}
                sources = {k: v[:n] for k, v in sources.items()}
            for h in names:
                buf_acts[h].append(acts[h])
            for k, v in sources.items():
                buf_src.setdefault(k, []).append(v)
            buf["tokens"] += n
            buf["examples"] += n_ex
            total += n
            if buf["tokens"] >= shard_tokens:
                flush()
            tracker.update(steps=n if by_tokens else n_ex, tokens=n)
            if by_tokens and total >= cfg.max_tokens:
                break
        flush()
    except (Cancelled, KeyboardInterrupt):
        flush()
        raise
    finally:
        writer.close()
    if index["num_tokens"] == 0:
        raise BioLLMError("the data yielded no tokens to harvest (empty data, or no token marked "
                          "to keep, e.g. genes-only on data without gene names); check the data.")
    index["complete"] = True
    writer.save_index()
    tracker.update(steps=0, force=True, message="done")
    return ActivationCache(out_dir)


__all__ = ["HarvestConfig", "harvest", "kept_activations", "live_batches"]
