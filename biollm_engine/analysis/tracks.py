"""Per-base activation tracks of chosen features along DNA records, and bedGraph output.

A token's `unit` is the lowest forward-strand base it covers and its `record` the window it was
read in (`DnaDataset.windows_table()` maps windows to sequence records). A token covers `span`
bases (1 for byte-level models; the token's length for k-mer / BPE tokenizers). A base's value
is the max over the tokens covering it, so overlapping windows (and both strands) merge into one
value per base. `stream_tracks` does this in bounded memory for windows in file order.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import BioLLMError
from ..fileio import atomic_path
from .chunks import EncodedChunk

ZERO_BLOCK = 1 << 20  # bases per block when a stretch without activity is flushed
LINES_AT_ONCE = 1 << 16  # bedGraph lines made in one piece (about 60 bytes each while made)


def token_spans(tokenizer) -> np.ndarray:
    """Bases each token id covers: its string's length without word markers (0 for specials)."""
    n = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []))
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = np.zeros(n, dtype=np.int64)
    for i, t in enumerate(tokens):
        if i not in special and t:
            out[i] = len(t.replace("\u0120", "").replace("##", "").replace("\u2581", ""))
    return out


def _active(chunk: EncodedChunk, feats: np.ndarray, span: np.ndarray | None):
    """(feature row, first base, width, value, window) of the chunk's nonzero activations."""
    from ..dictionaries.formats import check_features

    check_features(feats, chunk.acts.shape[1])
    acts = chunk.acts
    if len(feats) != acts.shape[1] or np.any(feats != np.arange(len(feats))):
        acts = acts[:, feats]
    row, col, data = csr_entries(acts)
    src = chunk.sources
    start = src.unit[row]
    width = np.ones(len(start), np.int64) if span is None else \
        np.asarray(span)[src.token_id[row]].astype(np.int64)
    ok = (start >= 0) & (width > 0)
    return col[ok], start[ok], width[ok], data[ok], src.record[row][ok]


def csr_entries(m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, value) of a CSR matrix's stored entries, in its order (what `tocoo` gives,
    without scipy's checks, which cost more than this on a chunk)."""
    row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return row, m.indices, m.data


def _expand(f, s, w, v):
    """Each token's entry repeated over the bases it covers: (feature row, base, value)."""
    rep = np.repeat(np.arange(len(s)), w)
    base = s[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(w) - w, w))
    return f[rep], base, v[rep]


def base_tracks(chunks: Iterable[EncodedChunk], features: Sequence[int],
                record_lengths: dict[int, int] | Sequence[int],
                span: np.ndarray | None = None,
                windows: pd.DataFrame | None = None) -> dict[int, np.ndarray]:
    """Return {record: float32 [len(features), record length]} (zeros where nothing fired), all
    in memory (see `stream_tracks` for long records).

    `span` maps a token id to the bases it covers (default 1). `windows` is the data set's
    `windows_table()`, mapping each token's window to its sequence record; without it a token's
    `record` is taken to be the sequence record itself.
    """
    feats = np.asarray(features, dtype=np.int64)
    lengths = dict(enumerate(record_lengths)) if not isinstance(record_lengths, dict) \
        else record_lengths
    to_record = None if windows is None else windows["record"].to_numpy()
    tracks = {r: np.zeros((len(feats), int(n)), np.float32) for r, n in lengths.items()}
    for chunk in chunks:
        f, s, w, v, win = _active(chunk, feats, span)
        rec = win if to_record is None else to_record[win]
        for r in np.unique(rec):
            if int(r) not in tracks:
                raise BioLLMError(f"record {int(r)} has no length; pass every record's length.")
            t = tracks[int(r)]
            sel = rec == r
            ff, base, vv = _expand(f[sel], s[sel], w[sel], v[sel])
            inside = base < t.shape[1]
            np.maximum.at(t, (ff[inside], base[inside]), vv[inside])
    return tracks


class _Buffer:
    """Values of the bases [lo, lo + width) of one record, not yet final."""

    def __init__(self, n_features: int, length: int):
        self.lo, self.length = 0, int(length)
        self.vals = np.zeros((n_features, 0), np.float32)

    def add(self, f, base, v) -> None:
        keep = (base >= self.lo) & (base < self.length)
        f, base, v = f[keep], base[keep] - self.lo, v[keep]
        if not len(base):
            return
        need = int(base.max()) + 1
        if need > self.vals.shape[1]:
            grown = np.zeros((self.vals.shape[0], max(need, 2 * self.vals.shape[1])), np.float32)
            grown[:, :self.vals.shape[1]] = self.vals
            self.vals = grown
        np.maximum.at(self.vals, (f, base), v)

    def flush(self, upto: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, values) of the final bases [lo, upto), freeing them."""
        upto = min(int(upto), self.length)
        while self.lo < upto:
            n = min(upto - self.lo, ZERO_BLOCK)
            out = np.zeros((self.vals.shape[0], n), np.float32)
            have = min(n, self.vals.shape[1])
            out[:, :have] = self.vals[:, :have]
            self.vals = self.vals[:, have:].copy() if have else self.vals
            yield self.lo, out
            self.lo += n


def stream_tracks(chunks: Iterable[EncodedChunk], features: Sequence[int],
                  windows: pd.DataFrame, record_lengths: Sequence[int],
                  span: np.ndarray | None = None
                  ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (record, start, float32 [len(features), n]) blocks covering every base of every
    record once, in order, each base the max over the tokens covering it.

    Chunks must come in window order (as `encode_live` and a harvest give them); a base is
    final, and leaves memory, once a window starting after it has been read, so memory stays
    at about one window (times the features) however long the record.
    """
    feats = np.asarray(features, dtype=np.int64)
    lengths = [int(n) for n in record_lengths]
    w_record = windows["record"].to_numpy()
    w_start = windows["start"].to_numpy()
    record, buf = 0, _Buffer(len(feats), lengths[0] if lengths else 0)

    def advance(to: int):
        """Finish every record before `to`; yields their remaining blocks."""
        nonlocal record, buf
        while record < to:
            for s, vals in buf.flush(buf.length):
                yield record, s, vals
            record += 1
            buf = _Buffer(len(feats), lengths[record] if record < len(lengths) else 0)

    for chunk in chunks:
        if not len(chunk):
            continue
        f, s, w, v, win = _active(chunk, feats, span)
        rec = w_record[win]
        if len(rec) and (np.any(np.diff(rec) < 0) or rec[0] < record):
            raise BioLLMError("token windows arrive out of order; stream the windows in file "
                              "order (shuffled caches cannot be streamed).")
        for r in np.unique(rec):
            yield from advance(int(r))
            sel = rec == r
            buf.add(*_expand(f[sel], s[sel], w[sel], v[sel]))
        last = int(chunk.sources.record[-1])
        yield from advance(int(w_record[last]))
        for s0, vals in buf.flush(int(w_start[last])):
            yield record, s0, vals
    yield from advance(len(lengths))


def _check_chrom(chrom: str) -> None:
    if not chrom or any(c.isspace() for c in chrom):
        raise BioLLMError(f"chromosome name {chrom!r} must be non-empty without spaces.")


class BedGraphWriter:
    """Write one feature's track as bedGraph block by block (0-based, half-open runs of equal
    value; a run spanning blocks is written once). Use as a context manager; the file appears
    atomically when it closes without error."""

    def __init__(self, path: str | os.PathLike, name: str | None = None,
                 skip_zeros: bool = True):
        self.path, self.name, self.skip_zeros = Path(path), name, skip_zeros
        self._run: tuple[str, int, int, float] | None = None  # the last run, still growing

    def __enter__(self) -> "BedGraphWriter":
        self._atomic = atomic_path(self.path)
        self._fh = open(self._atomic.__enter__(), "w")
        self._fh.write(f"track type=bedGraph name={self.name}\n" if self.name
                       else "track type=bedGraph\n")
        return self

    def write(self, chrom: str, start: int, values: np.ndarray) -> None:
        _check_chrom(chrom)
        values = np.asarray(values, dtype=np.float64).ravel()
        if not len(values):
            return
        firsts = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.empty(len(firsts) + 1, np.int64)
        starts[0], starts[1:] = start, start + firsts
        ends = np.empty_like(starts)
        ends[:-1], ends[-1] = starts[1:], start + len(values)
        vals = values[starts - start]
        run = self._run
        if run and run[0] == chrom and run[2] == start and run[3] == vals[0]:
            starts[0] = run[1]  # the previous block's last run goes on
        elif run and run[0] == chrom:  # it ends here: written with this block's lines
            starts, ends = np.insert(starts, 0, run[1]), np.insert(ends, 0, run[2])
            vals = np.insert(vals, 0, run[3])
        elif run:
            self._end_run()
        self._run = (chrom, int(starts[-1]), int(ends[-1]), float(vals[-1]))
        self._lines(chrom, starts[:-1], ends[:-1], vals[:-1])

    def _end_run(self) -> None:
        chrom, s, e, v = self._run
        self._lines(chrom, [s], [e], [v])

    def _lines(self, chrom: str, starts, ends, vals) -> None:
        starts, ends, vals = np.asarray(starts), np.asarray(ends), np.asarray(vals)
        if self.skip_zeros:
            keep = vals != 0
            starts, ends, vals = starts[keep], ends[keep], vals[keep]
        for i in range(0, len(vals), LINES_AT_ONCE):
            cut = slice(i, i + LINES_AT_ONCE)
            self._fh.write(bedgraph_lines(chrom, starts[cut], ends[cut], vals[cut]))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self._run:
            self._end_run()
        self._fh.close()
        return self._atomic.__exit__(exc_type, exc, tb)


_POW10 = np.array([float(10 ** k) for k in range(300)])  # each correctly rounded
_HOLE = 16  # bytes left for a value Python prints (the longest %.6g text is 13)


def _write_lines(head, starts, ends, vals, pow10, out, holes):
    """Write bedGraph lines into the bytes `out`; return (length, holes used). Compiled by numba
    (see `_line_kernel`).

    A value is printed as %.6g prints it: scaled to six digits with one rounding after a
    correctly rounded power of ten (so an error under 1e-9 of a unit), rounded to the nearest
    integer. Where that could differ from Python's exact rounding (within 1e-7 of a tie), for
    zeros, infinities, NaN and magnitudes past 1e+-280, `_HOLE` NUL bytes are left instead and
    their (offset, line) recorded in `holes`, for Python to fill.
    """
    digits = np.empty(6, np.uint8)
    pos = nholes = 0
    for i in range(len(starts)):
        for c in head:
            out[pos] = c
            pos += 1
        for k in range(2):
            v = starts[i] if k == 0 else ends[i]
            n, p = 1, 10
            while v >= p and n < 19:
                n += 1
                p *= 10
            for j in range(n - 1, -1, -1):
                out[pos + j] = 48 + v % 10
                v //= 10
            out[pos + n] = 9
            pos += n + 1
        val = vals[i]
        a = abs(val)
        ok = 1e-280 <= a <= 1e280
        if ok:
            e = int(np.floor(np.log10(a)))
            s = a * pow10[5 - e] if e <= 5 else a / pow10[e - 5]
            if s >= 1e6 or s < 1e5:  # log10 a little off next to a power of ten
                e += 1 if s >= 1e6 else -1
                s = a * pow10[5 - e] if e <= 5 else a / pow10[e - 5]
            ok = 1e5 <= s < 1e6 and abs(s - np.floor(s) - 0.5) > 1e-7
        if not ok:
            for j in range(_HOLE):
                out[pos + j] = 0
            holes[nholes, 0] = pos
            holes[nholes, 1] = i
            nholes += 1
            pos += _HOLE
        else:
            mi = int(np.floor(s + 0.5))
            if mi >= 1000000:  # rounded up to the next power of ten
                mi = 100000
                e += 1
            if val < 0:
                out[pos] = 45
                pos += 1
            last = -1
            for j in range(5, -1, -1):
                digits[j] = 48 + mi % 10
                mi //= 10
                if last < 0 and digits[j] != 48:
                    last = j
            if -4 <= e < 0:  # 0.000ddd
                out[pos] = 48
                out[pos + 1] = 46
                pos += 2
                for _ in range(-e - 1):
                    out[pos] = 48
                    pos += 1
                for j in range(last + 1):
                    out[pos] = digits[j]
                    pos += 1
            else:
                whole = e if 0 <= e < 6 else 0  # digits before the point
                for j in range(whole + 1):
                    out[pos] = digits[j]
                    pos += 1
                if last > whole:
                    out[pos] = 46
                    pos += 1
                    for j in range(whole + 1, last + 1):
                        out[pos] = digits[j]
                        pos += 1
                if not 0 <= e < 6:
                    out[pos] = 101
                    out[pos + 1] = 45 if e < 0 else 43
                    pos += 2
                    ax = -e if e < 0 else e
                    if ax >= 100:
                        out[pos] = 48 + ax // 100
                        pos += 1
                    out[pos] = 48 + ax // 10 % 10
                    out[pos + 1] = 48 + ax % 10
                    pos += 2
        out[pos] = 10
        pos += 1
    return pos, nholes


_LINE_KERNEL = None


def _line_kernel():
    """`_write_lines` compiled (numba loads only when lines are written; cached on disk)."""
    global _LINE_KERNEL
    if _LINE_KERNEL is None:
        from numba import njit

        _LINE_KERNEL = njit(cache=True, nogil=True)(_write_lines)
    return _LINE_KERNEL


def bedgraph_lines(chrom: str, starts, ends, vals) -> str:
    """bedGraph lines `chrom<TAB>start<TAB>end<TAB>value\\n`, the value as `"%.6g" % value`:
    the same text as Python's %-format, made by a compiled loop (Python prints only the rare
    values the loop leaves to it)."""
    starts = np.ascontiguousarray(starts, np.int64)
    ends = np.ascontiguousarray(ends, np.int64)
    vals = np.ascontiguousarray(vals, np.float64)
    if not len(vals):
        return ""
    if not chrom.isascii() or "\0" in chrom or min(starts.min(), ends.min()) < 0:
        line = chrom.replace("%", "%%") + "\t%d\t%d\t%.6g\n"  # never met by tracks
        return (line * len(vals)) % tuple(itertools.chain.from_iterable(
            zip(starts.tolist(), ends.tolist(), vals.tolist())))
    head = np.frombuffer((chrom + "\t").encode(), np.uint8)
    out = np.empty(len(vals) * (len(head) + 2 * 20 + _HOLE + 1), np.uint8)
    holes = np.empty((len(vals), 2), np.int64)
    n, nholes = _line_kernel()(head, starts, ends, vals, _POW10, out, holes)
    out = out[:n]
    if nholes:
        for offset, line in holes[:nholes].tolist():
            text = ("%.6g" % vals[line]).encode()
            out[offset:offset + len(text)] = np.frombuffer(text, np.uint8)
        out = out[out != 0]
    return out.tobytes().decode("ascii")


def write_bedgraph(track: np.ndarray, chrom: str, path: str | os.PathLike,
                   name: str | None = None, skip_zeros: bool = True) -> Path:
    """Write one feature's per-base track as bedGraph (0-based, half-open runs of equal value)."""
    _check_chrom(chrom)
    with BedGraphWriter(path, name, skip_zeros) as w:
        w.write(chrom, 0, track)
    return Path(path)
