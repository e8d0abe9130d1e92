"""The on-disk activation cache: sharded safetensors plus an `index.json`.

A cache folder holds `shard_00000.safetensors`, ... each with `acts.<hookpoint>` [n, d] and the
tokens' sources `record`, `position`, `token_id`, `unit` [n], and `index.json` listing the
hookpoints, widths, storage dtype, shards (file, tokens, examples) and `meta` (model, data, unit
names, harvest config). Shards and the index are written atomically and the index is rewritten
after each shard, so an interrupted harvest leaves a readable cache of its complete shards.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import BioLLMError
from .fileio import atomic_path, read_json, write_json

FORMAT = "biollm-activations"
VERSION = 1
SOURCE_FIELDS = ("record", "position", "token_id", "unit")
STORE_DTYPES = ("float16", "bfloat16", "float32")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


class ShardWriter:
    """Appends shards to a cache folder and keeps its index current.

    With `background`, each shard is concatenated and written on a worker thread while the
    caller computes the next one (on a GPU the write would otherwise stall the model); at most
    one shard is pending, and `close` waits for it.
    """

    def __init__(self, out_dir: str | Path, index: dict, background: bool = False):
        self.dir = Path(out_dir)
        self.index = index
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer") if background else None
        self._pending: Future | None = None

    def write(self, acts: dict, sources: dict, examples: int) -> None:
        """Write one shard ({hookpoint: [n, d]}, {field: [n]}; values may be lists of parts to
        concatenate) covering `examples` more examples."""
        if self._pool is None:
            self._write(acts, sources, examples)
            return
        self.wait()
        self._pending = self._pool.submit(self._write, acts, sources, examples)

    def wait(self) -> None:
        """Block until the pending shard is on disk; re-raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _write(self, acts: dict, sources: dict, examples: int) -> None:
        import torch
        from safetensors.torch import save_file

        def whole(v):
            return torch.cat(v) if isinstance(v, list) else v

        tensors = {f"acts.{h}": whole(t).contiguous() for h, t in acts.items()}
        tensors.update({k: whole(v).contiguous() for k, v in sources.items()})
        n = int(tensors[f"acts.{next(iter(acts))}"].shape[0])
        name = shard_name(len(self.index["shards"]))
        with atomic_path(self.dir / name) as tmp:
            save_file(tensors, str(tmp))
        self.index["shards"].append({"file": name, "tokens": n, "examples": examples})
        self.index["num_tokens"] += n
        self.index["examples_consumed"] += examples
        self.save_index()

    def save_index(self) -> None:
        write_json(self.dir / "index.json", self.index)


def new_index(hookpoints: Sequence[str], widths: dict, dtype: str, meta: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "hookpoints": list(hookpoints),
            "widths": dict(widths), "dtype": dtype, "shards": [], "num_tokens": 0,
            "examples_consumed": 0, "complete": False, "meta": meta}


def read_index(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / "index.json"
    if not Path(cache_dir).is_dir():
        raise BioLLMError(f"activation cache {cache_dir} does not exist; run `biollm harvest` first.")
    index = read_json(path, "activation cache index")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise BioLLMError(f"{path} is not an activation cache index; point to a folder written by "
                          "`biollm harvest`.")
    for key in ("hookpoints", "widths", "dtype", "shards", "num_tokens"):
        if key not in index:
            raise BioLLMError(f"activation cache index {path} lacks {key!r}; harvest again.")
    return index


class ActivationCache:
    """Read access to a harvested cache, lazily, a slice or a shuffled stream at a time."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.index = read_index(self.dir)
        self.hookpoints: list[str] = list(self.index["hookpoints"])
        self.widths: dict[str, int] = {h: int(w) for h, w in self.index["widths"].items()}
        self.dtype: str = self.index["dtype"]
        self.meta: dict = self.index.get("meta", {})
        self.complete: bool = bool(self.index.get("complete", False))
        self.shards: list[dict] = list(self.index["shards"])
        self.offsets = np.concatenate([[0], np.cumsum([s["tokens"] for s in self.shards])]).astype(np.int64)
        self.num_tokens = int(self.offsets[-1])
        for s in self.shards:
            if not (self.dir / s["file"]).exists():
                raise BioLLMError(f"activation cache {self.dir} is missing {s['file']}; harvest "
                                  "again (an interrupted harvest resumes).")

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.dir)!r}, tokens={self.num_tokens}, "
                f"hookpoints={self.hookpoints})")

    def check_hookpoints(self, hookpoints: Sequence[str]) -> None:
        """BioLLMError, in one line, for the first of `hookpoints` this cache does not hold."""
        missing = [h for h in hookpoints if h not in self.widths]
        if missing:
            raise BioLLMError(f"hookpoint {missing[0]!r} is not in the cache {self.dir}; it holds "
                              f"{', '.join(self.hookpoints)}: harvest it, or choose one of those.")

    def _load(self, shard: int, keys: Sequence[str], start: int = 0, stop: int | None = None) -> dict:
        from safetensors import SafetensorError, safe_open

        path = self.dir / self.shards[shard]["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_slice(k)[start:stop] for k in keys}
        except (SafetensorError, OSError, KeyError) as e:
            raise BioLLMError(f"shard {path} of the activation cache is unreadable ({e}); delete "
                              "it and its index entry, or harvest again.") from None

    def _ranges(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, local start, local stop) covering global tokens [start, stop)."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for s in range(max(first, 0), len(self.shards)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            if hi > start:
                yield s, max(start, lo) - lo, min(stop, hi) - lo

    def read(self, hookpoint: str, start: int = 0, stop: int | None = None):
        """Activations of tokens [start, stop) at `hookpoint`, a tensor [n, width]."""
        import torch

        self.check_hookpoints([hookpoint])
        stop = self.num_tokens if stop is None else min(stop, self.num_tokens)
        key = f"acts.{hookpoint}"
        parts = [self._load(s, [key], a, b)[key] for s, a, b in self._ranges(start, stop)]
        if not parts:
            return torch.empty(0, self.widths[hookpoint], dtype=getattr(torch, self.dtype))
        return torch.cat(parts)

    def sources(self):
        """One row per token: record, position, token_id, unit (a pandas DataFrame)."""
        import pandas as pd

        cols = {k: [] for k in SOURCE_FIELDS}
        for s in range(len(self.shards)):
            for k, v in self._load(s, SOURCE_FIELDS).items():
                cols[k].append(v.numpy())
        return pd.DataFrame({k: np.concatenate(v) if v else np.zeros(0, np.int64)
                             for k, v in cols.items()})

    def iter_batches(self, hookpoints: Sequence[str] | None = None, batch_size: int = 4096,
                     shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                     window: int = 4) -> Iterator[dict]:
        """Batches {hookpoint: tensor [batch_size, width]} over the whole cache, once.

        Shuffled: shard order is shuffled and tokens are shuffled within a window of `window`
        shards, so at most that many shards are in memory at once.
        """
        import torch

        hookpoints = list(hookpoints or self.hookpoints)
        self.check_hookpoints(hookpoints)
        if batch_size < 1:
            raise BioLLMError("batch_size must be at least 1.")
        keys = [f"acts.{h}" for h in hookpoints]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.shards)) if shuffle else np.arange(len(self.shards))
        window = max(1, window) if shuffle else 1
        carry: dict | None = None
        for w in range(0, len(order), window):
            loaded = [self._load(int(s), keys) for s in order[w:w + window]]
            pool = {k: torch.cat([d[k] for d in loaded]) for k in keys}
            del loaded  # only the pool stays in memory
            if carry is not None:
                pool = {k: torch.cat([carry[k], pool[k]]) for k in keys}
            n = pool[keys[0]].shape[0]
            if shuffle:
                perm = torch.from_numpy(rng.permutation(n))
                pool = {k: v[perm] for k, v in pool.items()}
            full = n - n % batch_size
            for i in range(0, full, batch_size):
                yield {h: pool[k][i:i + batch_size] for h, k in zip(hookpoints, keys)}
            carry = {k: v[full:] for k, v in pool.items()}
        if carry is not None and not drop_last and carry[keys[0]].shape[0]:
            yield {h: carry[k] for h, k in zip(hookpoints, keys)}
