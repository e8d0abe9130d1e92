"""Cache keys: small files by their contents, large ones by size, time and samples."""

import os
import shutil

from biollm_engine import provenance


def test_small_files_are_keyed_by_contents_large_ones_by_time_and_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "LARGE", 4 << 20)
    small, large = tmp_path / "cfg.json", tmp_path / "weights.bin"
    small.write_text('{"k": 32}')
    large.write_bytes(os.urandom(5 << 20))
    key = provenance.cache_key({"top_n": 10}, [("s", small), ("w", large)], code=[])
    assert provenance.cache_key({"top_n": 10}, [("s", small), ("w", large)], code=[]) == key
    assert provenance.cache_key({"top_n": 3}, [("s", small), ("w", large)], code=[]) != key
    os.utime(small, ns=(10**18, 10**18))  # touched, same contents: same key
    assert provenance.cache_key({"top_n": 10}, [("s", small), ("w", large)], code=[]) == key
    copy = tmp_path / "copy.json"
    shutil.copyfile(small, copy)
    assert provenance.file_digest(copy) == provenance.file_digest(small)
    small.write_text('{"k": 64}')
    key2 = provenance.cache_key({"top_n": 10}, [("s", small), ("w", large)], code=[])
    assert key2 != key
    with open(large, "r+b") as f:  # one byte of the weights rewritten, far from any sample
        f.seek((2 << 20) + 12345)
        f.write(b"\xff")
    os.utime(large, ns=(10**18 + 1, 10**18 + 1))
    assert provenance.cache_key({"top_n": 10}, [("s", small), ("w", large)], code=[]) != key2
