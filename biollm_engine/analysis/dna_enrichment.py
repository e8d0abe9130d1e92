"""What DNA features fire on: enrichment in annotations, firing frequency, top windows, logos.

Everything accumulates block by block from `stream_tracks`, so a genome never sits in memory:
zeros are counted, only nonzero bases are kept (with their annotation bits) for the exact AUROC,
up to `EXACT_BASES` of them; past that, as on a whole chromosome, each feature's values are
counted in `VALUE_BINS` bins of their float32 order (ties within a bin count half) and memory
stops growing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..errors import BioLLMError

BASES = "ACGT"
EXACT_BASES = 1 << 26  # firing bases kept for the exact AUROC, all features: (4 + types) B each
VALUE_BINS = 1 << 16  # the float32's top 16 bits in order: 2^-7 relative width
LOGO_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


class BaseStats:
    """Per feature: bases seen, bases firing, and (with annotation types) the values inside and
    outside each type, for AUROC and means."""

    def __init__(self, features, types: list[str] | None = None, top: int = 20,
                 exact_bases: int = EXACT_BASES):
        self.features = [int(f) for f in features]
        self.exact_bases = exact_bases
        self.kept = 0  # firing bases held in _vals
        self.binned: np.ndarray | None = None  # [F, T + 1, VALUE_BINS]: inside each type, all
        self.types = list(types or [])
        self.top = top
        F, T = len(self.features), len(self.types)
        self.bases = 0
        self.inside = np.zeros(T, np.int64)
        self.zeros_inside = np.zeros((F, T), np.int64)
        self.sum_inside = np.zeros((F, T), np.float64)
        self.sum_all = np.zeros(F, np.float64)
        self.nonzero = np.zeros(F, np.int64)
        self._vals: list[list[np.ndarray]] = [[] for _ in range(F)]
        self._bits: list[list[np.ndarray]] = [[] for _ in range(F)]
        # (value, record, position) of the strongest run starts per feature
        self.peaks = [np.zeros((0, 3)) for _ in range(F)]

    def update(self, record: int, start: int, values: np.ndarray,
               masks: np.ndarray | None = None) -> None:
        n = values.shape[1]
        self.bases += n
        if self.types:
            self.inside += masks.sum(axis=1)
        prev = np.zeros((len(self.features), 1), np.float32)
        starts_run = (values > 0) & (values != np.concatenate([prev, values[:, :-1]], axis=1))
        for i in range(len(self.features)):
            nz = np.flatnonzero(values[i])
            v = values[i, nz]
            self.nonzero[i] += len(nz)
            self.sum_all[i] += float(v.sum())
            if self.types:
                bits = masks[:, nz]
                if self.binned is None:
                    self._vals[i].append(v)
                    self._bits[i].append(bits)
                    self.kept += len(v)
                else:
                    self._count(i, v, bits)
                self.sum_inside[i] += (bits * v).sum(axis=1)
                self.zeros_inside[i] += masks.sum(axis=1) - bits.sum(axis=1)
            runs = np.flatnonzero(starts_run[i])
            if len(self.peaks[i]) == self.top:  # a full list: only a higher run gets in
                runs = runs[values[i, runs] > self.peaks[i][-1, 0]]
            if len(runs):
                best = runs[np.argsort(-values[i, runs], kind="stable")[:self.top]]
                new = np.stack([values[i, best], np.full(len(best), record), start + best], 1)
                both = np.concatenate([self.peaks[i], new])
                self.peaks[i] = both[np.argsort(-both[:, 0], kind="stable")[:self.top]]

        if self.binned is None and self.kept > self.exact_bases:
            self._to_bins()

    def _to_bins(self) -> None:
        """Count the kept values into bins and drop them."""
        self.binned = np.zeros((len(self.features), len(self.types) + 1, VALUE_BINS), np.int64)
        for i in range(len(self.features)):
            for v, bits in zip(self._vals[i], self._bits[i]):
                self._count(i, v, bits)
        self._vals = [[] for _ in self.features]
        self._bits = [[] for _ in self.features]
        self.kept = 0

    def _count(self, i: int, v: np.ndarray, bits: np.ndarray) -> None:
        b = value_bin(v)
        self.binned[i, -1] += np.bincount(b, minlength=VALUE_BINS)
        for t in range(len(self.types)):
            self.binned[i, t] += np.bincount(b[bits[t]], minlength=VALUE_BINS)

    def frequency(self) -> np.ndarray:
        return self.nonzero / max(self.bases, 1)

    def enrichment(self) -> pd.DataFrame:
        """feature, annotation, auroc, mean_inside, mean_outside, bases_inside."""
        rows = []
        for i in range(len(self.features)):
            if self.binned is not None:
                rows += [self._row(i, t, self._binned_auroc(i, t)) for t in range(len(self.types))]
                continue
            vals = np.concatenate(self._vals[i]) if self._vals[i] else np.zeros(0, np.float32)
            bits = np.concatenate(self._bits[i], axis=1) if self._bits[i] else \
                np.zeros((len(self.types), 0), bool)
            zeros = self.bases - len(vals)
            # every zero ties at the bottom: midrank (zeros + 1) / 2; nonzeros rank above them
            ranks = rankdata(vals) + zeros if len(vals) else vals
            for t in range(len(self.types)):
                n_in = int(self.inside[t])
                n_out = self.bases - n_in
                rank_in = ranks[bits[t]].sum() + self.zeros_inside[i, t] * (zeros + 1) / 2
                auroc = ((rank_in - n_in * (n_in + 1) / 2) / (n_in * n_out)
                         if n_in and n_out else np.nan)
                rows.append(self._row(i, t, auroc))
        return pd.DataFrame(rows, columns=["feature", "annotation", "auroc", "mean_inside",
                                           "mean_outside", "bases_inside"])

    def _binned_auroc(self, i: int, t: int) -> float:
        """Mann-Whitney over the bins, zeros one bin below them all, ties counting half."""
        n_in = int(self.inside[t])
        n_out = self.bases - n_in
        if not (n_in and n_out):
            return np.nan
        zeros_in = self.zeros_inside[i, t]
        zeros_out = (self.bases - self.nonzero[i]) - zeros_in
        inside = self.binned[i, t].astype(np.float64)
        outside = self.binned[i, -1] - self.binned[i, t]
        below = np.cumsum(outside) - outside + zeros_out
        u = (inside * (below + 0.5 * outside)).sum() + zeros_in * 0.5 * zeros_out
        return float(u / (n_in * n_out))

    def _row(self, i: int, t: int, auroc: float) -> dict:
        n_in = int(self.inside[t])
        n_out = self.bases - n_in
        s_in = self.sum_inside[i, t]
        return dict(feature=self.features[i], annotation=self.types[t], auroc=float(auroc),
                    mean_inside=s_in / n_in if n_in else np.nan,
                    mean_outside=(self.sum_all[i] - s_in) / n_out if n_out else np.nan,
                    bases_inside=n_in)


def value_bin(v: np.ndarray) -> np.ndarray:
    """Bins of float32 values in their order: the top 16 bits of their bits with the sign
    flipped in (negative values reversed below the positive ones)."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32)
    key = np.where(u >> 31, ~u, u | np.uint32(1 << 31))
    return (key >> 16).astype(np.int64)


def fetch_intervals(path, wanted: list[tuple[int, int, int]],
                    uppercase: bool = True) -> list[str]:
    """The forward-strand bases of each (record, start, end), streaming the file once; positions
    outside the record read as 'N' so every context has its full length."""
    from ..inputs.dna import read_sequences

    out = [[] for _ in wanted]
    by_record: dict[int, list[int]] = {}
    for j, (r, _, _) in enumerate(wanted):
        by_record.setdefault(int(r), []).append(j)
    if not wanted:
        return []
    for record, _, offset, chunk in read_sequences(path, uppercase):
        for j in by_record.get(record, ()):
            _, s, e = wanted[j]
            a, b = max(s, offset), min(e, offset + len(chunk))
            if a < b:
                out[j].append((a, chunk[a - offset:b - offset]))
    seqs = []
    for (_, s, e), parts in zip(wanted, out):
        buf = bytearray(b"N" * (e - s))
        for a, piece in parts:
            buf[a - s:a - s + len(piece)] = piece.encode()
        seqs.append(buf.decode())
    return seqs


def frequency_matrix(contexts: list[str]) -> np.ndarray:
    """[length, 4] base frequencies (A, C, G, T) over aligned contexts; N and others ignored."""
    if not contexts:
        raise BioLLMError("no contexts to make a logo from; the feature never fires.")
    length = len(contexts[0])
    counts = np.zeros((length, 4))
    for c in contexts:
        for k, b in enumerate(BASES):
            counts[:, k] += np.frombuffer(c.encode(), np.uint8) == ord(b)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def _letter_paths() -> dict[str, object]:
    """Each base's glyph outline, scaled to a unit box at the origin (made once per process;
    a caller arriving while `prepare_logos`' thread makes them waits for all four)."""
    global _LETTERS
    with _LETTERS_LOCK:
        if _LETTERS is None:
            from matplotlib.font_manager import FontProperties
            from matplotlib.textpath import TextPath
            from matplotlib.transforms import Affine2D

            font = FontProperties(family="DejaVu Sans", weight="bold")
            letters = {}
            for b in BASES:
                letter = TextPath((0, 0), b, size=1, prop=font)
                box = letter.get_extents()
                letters[b] = Affine2D().translate(-box.x0, -box.y0) \
                    .scale(1 / box.width, 1 / box.height).transform_path(letter)
            _LETTERS = letters
    return _LETTERS


_LETTERS = None
_LETTERS_LOCK = threading.Lock()


def prepare_logos() -> None:
    """Import matplotlib and make the glyphs on a background thread (about a second the first
    time), so that it overlaps the forward passes instead of following them."""

    def prepare():
        import importlib

        for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(module)
        _letter_paths()

    threading.Thread(target=prepare, name="logo-glyphs", daemon=True).start()


def write_logo(pfm: np.ndarray, path: str | Path, title: str, first: int = 0) -> Path:
    """A sequence logo (letter heights = frequency x information content, in bits), PNG or SVG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure
    from matplotlib.transforms import Affine2D

    from ..fileio import atomic_path

    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(pfm > 0, pfm * np.log2(pfm), 0), axis=1)
    info = np.where(pfm.sum(axis=1) > 0, 2 - entropy, 0)
    heights = pfm * info[:, None]
    letters = _letter_paths()
    paths, colours = [], []
    for x, row in enumerate(heights):
        y = 0.0
        for k in np.argsort(row):
            h = row[k]
            if h <= 1e-3:
                continue
            t = Affine2D().scale(0.9, h).translate(x - 0.45, y)
            paths.append(t.transform_path(letters[BASES[k]]))
            colours.append(LOGO_COLOURS[BASES[k]])
            y += h
    # a Figure of its own, not pyplot's: the same pixels, without pyplot's figure manager
    # (faster, and safe on any thread)
    fig = Figure(figsize=(max(4, 0.35 * len(pfm)), 2.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # one collection in data coordinates: no per-letter artist or limit update
    ax.add_collection(PathCollection(paths, facecolors=colours, linewidths=0,
                                     transform=ax.transData), autolim=False)
    ax.set_xlim(-0.6, len(pfm) - 0.4)
    ax.set_ylim(0, 2)
    ax.set_ylabel("bits")
    ax.set_xticks(range(0, len(pfm), 2), [str(first + i) for i in range(0, len(pfm), 2)])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path
