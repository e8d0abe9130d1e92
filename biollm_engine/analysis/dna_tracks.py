"""`biollm tracks`: per-base feature tracks along DNA records, as bedGraph, with statistics.

Windows stream through the model in file order; `stream_tracks` merges them into one value per
base and hands finished blocks to the bedGraph writers and `BaseStats`, so memory stays at about
one window whatever the record length.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BioLLMError
from ..fileio import atomic_path
from ..progress import CancelToken, ProgressCallback


@dataclass
class TracksConfig:
    """Options of `biollm tracks`."""

    model: str = field(metadata={"help": "model folder, hub id, or evo2:<name> for Evo 2"})
    data: str = field(metadata={"help": "FASTA, FASTA.gz or GenBank file"})
    dict: str = field(metadata={"help": "dictionary folder or file (ours, sparsify, SAELens, "
                                        "Goodfire)"})
    out: str = field(metadata={"help": "output folder (one bedGraph per feature, tables, logos)"})
    features: str | None = field(default=None, metadata={
        "help": "comma-separated feature indices, e.g. 3,17"})
    top: int | None = field(default=None, metadata={
        "help": "instead of --features: the N features firing on the most tokens (one extra "
                "pass over the data)"})
    annotations: str | None = field(default=None, metadata={
        "help": "GenBank, GFF3 or BED file: enrichment.csv per feature and annotation type"})
    window: int = field(default=1024, metadata={"help": "bases per window"})
    stride: int | None = field(default=None, metadata={
        "help": "bases between window starts (default: the window)"})
    reverse_complement: bool = field(default=False, metadata={
        "help": "also read each window's reverse complement; a base gets the max of both"})
    tokenizer: str = field(default="auto", metadata={
        "help": "auto (bytes for Evo 2, else the model's), byte or model"})
    hookpoint: str | None = field(default=None, metadata={
        "help": "hookpoint to read (default: the dictionary's own)"})
    top_windows: int = field(default=10, metadata={"help": "top windows kept per feature"})
    logo_flank: int = field(default=10, metadata={
        "help": "bases either side of each peak in the sequence logo"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})


@dataclass
class TracksResult:
    out: Path
    features: list[int]
    bedgraphs: list[Path]
    summary: pd.DataFrame
    """feature, frequency (fraction of bases firing), max."""
    top_windows: pd.DataFrame
    enrichment: pd.DataFrame | None


def parse_features(text: str) -> list[int]:
    if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text or ""):
        raise BioLLMError(f"--features {text!r} is not a comma-separated list of feature "
                          "indices (e.g. 3,17).")
    return list(dict.fromkeys(int(x) for x in text.split(",")))


def _chrom(name: str) -> str:
    return re.sub(r"\s+", "_", name) or "record"


def _top_features(counts: np.ndarray, n: int) -> list[int]:
    """The `n` features firing on the most tokens (ties: the lower index), never one that
    does not fire."""
    if not counts.any():
        raise BioLLMError("no feature fires anywhere on this data; check the dictionary's "
                          "hookpoint and model.")
    order = np.argsort(-counts, kind="stable")
    return [int(f) for f in order[:n] if counts[f] > 0]


def run_tracks(cfg: TracksConfig, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> TracksResult:
    from ..dictionaries.formats import check_features, load_dictionary
    from ..inputs.annotations import annotation_types, base_masks, check_records, read_annotations
    from ..inputs.dna import DnaConfig, DnaDataset, reverse_complement
    from ..models import load_model, resolve_hookpoint
    from .dna_enrichment import (BaseStats, fetch_intervals, frequency_matrix, prepare_logos,
                                 write_logo)
    from .encode import encode_live, firing_counts, read_ahead
    from .tracks import BedGraphWriter, csr_entries, stream_tracks, token_spans

    if (cfg.features is None) == (cfg.top is None):
        raise BioLLMError("give exactly one of --features (e.g. 3,17) or --top N.")
    if cfg.top is not None and cfg.top < 1:
        raise BioLLMError("--top must be at least 1.")
    if cfg.tokenizer not in ("auto", "byte", "model"):
        raise BioLLMError(f"--tokenizer must be auto, byte or model, not {cfg.tokenizer!r}.")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BioLLMError(f"--out {out} is a file; give a folder.")
    chosen = parse_features(cfg.features) if cfg.features is not None else None
    ann = read_annotations(cfg.annotations) if cfg.annotations else None
    dictionary = load_dictionary(cfg.dict)
    lm = load_model(cfg.model, device=cfg.device)
    hookpoint = resolve_hookpoint(lm, cfg.hookpoint or dictionary.cfg.hookpoint or "").name
    dictionary = dictionary.to(lm.device)
    data = DnaDataset(cfg.data, DnaConfig(window=cfg.window, stride=cfg.stride,
                                          reverse_complement=cfg.reverse_complement,
                                          tokenizer=cfg.tokenizer))
    tok = "byte" if data.reads_bytes(lm.tokenizer) else "model"
    names = list(data.records["name"])
    lengths = [int(n) for n in data.records["length"]]
    if ann is not None:
        check_records(ann, names, cfg.annotations)
    span = None if tok == "byte" else token_spans(lm.tokenizer)

    def chunks(features):  # the next batch's forward runs while this one is used
        return read_ahead(encode_live(lm, data.examples(lm.tokenizer), dictionary, hookpoint,
                                      cfg.batch_size, progress=progress, cancel=cancel,
                                      total=len(data), features=features))

    if chosen is None:
        chosen = _top_features(firing_counts(lm, data.examples(lm.tokenizer), dictionary,
                                             hookpoint, cfg.batch_size, progress=progress,
                                             cancel=cancel, total=len(data)), cfg.top)
    check_features(chosen, dictionary.num_latents)
    types = annotation_types(ann) if ann is not None else []
    stats = BaseStats(chosen, types, top=max(cfg.top_windows, 50))
    window_max = np.zeros((len(data), len(chosen)), np.float32)  # 4 bytes per window x feature

    def tapped():  # chunks of the chosen features' columns only
        for chunk in chunks(chosen):
            row, col, value = csr_entries(chunk.acts)
            np.maximum.at(window_max, (chunk.sources.record[row], col), value)
            yield chunk

    paths = [out / f"feature_{f}.bedgraph" for f in chosen]
    out.mkdir(parents=True, exist_ok=True)
    prepare_logos()
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(BedGraphWriter(p, name=f"feature_{f}"))
                   for p, f in zip(paths, chosen)]
        for record, start, vals in stream_tracks(tapped(), range(len(chosen)),
                                                 data.windows_table(), lengths, span):
            chrom = _chrom(names[record])
            for i, w in enumerate(writers):
                w.write(chrom, start, vals[i])
            masks = base_masks(ann, names[record], start, start + vals.shape[1], types) \
                if ann is not None else None
            stats.update(record, start, vals, masks)

    with np.errstate(invalid="ignore", divide="ignore"):  # a feature that never fires: NaN
        summary = pd.DataFrame({"feature": chosen, "frequency": stats.frequency(),
                                "mean": stats.sum_all / max(stats.bases, 1),
                                "mean_firing": stats.sum_all / stats.nonzero,
                                "max": window_max.max(axis=0) if len(data) else 0.0})
    _write_csv(summary, out / "features.csv")
    top = _top_windows(data, window_max, chosen, cfg.top_windows)
    flank = cfg.logo_flank
    # the top windows' bases and every peak's context, in one more read of the file
    table = data.windows_table()
    shown = sorted(set(top["window"]))
    wanted = [(int(table.at[w, "record"]), int(table.at[w, "start"]), int(table.at[w, "end"]))
              for w in shown]
    for peaks in stats.peaks:
        wanted += [(int(r), int(p) - flank, int(p) + flank + 1) for _, r, p in peaks]
    seqs = fetch_intervals(cfg.data, wanted, uppercase=data.cfg.uppercase)
    forward = dict(zip(shown, seqs))
    top["sequence"] = [forward[w] if strand == "+" else reverse_complement(forward[w])
                       for w, strand in zip(top["window"], top["strand"])]
    _write_csv(top, out / "top_windows.csv")
    enrichment = None
    if ann is not None:
        enrichment = stats.enrichment()
        _write_csv(enrichment, out / "enrichment.csv")
    done = len(shown)
    for i, f in enumerate(chosen):
        contexts = [c.upper() for c in seqs[done:done + len(stats.peaks[i])]]
        done += len(contexts)
        if not contexts:
            continue
        pfm = frequency_matrix(contexts)
        write_logo(pfm, out / f"feature_{f}_logo.png",
                   f"feature {f}: {len(contexts)} strongest peaks", first=-flank)
        # the numbers behind the logo, for motif tools (position 0: the peak's first base)
        _write_csv(pd.DataFrame(pfm, columns=list("ACGT")).assign(
            position=np.arange(-flank, len(pfm) - flank), peaks=len(contexts))[
            ["position", *"ACGT", "peaks"]], out / f"feature_{f}_logo.csv")
    return TracksResult(out, chosen, paths, summary, top, enrichment)


@dataclass
class RecordTracks:
    """Per-base values of chosen features along one record, for a viewer."""

    name: str
    features: list[int]
    values: np.ndarray
    """float32 [len(features), record length]."""


def record_tracks(model: str, data: str, dictionary: str, record: int = 0,
                  features: list[int] | None = None, top: int = 6, window: int = 1024,
                  stride: int | None = None, tokenizer: str = "auto", batch_size: int = 8,
                  device: str = "auto", progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> RecordTracks:
    """The tracks of one record in memory (a viewer shows one record at a time): `features`, or
    the `top` features firing on the most of its bases (one extra pass over its windows)."""
    from ..dictionaries.formats import check_features, load_dictionary
    from ..inputs.dna import DnaConfig, DnaDataset
    from ..models import load_model, resolve_hookpoint
    from .encode import encode_live, firing_counts, read_ahead
    from .tracks import base_tracks, token_spans

    sae = load_dictionary(dictionary)
    lm = load_model(model, device=device)
    hookpoint = resolve_hookpoint(lm, sae.cfg.hookpoint or "").name
    sae = sae.to(lm.device)
    ds = DnaDataset(data, DnaConfig(window=window, stride=stride, tokenizer=tokenizer))
    tokenizer = "byte" if ds.reads_bytes(lm.tokenizer) else "model"
    if not 0 <= record < len(ds.records):
        raise BioLLMError(f"record {record} is out of range; {data} has {len(ds.records)}.")
    table = ds.windows_table()
    indices = table.index[table["record"] == record].tolist()
    span = None if tokenizer == "byte" else token_spans(lm.tokenizer)

    def examples():
        return ds.examples(lm.tokenizer, indices=indices)

    features = list(features) if features else _top_features(
        firing_counts(lm, examples(), sae, hookpoint, batch_size, progress=progress,
                      cancel=cancel, total=len(indices)), top)
    check_features(features, sae.num_latents)
    n = int(ds.records["length"][record])
    chunks = read_ahead(encode_live(lm, examples(), sae, hookpoint, batch_size,
                                    progress=progress, cancel=cancel, total=len(indices),
                                    features=features))
    values = base_tracks(chunks, range(len(features)), {record: n}, span, table)[record]
    return RecordTracks(str(ds.records["name"][record]), features, values)


def _top_windows(data, window_max: np.ndarray, chosen: list[int], n: int) -> pd.DataFrame:
    """Each feature's `n` windows of the highest max (its sequence left for the caller to
    fill, from the read that also fetches the logos' contexts)."""
    table = data.windows_table()
    rows = []
    for i, f in enumerate(chosen):
        order = np.argsort(-window_max[:, i], kind="stable")[:n]
        order = order[window_max[order, i] > 0]
        for rank, w in enumerate(order):
            rows.append(dict(feature=f, rank=rank + 1, window=int(w),
                             value=float(window_max[w, i])))
    df = pd.DataFrame(rows, columns=["feature", "rank", "window", "value"])
    df = df.join(table[["name", "start", "end", "strand"]], on="window")
    df["sequence"] = ""
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_bedgraph(path: str | Path, chrom: str, length: int) -> np.ndarray:
    """One record's per-base values from a bedGraph (zeros where no run is listed)."""
    out = np.zeros(int(length), np.float32)
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith(("track", "browser", "#")) or not line.strip():
                continue
            cols = line.split()
            if len(cols) != 4:
                raise BioLLMError(f"{path} line {lineno}: bedGraph needs 4 columns (chrom, "
                                  "start, end, value).")
            if cols[0] == chrom:
                out[int(cols[1]):int(cols[2])] = float(cols[3])
    return out


def track_peaks(values: np.ndarray, n: int = 10, flank: int = 10) -> np.ndarray:
    """Positions of the `n` highest bases of one track where it fires, each more than `flank`
    bases from a higher one (so one binding site is one peak, not its shoulders)."""
    values = np.asarray(values)
    taken: list[int] = []
    for i in np.argsort(values, kind="stable")[::-1]:
        if len(taken) == n or values[i] <= 0:
            break
        if all(abs(int(i) - j) > flank for j in taken):
            taken.append(int(i))
    return np.asarray(taken, dtype=np.int64)
