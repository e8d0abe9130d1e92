"""Annotations (GenBank features, GFF3, BED) as intervals, and per-base masks from them.

Every reader returns one table: record_name, type, start (0-based), end (exclusive), strand,
name. GFF3 is 1-based inclusive and BED 0-based half-open; both end up 0-based half-open here.
A malformed line is reported with its file and line number.

GFF3 and BED are read here rather than by a library: Biopython has no GFF3 or BED reader
(BCBio-GFF and gffutils are separate packages, neither a dependency), both formats are
a split on tabs, and our own loop names the file and line of a bad row.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from ..errors import BioLLMError

COLUMNS = ["record_name", "type", "start", "end", "strand", "name"]
GFF_SUFFIXES = (".gff", ".gff3")
BED_SUFFIXES = (".bed",)
# A BED name column with at most this many distinct names holds categories (the types); with
# more it holds one name per interval (genes), and one type per gene would swamp the enrichment
# table and make base_masks allocate types x bases.
MAX_BED_TYPES = 64


def _lines(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as fh:
        yield from enumerate(fh, start=1)


def _int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BioLLMError(f"{path} line {lineno}: {what} {text!r} is not a whole number; "
                          "fix the line.") from None


def _check_span(path: Path, lineno: int, start: int, end: int) -> None:
    if start < 0 or end < start:
        raise BioLLMError(f"{path} line {lineno}: interval {start}..{end} is empty or negative; "
                          "fix the line.")


def read_gff3(path: str | Path) -> pd.DataFrame:
    """GFF3 features (column 3 is the type; Name, else ID attribute as name); the ##FASTA
    section is ignored. Seqid, type and attributes are percent-decoded (%3B is ';', %2C ',',
    ...), as the GFF3 specification escapes them."""
    path = Path(path)
    rows = []
    for lineno, line in _lines(path):
        line = line.rstrip("\n\r")
        if line.startswith("##FASTA"):
            break
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 9:
            raise BioLLMError(f"{path} line {lineno}: {len(cols)} tab-separated columns, GFF3 "
                              "has 9; check that the file is GFF3 with tabs.")
        start = _int(path, lineno, cols[3], "start") - 1
        end = _int(path, lineno, cols[4], "end")
        _check_span(path, lineno, start, end)
        # Split before decoding: an escaped ';' or '=' is part of a value, not a separator.
        attrs = dict(map(unquote, a.split("=", 1)) for a in cols[8].split(";") if "=" in a)
        rows.append((unquote(cols[0]), unquote(cols[2]), start, end,
                     cols[6] if cols[6] in ("+", "-") else ".",
                     attrs.get("Name", attrs.get("ID", ""))))
    return pd.DataFrame(rows, columns=COLUMNS)


def read_bed(path: str | Path, default_type: str | None = None) -> pd.DataFrame:
    """BED3..BED6+. The type is the name column (4th) when the file has at most MAX_BED_TYPES
    distinct names (categories such as CDS / promoter / repeat); otherwise, and for lines
    without a name, `default_type` (the file's stem), with the name kept as the name: a genes
    BED thus gives one type, not one per gene."""
    path = Path(path)
    default_type = default_type or path.name.split(".")[0]
    rows = []
    for lineno, line in _lines(path):
        line = line.rstrip("\n\r")
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) < 3:
            raise BioLLMError(f"{path} line {lineno}: {len(cols)} columns, BED needs at least 3 "
                              "(chrom, start, end).")
        start = _int(path, lineno, cols[1], "start")
        end = _int(path, lineno, cols[2], "end")
        _check_span(path, lineno, start, end)
        name = cols[3] if len(cols) > 3 and cols[3] != "." else ""
        strand = cols[5] if len(cols) > 5 and cols[5] in ("+", "-") else "."
        rows.append((cols[0], name, start, end, strand, name))
    table = pd.DataFrame(rows, columns=COLUMNS)
    names = table["name"]
    if names[names != ""].nunique() > MAX_BED_TYPES:
        table["type"] = default_type
    else:
        table["type"] = names.where(names != "", default_type)
    return table


def read_genbank_annotations(path: str | Path) -> pd.DataFrame:
    """GenBank features (CDS, gene, rRNA, tRNA, ...), the `source` feature left out."""
    from .dna import read_features

    f = read_features(path)
    f = f[f["type"] != "source"]
    name = f["gene"].where(f["gene"] != "", f["locus_tag"])
    return pd.DataFrame({"record_name": f["record_name"], "type": f["type"], "start": f["start"],
                         "end": f["end"], "strand": f["strand"], "name": name},
                        columns=COLUMNS).reset_index(drop=True)


def read_annotations(path: str | Path) -> pd.DataFrame:
    """GenBank, GFF3 or BED (by suffix, gzip allowed; GenBank also by its LOCUS line)."""
    path = Path(path)
    if not path.is_file():
        raise BioLLMError(f"annotation file {path} does not exist; check the path.")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    from .dna import GENBANK_SUFFIXES, sequence_format

    if last in GFF_SUFFIXES:
        table = read_gff3(path)
    elif last in BED_SUFFIXES:
        table = read_bed(path)
    elif last in GENBANK_SUFFIXES or _starts_with_locus(path):
        if sequence_format(path) != "genbank":
            raise BioLLMError(f"{path} is not GenBank (no LOCUS line); give .gb, .gff3 or .bed.")
        table = read_genbank_annotations(path)
    else:
        raise BioLLMError(f"{path}: unknown annotation format; give GenBank (.gb/.gbk), GFF3 "
                          "(.gff/.gff3) or BED (.bed).")
    if table.empty:
        raise BioLLMError(f"{path} holds no annotations.")
    return table


def _starts_with_locus(path: Path) -> bool:
    for _, line in _lines(path):
        if line.strip():
            return line.startswith("LOCUS")
    return False


def check_records(table: pd.DataFrame, record_names, path) -> None:
    """Refuse annotations that name none of the sequence's records (a common mix-up)."""
    if not set(table["record_name"]) & set(record_names):
        raise BioLLMError(f"the annotations in {path} name records "
                          f"{', '.join(sorted(set(table['record_name']))[:3])}, none of which is "
                          f"in the sequence file ({', '.join(list(record_names)[:3])}); use "
                          "annotations of the same assembly.")


def annotation_types(table: pd.DataFrame) -> list[str]:
    return sorted(table["type"].unique())


def base_masks(table: pd.DataFrame, record_name: str, start: int, end: int,
               types: list[str]) -> np.ndarray:
    """bool [len(types), end - start]: whether each base of [start, end) of the record lies in
    an annotation of each type."""
    out = np.zeros((len(types), max(0, end - start)), dtype=bool)
    rows = table[(table["record_name"] == record_name) & (table["end"] > start)
                 & (table["start"] < end)]
    index = {t: i for i, t in enumerate(types)}
    for t, s, e in zip(rows["type"], rows["start"], rows["end"]):
        if t in index:
            out[index[t], max(s, start) - start:min(e, end) - start] = True
    return out
