"""DNA sequences (FASTA, FASTA.gz, GenBank) → windows → tokens mapped to base positions.

FASTA is streamed line by line, so a chromosome is never held in memory whole: only the current
window's bases are buffered. Windows are planned from record lengths (one cheap validating pass),
then cut while streaming a second time. Tokens are bytes (A=65, C=67, G=71, T=84, as Evo 2's
CharLevelTokenizer makes them) or the model's own tokenizer; every token carries the first
(lowest) forward-strand position of the bases it reads, also in reverse-complement windows, so a
token of n bases covers forward bases [unit, unit + n) on either strand. An example's `record` is
its window; `windows_table()` maps windows to sequence records, starts and strands.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd

from ..errors import BioLLMError
from .base import TokenizedExample, tokenize_with_offsets

IUPAC = "ACGTNRYSWKMBDHV"
_N_RUN = re.compile("[Nn]+")
_BAD = re.compile(f"[^{IUPAC}{IUPAC.lower()}]")
_COMPLEMENT = str.maketrans("ACGTRYSWKMBDHVNacgtryswkmbdhvn", "TGCAYRSWMKVHDBNtgcayrswmkvhdbn")
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".frn", ".fas")
GENBANK_SUFFIXES = (".gb", ".gbk", ".genbank", ".gbff")
CHUNK_BASES = 1 << 16
READ_BLOCK = 1 << 20  # characters read at a time: memory stays bounded even for one-line records
TOKENIZE_BATCH = 64


@dataclass
class DnaConfig:
    window: int = field(default=1024, metadata={"help": "bases per window"})
    stride: int | None = field(default=None, metadata={
        "help": "bases between window starts (unset: the window, i.e. no overlap); "
                "a stride above the window skips bases"})
    reverse_complement: bool = field(default=False, metadata={
        "help": "also read each window's reverse complement (both strands)"})
    tokenizer: Literal["auto", "byte", "model"] = field(default="auto", metadata={
        "help": "auto: the model's own tokenizer, or bytes where that is what it reads (Evo 2); "
                "byte: one token per base, its ASCII code; model: the model's tokenizer"})
    uppercase: bool = field(default=True, metadata={
        "help": "upper-case soft-masked (lower-case) bases before tokenizing"})
    max_n_fraction: float = field(default=1.0, metadata={
        "help": "skip windows with a larger fraction of N (assembly gaps); 1 keeps every window"})

    def __post_init__(self):
        if self.stride is None:
            self.stride = self.window
        if int(self.window) < 1 or int(self.stride) < 1:
            raise BioLLMError(f"window and stride must be at least 1 (got {self.window}, "
                              f"{self.stride}).")
        if self.tokenizer not in ("auto", "byte", "model"):
            raise BioLLMError(f"tokenizer must be auto, byte or model, not {self.tokenizer!r}.")


@dataclass
class Window:
    index: int
    record: int
    name: str
    start: int
    """0-based forward-strand start of the window in its record."""
    end: int
    """Exclusive forward-strand end."""
    strand: str
    """'+' or '-' (the sequence is then the reverse complement of [start, end))."""
    seq: str


def reverse_complement(seq: str) -> str:
    """The reverse complement, IUPAC-aware (R↔Y, K↔M, B↔V, D↔H; S, W, N fixed), case kept."""
    return seq.translate(_COMPLEMENT)[::-1]


def _open_text(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    # latin-1 never fails to decode; stray bytes are then reported as bad letters with a position
    return io.TextIOWrapper(raw, encoding="latin-1", newline=None)


def sequence_format(path: str | Path) -> str:
    """'fasta' or 'genbank', from the first non-empty line (gzip or not)."""
    path = Path(path)
    if not path.is_file():
        raise BioLLMError(f"{path} does not exist; check the path.")
    try:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    break
            else:
                raise BioLLMError(f"{path} is empty; it holds no sequence.")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise BioLLMError(f"{path} cannot be read ({e}); check that the file is "
                          "complete.") from None
    if line.startswith(">"):
        return "fasta"
    if line.startswith("LOCUS"):
        return "genbank"
    raise BioLLMError(f"{path} is neither FASTA (first line '>name') nor GenBank (first line "
                      "'LOCUS ...'); check the file format.")


def _check_letters(path, name: str, text: str, offset: int, line: int | None = None):
    bad = _BAD.search(text)
    if bad:
        where = f" (line {line})" if line is not None else ""
        raise BioLLMError(f"{path}: record {name!r} has {bad.group()!r} at position "
                          f"{offset + bad.start() + 1}{where}; only IUPAC letters "
                          f"{IUPAC} are allowed.")


def _line_pieces(f) -> Iterator[tuple[int, str, bool]]:
    """(line number, piece, whether it starts a line) from a text stream read in blocks, so that
    a line of any length (a chromosome written on one line) arrives in bounded pieces."""
    lineno, at_start = 1, True
    while block := f.read(READ_BLOCK):
        lines = block.split("\n")
        for j, piece in enumerate(lines):
            if piece:
                yield lineno, piece, at_start
            if j < len(lines) - 1:
                lineno, at_start = lineno + 1, True
            elif piece:
                at_start = False


def _fasta_chunks(path: Path) -> Iterator[tuple[int, str, int, str]]:
    record, name, offset, parts, size = -1, "", 0, [], 0
    header: list[str] | None = None  # pieces of the header line being read

    def header_name() -> str:
        words = "".join(header).split(maxsplit=1)
        return words[0] if words else f"record{record + 1}"

    with _open_text(path) as f:
        for lineno, piece, starts in _line_pieces(f):
            if header is not None:
                if not starts:
                    header.append(piece)
                    continue
                name, header = header_name(), None
            if starts and piece.lstrip().startswith(">"):
                if record >= 0:
                    yield record, name, offset, "".join(parts)
                record, offset, parts, size = record + 1, 0, [], 0
                header = [piece.lstrip()[1:]]
                continue
            seq = piece.strip()
            if not seq:
                continue
            if record < 0:
                raise BioLLMError(f"{path} line {lineno}: sequence before the first '>' header; "
                                  "check the FASTA file.")
            _check_letters(path, name, seq, offset + size, lineno)
            parts.append(seq)
            size += len(seq)
            if size >= CHUNK_BASES:
                yield record, name, offset, "".join(parts)
                offset, parts, size = offset + size, [], 0
        if header is not None:
            name = header_name()
        if record >= 0:
            yield record, name, offset, "".join(parts)


def _genbank_records(path: Path):
    from Bio import SeqIO

    try:
        with _open_text(path) as f:
            yield from SeqIO.parse(f, "genbank")
    except BioLLMError:
        raise
    except Exception as e:  # Biopython raises ValueError and friends for malformed files
        raise BioLLMError(f"{path} is not a valid GenBank file ({e}); check the file.") from None


def _record_name(rec, index: int) -> str:
    for name in (rec.id, rec.name):
        if name and name != "<unknown id>" and name != "<unknown name>":
            return str(name)
    return f"record{index + 1}"


def _genbank_chunks(path: Path) -> Iterator[tuple[int, str, int, str]]:
    for i, rec in enumerate(_genbank_records(path)):
        name = _record_name(rec, i)
        try:
            seq = str(rec.seq)
        except Exception:  # Biopython's UndefinedSequenceError: a record with no ORIGIN
            seq = ""
        _check_letters(path, name, seq, 0)
        if not seq:
            yield i, name, 0, ""
        for off in range(0, len(seq), CHUNK_BASES):
            yield i, name, off, seq[off:off + CHUNK_BASES]


def read_sequences(path: str | Path, uppercase: bool = True) -> Iterator[tuple[int, str, int, str]]:
    """Stream (record index, record name, 0-based offset, validated chunk) over a FASTA,
    FASTA.gz or GenBank file; every record appears at least once (an empty one as '')."""
    path = Path(path)
    reader = _fasta_chunks if sequence_format(path) == "fasta" else _genbank_chunks
    try:
        for record, name, offset, chunk in reader(path):
            yield record, name, offset, chunk.upper() if uppercase else chunk
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise BioLLMError(f"{path} cannot be read ({e}); check that the file is "
                          "complete.") from None


def read_features(path: str | Path) -> pd.DataFrame:
    """GenBank features: record, record_name, type, start (0-based), end (exclusive), strand,
    gene, locus_tag, product. A compound location (join / order) gives one row per part, so an
    intron, or the rest of a circular record under a CDS across its origin, is not inside the
    feature. Empty for FASTA."""
    path = Path(path)
    rows = []
    if sequence_format(path) == "genbank":
        for i, rec in enumerate(_genbank_records(path)):
            name = _record_name(rec, i)
            for feat in rec.features:
                q = feat.qualifiers
                for part in _local_parts(feat.location):
                    rows.append(dict(
                        record=i, record_name=name, type=feat.type,
                        start=int(part.start), end=int(part.end),
                        strand={1: "+", -1: "-"}.get(part.strand, "."),
                        gene=q.get("gene", [""])[0], locus_tag=q.get("locus_tag", [""])[0],
                        product=q.get("product", [""])[0]))
    cols = ["record", "record_name", "type", "start", "end", "strand", "gene", "locus_tag",
            "product"]
    return pd.DataFrame(rows, columns=cols)


def _local_parts(location) -> list:
    """The simple parts of a feature's location on its own record. Biopython leaves a location
    it cannot parse as None, and a part on another record (join(AB000001.1:1..90,...)) carries
    that record in `ref`: neither has positions here."""
    if location is None:
        return []
    return [p for p in location.parts if p.ref is None]


def window_spans(length: int, window: int, stride: int) -> np.ndarray:
    """[n, 2] (start, end) of the windows over a record: starts every `stride` bases until one
    reaches the end, which may be shorter than `window`."""
    if length <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.arange(0, length, stride, dtype=np.int64)
    ends = np.minimum(starts + window, length)
    hit = np.flatnonzero(ends >= length)
    n = hit[0] + 1 if hit.size else len(starts)
    return np.stack([starts[:n], ends[:n]], axis=1)


def n_count(spans: np.ndarray, runs: list[tuple[int, int]]) -> np.ndarray:
    """Number of bases of sorted, disjoint N runs [s, e) inside each span [start, end)."""
    if not runs:
        return np.zeros(len(spans), dtype=np.int64)
    r = np.asarray(runs, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(r[:, 1] - r[:, 0])])

    def before(x):  # N bases at positions < x
        k = np.searchsorted(r[:, 0], x, side="right")
        return cum[k] - np.maximum(r[np.maximum(k - 1, 0), 1] - x, 0) * (k > 0)

    return before(spans[:, 1]) - before(spans[:, 0])


class DnaDataset:
    """Windows over the records of a FASTA / GenBank file (a DataSource: records are windows)."""

    kind = "dna"

    def __init__(self, path: str | Path, cfg: DnaConfig | None = None):
        self.cfg = cfg = cfg or DnaConfig()
        self.path = Path(path)
        self.format = sequence_format(self.path)
        names, lengths, gaps = [], [], []
        for record, name, offset, chunk in read_sequences(self.path, cfg.uppercase):
            if record == len(names):
                names.append(name)
                lengths.append(0)
                gaps.append([])
            lengths[record] = offset + len(chunk)
            if cfg.max_n_fraction < 1:
                for m in _N_RUN.finditer(chunk):
                    s, e = offset + m.start(), offset + m.end()
                    if gaps[record] and gaps[record][-1][1] == s:  # a run across chunks
                        s = gaps[record].pop()[0]
                    gaps[record].append((s, e))
        if not names or sum(lengths) == 0:
            raise BioLLMError(f"{self.path} holds no sequence (no records with bases).")
        self.records = pd.DataFrame({"name": names, "length": np.asarray(lengths, np.int64)})
        self._spans = [window_spans(n, cfg.window, cfg.stride) for n in lengths]
        if cfg.max_n_fraction < 1:
            self._spans = [s[n_count(s, g) <= cfg.max_n_fraction * (s[:, 1] - s[:, 0])]
                           for s, g in zip(self._spans, gaps)]
        strands = ["+", "-"] if cfg.reverse_complement else ["+"]
        per = len(strands)
        spans = np.repeat(np.concatenate(self._spans), per, axis=0)  # a genome has millions
        record = np.repeat(np.arange(len(names)), [len(s) * per for s in self._spans])
        self._table = pd.DataFrame({
            "record": record, "name": np.asarray(names, dtype=object)[record],
            "start": spans[:, 0], "end": spans[:, 1],
            "strand": np.tile(np.asarray(strands, dtype=object), len(spans) // per)})
        self._table.index.name = "window"

    def __len__(self) -> int:
        return len(self._table)

    @property
    def units(self) -> None:
        return None

    @cached_property
    def features(self) -> pd.DataFrame:
        """GenBank features (see `read_features`); empty for FASTA."""
        return read_features(self.path)

    def windows_table(self) -> pd.DataFrame:
        """One row per window (its index is the example's `record`): record, name, start, end,
        strand."""
        return self._table.copy()

    def describe(self) -> str:
        cfg = self.cfg
        kind = "GenBank" if self.format == "genbank" else "FASTA"
        both = ", both strands" if cfg.reverse_complement else ""
        if cfg.max_n_fraction < 1:
            both += f", windows over {cfg.max_n_fraction:.0%} N skipped"
        tok = {"byte": "byte tokens", "model": "the model's tokenizer"}.get(
            cfg.tokenizer, "the model's tokenizer (bytes for Evo 2)")
        return (f"{len(self.records)} records, {int(self.records.length.sum()):,} bases from "
                f"{self.path.name} ({kind}), {len(self)} windows of {cfg.window} bases with "
                f"stride {cfg.stride}{both}, {tok}")

    def windows(self, indices: Sequence[int] | None = None) -> Iterator[Window]:
        """Stream the windows (those in `indices`, in file order), buffering one window's bases."""
        wanted = None if indices is None else set(int(i) for i in indices)
        if wanted is not None and wanted and (min(wanted) < 0 or max(wanted) >= len(self)):
            raise BioLLMError(f"window index out of range: there are {len(self)} windows.")
        index = 0
        per_span = 2 if self.cfg.reverse_complement else 1
        buf, buf_start, current, k = "", 0, -1, 0
        for record, name, offset, chunk in read_sequences(self.path, self.cfg.uppercase):
            if record != current:
                buf, buf_start, current, k = "", offset, record, 0
            buf += chunk
            spans = self._spans[record]
            seen = offset + len(chunk)
            while k < len(spans) and spans[k, 1] <= seen:
                s, e = int(spans[k, 0]), int(spans[k, 1])
                seq = buf[s - buf_start:e - buf_start]
                for j, strand in enumerate(("+", "-")[:per_span]):
                    if wanted is None or index + j in wanted:
                        yield Window(index + j, record, name, s, e, strand,
                                     seq if strand == "+" else reverse_complement(seq))
                index += per_span
                k += 1
            keep_from = int(spans[k, 0]) if k < len(spans) else seen
            drop = min(keep_from, seen) - buf_start
            if drop > 0:
                buf, buf_start = buf[drop:], buf_start + drop

    @staticmethod
    def _units(w: Window, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The lowest forward-strand position covered by window positions [a, b) (-1 if empty),
        so every token covers forward bases [unit, unit + b - a) on either strand."""
        pos = w.start + a if w.strand == "+" else w.end - b
        return np.where(b > a, pos, -1).astype(np.int32)

    def reads_bytes(self, tokenizer=None) -> bool:
        """Whether windows go in as byte tokens for a model with `tokenizer` (None: no model
        loaded): with tokenizer=auto, where the model reads bases as bytes (Evo 2's
        `bases_as_bytes`) or there is no model; a Hugging Face DNA model keeps its own k-mer,
        BPE or byte tokens, which a k-mer model fed bytes would read as other k-mers."""
        if self.cfg.tokenizer != "auto":
            return self.cfg.tokenizer == "byte"
        return tokenizer is None or bool(getattr(tokenizer, "bases_as_bytes", False))

    def examples(self, tokenizer=None, indices: Sequence[int] | None = None,
                 genes_only: bool = False, max_length: int | None = None
                 ) -> Iterator[TokenizedExample]:
        """Tokenized windows in file order; `record` is the window index (see `windows_table`),
        `unit` the lowest forward-strand base each token covers."""
        if genes_only:
            raise BioLLMError("genes_only keeps the gene-name tokens of cell sentences; DNA has "
                              "none, so leave it off.")
        if self.reads_bytes(tokenizer):
            for w in self.windows(indices):
                seq = w.seq[:max_length] if max_length else w.seq
                ids = np.frombuffer(seq.encode("ascii"), dtype=np.uint8).astype(np.int64)
                pos = np.arange(len(ids))
                yield TokenizedExample(w.index, ids, np.ones(len(ids), dtype=bool),
                                       self._units(w, pos, pos + 1), seq)
            return
        if tokenizer is None:
            raise BioLLMError("tokenizer=model needs the model's tokenizer; load the model first "
                              "or use tokenizer=byte.")
        batch: list[Window] = []
        for w in self.windows(indices):
            batch.append(w)
            if len(batch) == TOKENIZE_BATCH:
                yield from self._tokenize(tokenizer, batch, max_length)
                batch = []
        if batch:
            yield from self._tokenize(tokenizer, batch, max_length)

    def _tokenize(self, tokenizer, batch: list[Window], max_length):
        encoded = tokenize_with_offsets(tokenizer, [w.seq for w in batch], max_length)
        for w, (ids, offsets, special) in zip(batch, encoded):
            a, b = offsets[:, 0], np.where(special, offsets[:, 0], offsets[:, 1])
            yield TokenizedExample(w.index, ids, ~special, self._units(w, a, b), w.seq)


def windows(path: str | Path, cfg: DnaConfig | None = None) -> Iterator[Window]:
    """Stream the windows of a FASTA / GenBank file (see `DnaDataset.windows`)."""
    return DnaDataset(path, cfg).windows()
