"""The DNA demo's sequence: 40 annotated windows of the Pseudomonas fluorescens SBW25 genome.

They ship in `minerva-dna` (Apache-2.0) as `example_data/TwoAYGGAY_Pseudomonas_fluorescens_SBW25.gb`
and are copied, unchanged and gzipped, into `resources/demo/dna/source/` (see SOURCE.md there).
Each record is about 6.1 kb of NC_012660.1 around a hit (on either strand), with its CDS
annotations. Some windows overlap on the genome, so the held-out split is made by genome locus:
overlapping windows always fall on the same side.

Per-base labels for the feature analysis come from the CDS features: CDS on either strand,
intergenic, start and stop codons (the first and last three bases of a CDS that does not run off
its window) and the codon position (1, 2, 3 in the gene's own direction) inside CDS, per strand.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BioLLMError
from ..fileio import atomic_path

SOURCE = (Path(__file__).resolve().parents[2] / "resources" / "demo" / "dna" / "source"
          / "sbw25_windows.gb.gz")
STRAND_TYPES = ("CDS +", "CDS -", "codon 1 +", "codon 2 +", "codon 3 +", "codon 1 -",
                "codon 2 -", "codon 3 -")
TYPES = ("CDS", "intergenic", "start codon", "stop codon") + STRAND_TYPES
HELDOUT_EVERY = 6  # every 6th genome locus (in genome order) is held out


@dataclass
class Cds:
    start: int
    end: int
    strand: int
    """+1 or -1."""
    name: str


@dataclass
class DnaRecord:
    name: str
    """Short record name used in every output (sbw25_01 ...)."""
    origin: str
    """Where it lies in the genome: accession:start-end(strand), 0-based half-open."""
    seq: str
    cds: list[Cds] = field(default_factory=list)
    heldout: bool = False

    @property
    def genome_span(self) -> tuple[int, int]:
        span = self.origin.split(":")[1].split("(")[0]
        a, b = span.split("-")
        return int(a), int(b)


def _origin(record_id: str, length: int) -> str:
    """minerva names a window `<genome>|<accession>|<hit start>-<hit end>|<strand>|ctx_<flank>`."""
    try:
        _, accession, hit, strand, ctx = record_id.split("|")
        start = int(hit.split("-")[0]) - 1 - int(ctx.removeprefix("ctx_"))
    except ValueError:
        raise BioLLMError(f"{SOURCE.name}: record id {record_id!r} is not minerva's "
                          "<genome>|<accession>|<start>-<end>|<strand>|ctx_<n>; restore the file "
                          "from the repository.") from None
    return f"{accession}:{start}-{start + length}({strand})"


def load_records(path: str | Path = SOURCE) -> list[DnaRecord]:
    """The source windows, named sbw25_01.. in file order, with their CDS and the split."""
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise BioLLMError(f"the DNA demo's sequence {path} is missing; restore it from the "
                          "repository (resources/demo/dna/source/).")
    records = []
    with gzip.open(path, "rt") as f:
        for i, rec in enumerate(SeqIO.parse(f, "genbank")):
            seq = str(rec.seq).upper()
            cds = [Cds(int(x.location.start), int(x.location.end), int(x.location.strand),
                       x.qualifiers.get("gene", x.qualifiers.get("locus_tag", [""]))[0])
                   for x in rec.features if x.type == "CDS" and x.location.strand in (1, -1)]
            records.append(DnaRecord(f"sbw25_{i + 1:02d}", _origin(rec.id, len(seq)), seq, cds))
    if not records:
        raise BioLLMError(f"{path} holds no GenBank records; restore it from the repository.")
    _split(records)
    return records


def _split(records: list[DnaRecord]) -> None:
    """Group windows overlapping on the genome into loci; hold out every HELDOUT_EVERY-th."""
    order = sorted(range(len(records)), key=lambda i: records[i].genome_span)
    locus, end = -1, -1
    for i in order:
        start, stop = records[i].genome_span
        if start >= end:
            locus += 1
        end = max(end, stop)
        records[i].heldout = locus % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _codon_positions(c: Cds, length: int) -> np.ndarray:
    """0, 1, 2: each base's codon position in the gene's direction, counted from the end that
    lies inside the window (a CDS cut by the window's edge keeps its frame from the other end)."""
    pos = np.arange(c.start, c.end)
    if c.strand == 1:
        return (pos - c.start) % 3 if c.start > 0 or c.end == length else (pos - c.end) % 3
    return (c.end - 1 - pos) % 3 if c.end < length or c.start == 0 else (c.start - pos - 1) % 3


def codon_edges(c: Cds, length: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Forward-strand spans of the start and stop codon, or None where the CDS runs off the
    window (its real start or stop is not in the sequence)."""
    first, last = (c.start, c.end) if c.strand == 1 else (c.end, c.start)
    inside = lambda x: 0 < x < length  # noqa: E731
    start = ((first, first + 3) if c.strand == 1 else (first - 3, first)) if inside(first) else None
    stop = ((last - 3, last) if c.strand == 1 else (last, last + 3)) if inside(last) else None
    return start, stop


def base_labels(record: DnaRecord) -> np.ndarray:
    """bool [len(TYPES), len(seq)]: which annotation types each base lies in."""
    n = len(record.seq)
    out = np.zeros((len(TYPES), n), bool)
    row = {t: i for i, t in enumerate(TYPES)}
    for c in record.cds:
        s = "+" if c.strand == 1 else "-"
        out[row["CDS"], c.start:c.end] = True
        out[row[f"CDS {s}"], c.start:c.end] = True
        frame = _codon_positions(c, n)
        for k in range(3):
            out[row[f"codon {k + 1} {s}"], c.start:c.end] |= frame == k
        start, stop = codon_edges(c, n)
        for name, span in (("start codon", start), ("stop codon", stop)):
            if span:
                out[row[name], span[0]:span[1]] = True
    out[row["intergenic"]] = ~out[row["CDS"]]
    return out


def write_fasta(records: list[DnaRecord], path: Path, width: int = 80) -> Path:
    """FASTA, gzipped when the name ends in .gz (with no timestamp: rebuilds are identical)."""
    text = "".join(f">{r.name} {r.origin} Pseudomonas fluorescens SBW25\n"
                   + "\n".join(r.seq[i:i + width] for i in range(0, len(r.seq), width)) + "\n"
                   for r in records).encode()
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            with open(tmp, "wb") as raw, \
                    gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
                f.write(text)
        else:
            tmp.write_bytes(text)
    return path


def write_bed(records: list[DnaRecord], path: Path) -> Path:
    """CDS, start_codon, stop_codon and intergenic intervals (the type in BED's name column, as
    `biollm tracks --annotations` reads it)."""
    rows = []
    for r in records:
        labels = base_labels(r)
        for c in r.cds:
            s = "+" if c.strand == 1 else "-"
            rows.append((r.name, c.start, c.end, "CDS", s))
            for name, span in zip(("start_codon", "stop_codon"), codon_edges(c, len(r.seq))):
                if span:
                    rows.append((r.name, span[0], span[1], name, s))
        gaps = np.flatnonzero(np.diff(np.r_[0, labels[TYPES.index("intergenic")].astype(int), 0]))
        rows += [(r.name, int(a), int(b), "intergenic", ".") for a, b in gaps.reshape(-1, 2)]
    rows.sort(key=lambda x: (x[0], x[1], x[2], x[3]))
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(f"{c}\t{a}\t{b}\t{t}\t0\t{s}\n" for c, a, b, t, s in rows)
    return path
