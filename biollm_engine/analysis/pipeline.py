"""The feature-analysis job: encode, accumulate statistics, build the table, write back.

`analyze(chunks, ...)` is the core on `EncodedChunk`s (any source); `run_features(cfg)` wires a
model, a dictionary, a data set and optionally an activation cache to it, as `biollm features`
and the workbench do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import BioLLMError
from ..progress import CancelToken, ProgressCallback
from .association import Association, associate, categorical_columns, obs_column
from .chunks import EncodedChunk, TokenSources
from .contexts import make_labeler, token_contexts
from .genes import TopGenes, top_genes
from .stats import FeatureStats, FeatureStatsResult, StatsConfig
from .table import FeatureTable


@dataclass
class FeaturesConfig:
    """Options of `biollm features` (and the workbench's feature-analysis job)."""

    model: str = field(metadata={"help": "model folder or hub id"})
    data: str = field(metadata={"help": "data set (.h5ad cells, FASTA / GenBank DNA, text)"})
    dict: str = field(metadata={"help": "dictionary folder (ours, sparsify, SAELens) or .pt"})
    out: str = field(metadata={"help": "feature table to write (.csv, .tsv or .parquet)"})
    obs_key: list[str] = field(default_factory=list, metadata={
        "help": "obs column to associate features with (default: every categorical column)"})
    write_h5ad: str | None = field(default=None, metadata={
        "help": "also write a NEW .h5ad: the input plus obsm['X_<dict>'] and the table in uns"})
    cache: str | None = field(default=None, metadata={
        "help": "activation cache harvested from this model and data (default: run the model)"})
    top_n: int = field(default=10, metadata={
        "help": "top genes, tokens, cells and logit-lens tokens kept per feature"})
    hookpoint: str | None = field(default=None, metadata={
        "help": "hookpoint to read (default: the dictionary's own)"})
    min_gene_count: int = field(default=5, metadata={
        "help": "genes with fewer tokens than this are not ranked as a feature's top genes"})
    obs_features: int = field(default=10, metadata={
        "help": "with --write-h5ad: also write this many features as obs columns feat_<i>"})
    top_k: int = field(default=200, metadata={"help": "genes per cell sentence (cells, live)"})
    layer: str | None = field(default=None, metadata={
        "help": "matrix the cell sentences rank genes by: X (unset), 'raw' or a layer name"})
    template: str = field(default="cell_type_prediction", metadata={
        "help": "cell-sentence prompt: cell_type_prediction, sentence, or text with "
                "{cell_sentence} (use the one the dictionary was trained with)"})
    data_option: list[str] = field(default_factory=list, metadata={
        "help": "reader option KEY=VALUE as for harvest, e.g. tokenizer=model, window=256, "
                "stride=128 for DNA (cells: --top-k, --layer, --template)"})
    batch_size: int = field(default=8, metadata={"help": "examples per forward pass (live)"})
    chunk_tokens: int = field(default=16384, metadata={"help": "tokens encoded per chunk"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})


@dataclass
class FeatureAnalysis:
    """Everything the analysis found, as plain data (the table is derived from the rest)."""

    stats: FeatureStatsResult
    table: FeatureTable
    top_genes: TopGenes | None = None
    associations: list[Association] = field(default_factory=list)
    top_cells: tuple[np.ndarray, np.ndarray] | None = None
    contexts: list[list[str]] | None = None  # [F][top tokens] "left [token] right"
    lens: object | None = None


def analyze(chunks: Iterable[EncodedChunk], num_features: int, *,
            genes: Sequence[str] | None = None, obs: pd.DataFrame | None = None,
            obs_keys: Sequence[str] | None = None, num_cells: int | None = None,
            sources: TokenSources | None = None, tokenizer=None, lens=None, top_n: int = 10,
            min_gene_count: int = 5, context_width: int = 5) -> FeatureAnalysis:
    """One pass over `chunks`, then the per-gene, per-category and per-token summaries.

    `sources` (all tokens' sources) gives the top tokens their context; when it is None the
    sources seen in the chunks are kept for that.
    """
    acc = FeatureStats(num_features, StatsConfig(top_tokens=top_n, per_unit=genes is not None))
    seen: list[TokenSources] = []
    for chunk in chunks:
        acc.update(chunk)
        if sources is None:
            seen.append(chunk.sources)
    if obs is not None:
        num_cells = len(obs)
    stats = acc.result(num_cells, len(genes) if genes is not None else None)
    if obs is not None and stats.cell_max.shape[0] > len(obs):
        raise BioLLMError(f"the activations come from {stats.cell_max.shape[0]} records but the "
                          f"data set has {len(obs)} cells; use the data the cache was made from.")
    tg = top_genes(stats, top_n, min_gene_count) if genes is not None else None
    assoc = []
    if obs is not None:
        keys = list(obs_keys) if obs_keys else categorical_columns(obs)
        for key in keys:
            assoc.append(associate(stats.cell_max, obs_column(obs, key), key))
    if sources is None:
        sources = TokenSources.concat(seen) if seen else TokenSources([], [], [], [])
    label = make_labeler(genes, tokenizer)
    flat = stats.top_token_ids.ravel()
    ctx = np.asarray(token_contexts(flat, sources, label, context_width), dtype=object)
    ctx = ctx.reshape(stats.top_token_ids.shape)
    table = FeatureTable.build(stats, genes, assoc, lens, ctx[:, 0] if ctx.shape[1] else None,
                               tg, n_genes=5)
    return FeatureAnalysis(stats, table, tg, assoc, stats.top_cells(top_n) if obs is not None
                           else None, ctx.tolist(), lens)


def run_features(cfg: FeaturesConfig, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> FeatureAnalysis:
    """Load, encode (from the cache or live), analyse, save the table and the .h5ad."""
    from ..dictionaries.formats import load_dictionary
    from ..inputs import open_data
    from ..models import load_model, resolve_hookpoint
    from .encode import encode_cache, encode_live
    from .logit_lens import feature_logit_lens
    from .writeback import write_back

    out = Path(cfg.out)
    data_path = Path(cfg.data)
    for target in [out] + ([Path(cfg.write_h5ad)] if cfg.write_h5ad else []):
        if data_path.exists() and target.exists() and target.resolve() == data_path.resolve():
            raise BioLLMError(f"the output {target} is the input data; choose a new file name "
                              "(the input is never modified).")
    if cfg.top_n < 1:
        raise BioLLMError("top-n must be at least 1.")
    data = open_data(cfg.data, **_data_options(cfg))  # bad options fail before the model loads
    if cfg.write_h5ad and data.kind != "cells":
        raise BioLLMError("--write-h5ad needs .h5ad cell data.")
    dictionary = load_dictionary(cfg.dict)
    lm = load_model(cfg.model, device=cfg.device)
    hookpoint = resolve_hookpoint(lm, cfg.hookpoint or dictionary.cfg.hookpoint
                                  or _missing_hookpoint(cfg.dict)).name
    dictionary = dictionary.to(lm.device)
    genes = data.units if data.kind == "cells" else None
    obs = data.obs if data.kind == "cells" else None
    obs_keys = cfg.obs_key or None
    if obs is not None and obs_keys:
        for key in obs_keys:
            obs_column(obs, key)  # fail before the long part
    if cfg.cache:
        from ..cache import ActivationCache

        cache = ActivationCache(cfg.cache)
        cached_units = cache.meta.get("units")
        if genes is not None and cached_units is not None and list(cached_units) != list(genes):
            raise BioLLMError(f"the cache {cfg.cache} was harvested from other genes than "
                              f"{cfg.data}; harvest this data set or pass the data it was made from.")
        if data.kind == "dna":
            _check_cached_windows(cache, data, cfg.cache)
        sources = TokenSources.from_any(cache.sources())
        chunks = encode_cache(cache, dictionary, hookpoint, cfg.chunk_tokens, progress, cancel,
                              sources)
    else:
        sources = None
        chunks = encode_live(lm, data.examples(lm.tokenizer), dictionary, hookpoint,
                             cfg.batch_size, progress=progress, cancel=cancel, total=len(data))
    lens = None
    if lm.arch.unembed:
        cell_types = None
        if obs is not None:
            key = (obs_keys or categorical_columns(obs) or [None])[0]
            if key is not None:
                cell_types = [str(c) for c in pd.unique(obs[key].dropna())]
        lens = feature_logit_lens(lm, dictionary, cfg.top_n, genes, cell_types)
    # DNA: the records are the windows (`data.windows_table()`), each token's unit its first base
    bytes_in = data.kind == "dna" and data.reads_bytes(lm.tokenizer)
    result = analyze(chunks, dictionary.num_latents, genes=genes, obs=obs, obs_keys=obs_keys,
                     num_cells=len(data) if data.kind == "dna" else None, sources=sources,
                     tokenizer=_BYTES if bytes_in else lm.tokenizer, lens=lens,
                     top_n=cfg.top_n, min_gene_count=cfg.min_gene_count)
    result.table.save(out)
    if cfg.write_h5ad:
        key = Path(cfg.dict).name.replace(" ", "_") or "features"
        write_back(cfg.data, result.stats.cell_max, result.table, _safe_key(key), cfg.write_h5ad,
                   cfg.obs_features)
    return result


def _data_options(cfg: FeaturesConfig) -> dict:
    """The reader options: --data-option, and for cells the sentence flags (set only there)."""
    from ..commands.harvest import parse_data_options
    from ..inputs import data_kind

    options = parse_data_options(cfg.data_option)
    if data_kind(cfg.data) == "cells":
        for key in ("top_k", "layer", "template"):
            if key in options:
                raise BioLLMError(f"set {key} of cell sentences with --{key.replace('_', '-')}, "
                                  "not --data-option.")
        options.update(top_k=cfg.top_k, layer=cfg.layer, template=cfg.template)
    return options


def _check_cached_windows(cache, data, path: str) -> None:
    """A DNA cache's tokens name windows and token ids of its harvest's options; read with
    others, records and labels would be silently wrong."""
    given = cache.meta.get("data_options")
    if given is None:
        return
    try:
        same = type(data.cfg)(**given) == data.cfg
    except (TypeError, BioLLMError):
        same = False
    if not same:
        shown = " ".join(f"--data-option {k}={v}" for k, v in given.items()) or "none"
        raise BioLLMError(f"the cache {path} was harvested with other reader options; pass the "
                          f"same ({shown}).")


class _ByteTokens:
    """Names byte-level token ids (DNA read with tokenizer=byte: A=65) by their letter, which
    the model's own vocabulary may call something else."""

    @staticmethod
    def decode(ids) -> str:
        return bytes(int(i) for i in ids).decode("latin-1")


_BYTES = _ByteTokens()


def _safe_key(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "features"


def _missing_hookpoint(path: str) -> str:
    raise BioLLMError(f"dictionary {path} does not say which hookpoint it reads; pass --hookpoint.")
