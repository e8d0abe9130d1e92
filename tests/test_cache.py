"""Reading an activation cache: slices, sources, shuffled bounded streams, damaged caches."""

import json

import numpy as np
import pytest
import torch

from biollm_engine.cache import ActivationCache, ShardWriter, new_index
from biollm_engine.errors import BioLLMError

WIDTHS = {"layers.0": 8, "layers.1.mlp.out": 8}


def write_cache(path, shard_sizes, dtype=torch.float32):
    """A cache whose activations identify their token: row t is t + 0.1 * column."""
    writer = ShardWriter(path, new_index(list(WIDTHS), WIDTHS, str(dtype).split(".")[1],
                                         {"model": "m", "units": ["A", "B"]}))
    writer.save_index()
    start = 0
    for n in shard_sizes:
        t = torch.arange(start, start + n, dtype=torch.float32)[:, None] + 0.1 * torch.arange(8)
        acts = {"layers.0": t.to(dtype), "layers.1.mlp.out": (-t).to(dtype)}
        sources = {"record": torch.arange(start, start + n) // 3,
                   "position": (torch.arange(start, start + n) % 3).int(),
                   "token_id": torch.arange(start, start + n) + 100,
                   "unit": (torch.arange(start, start + n) % 2).int()}
        writer.write(acts, sources, examples=n // 3)
        start += n
    writer.index["complete"] = True
    writer.save_index()
    return ActivationCache(path)


def token_ids(rows):
    return rows[:, 0].round().long()


def test_read_spans_shards(tmp_path):
    cache = write_cache(tmp_path / "c", [10, 7, 0, 12])
    assert cache.num_tokens == len(cache) == 29
    assert cache.widths == WIDTHS and cache.meta["units"] == ["A", "B"] and cache.complete
    assert token_ids(cache.read("layers.0", 5, 22)).tolist() == list(range(5, 22))
    assert token_ids(cache.read("layers.0")).tolist() == list(range(29))
    assert torch.equal(cache.read("layers.1.mlp.out", 3, 9), -cache.read("layers.0", 3, 9))
    assert cache.read("layers.0", 29, 40).shape == (0, 8)
    with pytest.raises(BioLLMError, match="not in the cache"):
        cache.read("layers.7")


def test_sources_table(tmp_path):
    cache = write_cache(tmp_path / "c", [6, 6])
    src = cache.sources()
    assert list(src.columns) == ["record", "position", "token_id", "unit"]
    assert src["token_id"].tolist() == list(range(100, 112))
    assert src["record"].tolist() == [i // 3 for i in range(12)]


def test_unshuffled_batches_are_in_order(tmp_path):
    cache = write_cache(tmp_path / "c", [10, 7, 12])
    batches = list(cache.iter_batches(batch_size=8, shuffle=False))
    assert [len(b["layers.0"]) for b in batches] == [8, 8, 8, 5]
    assert token_ids(torch.cat([b["layers.0"] for b in batches])).tolist() == list(range(29))
    assert [len(b["layers.0"]) for b in cache.iter_batches(batch_size=8, shuffle=False,
                                                          drop_last=True)] == [8, 8, 8]


def test_shuffled_batches_cover_every_token_once_and_keep_rows_together(tmp_path):
    cache = write_cache(tmp_path / "c", [50] * 8)
    batches = list(cache.iter_batches(["layers.0", "layers.1.mlp.out"], batch_size=32, seed=3,
                                      window=2))
    assert all(len(b["layers.0"]) == 32 for b in batches[:-1])
    ids = token_ids(torch.cat([b["layers.0"] for b in batches]))
    assert sorted(ids.tolist()) == list(range(400))
    assert ids.tolist() != list(range(400))
    for b in batches:  # hookpoints of one token stay in the same row
        assert torch.equal(b["layers.1.mlp.out"], -b["layers.0"])
    again = torch.cat([b["layers.0"] for b in cache.iter_batches(batch_size=32, seed=3, window=2)])
    other = torch.cat([b["layers.0"] for b in cache.iter_batches(batch_size=32, seed=4, window=2)])
    assert torch.equal(token_ids(again), ids) and not torch.equal(token_ids(other), ids)


def test_shuffled_stream_holds_a_window_of_shards_at_a_time(tmp_path, monkeypatch):
    cache = write_cache(tmp_path / "c", [20] * 10)
    loads = []
    real = ActivationCache._load

    def counting(self, shard, keys, start=0, stop=None):
        loads.append(shard)
        return real(self, shard, keys, start, stop)

    monkeypatch.setattr(ActivationCache, "_load", counting)
    it = cache.iter_batches(batch_size=16, window=3)
    first = next(it)
    assert len(first["layers.0"]) == 16 and len(loads) == 3  # lazily: one window read so far
    # the window's tokens come only from the shards it read
    shard_of = token_ids(first["layers.0"]) // 20
    assert set(shard_of.tolist()) <= set(loads)
    rest = list(it)
    assert sorted(loads) == list(range(10))
    assert sum(len(b["layers.0"]) for b in [first] + rest) == 200


def test_float16_cache_reads_back_float16(tmp_path):
    cache = write_cache(tmp_path / "c", [5], dtype=torch.float16)
    assert cache.read("layers.0").dtype == torch.float16
    assert next(cache.iter_batches(batch_size=5))["layers.0"].dtype == torch.float16


def test_damaged_caches_give_one_line(tmp_path):
    with pytest.raises(BioLLMError, match="does not exist"):
        ActivationCache(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BioLLMError, match="does not exist"):
        ActivationCache(tmp_path / "empty")
    write_cache(tmp_path / "c", [10, 10])
    index = tmp_path / "c" / "index.json"
    good = index.read_text()
    index.write_text(good[:40])
    with pytest.raises(BioLLMError, match="not valid JSON"):
        ActivationCache(tmp_path / "c")
    index.write_text(json.dumps({"hello": 1}))
    with pytest.raises(BioLLMError, match="not an activation cache"):
        ActivationCache(tmp_path / "c")
    index.write_text(good)
    shard = tmp_path / "c" / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:100])
    cache = ActivationCache(tmp_path / "c")
    assert token_ids(cache.read("layers.0", 0, 10)).tolist() == list(range(10))
    with pytest.raises(BioLLMError, match="shard_00001.safetensors .*unreadable"):
        cache.read("layers.0", 0, 20)
    shard.unlink()
    with pytest.raises(BioLLMError, match="missing shard_00001"):
        ActivationCache(tmp_path / "c")
    with pytest.raises(BioLLMError, match="batch_size"):
        list(write_cache(tmp_path / "d", [3]).iter_batches(batch_size=0))


def test_reading_never_changes_the_cache(tmp_path):
    cache = write_cache(tmp_path / "c", [9, 9])
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}
    list(cache.iter_batches(batch_size=4))
    cache.sources()
    cache.read("layers.0", 2, 15)
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    assert np.isclose(cache.read("layers.0", 2, 3)[0, 1].item(), 2.1, atol=1e-6)


def test_background_writer_matches_and_reports_errors(tmp_path):
    sync = write_cache(tmp_path / "sync", [7, 5])
    writer = ShardWriter(tmp_path / "bg", new_index(list(WIDTHS), WIDTHS, "float32", {}),
                         background=True)
    for s in range(2):
        parts = [sync.read(h, int(sync.offsets[s]), int(sync.offsets[s + 1])) for h in WIDTHS]
        src = sync.sources().iloc[int(sync.offsets[s]):int(sync.offsets[s + 1])]
        writer.write({h: [p[:3], p[3:]] for h, p in zip(WIDTHS, parts)},  # parts are joined
                     {k: torch.from_numpy(src[k].to_numpy()) for k in src.columns}, 1)
    writer.close()
    bg = ActivationCache(tmp_path / "bg")
    assert bg.shards == [{**s, "examples": 1} for s in sync.shards]
    for h in WIDTHS:
        assert torch.equal(bg.read(h), sync.read(h))
    assert bg.sources().equals(sync.sources())
    broken = ShardWriter(tmp_path / "broken", new_index(list(WIDTHS), WIDTHS, "float32", {}),
                         background=True)
    broken.write({"layers.0": "not a tensor"}, {}, 1)
    with pytest.raises(Exception):
        broken.close()
    assert broken.index["shards"] == []
