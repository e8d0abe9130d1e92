"""`CircuitConfig` and `build_circuit`: one cell (or prompt) to a pruned graph and its files.

The same dataclass is the `biollm circuit` flags and the GUI's form.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BioLLMError
from ..progress import CancelToken, ProgressCallback
from .graph import Graph
from .prune import PrunedGraph


@dataclass
class CircuitConfig:
    model: str = field(metadata={"help": "model folder or hub id"})
    dicts: str = field(metadata={"help": "folder of transcoders, one subfolder per layer "
                                          "(recognised by their cfg hookpoint layers.N.mlp.in)"})
    out: str = field(metadata={"help": "graph JSON to write (circuit-tracer frontend format)"})
    data: str = field(default="", metadata={"help": ".h5ad file of cells (with --cell)"})
    cell: int | None = field(default=None, metadata={"help": "index of the cell to explain"})
    prompt: str = field(default="", metadata={"help": "explain this prompt instead of a cell"})
    top_genes: int = field(default=200, metadata={"help": "genes in the cell sentence (top K by "
                                                          "expression)"})
    target: str = field(default="", metadata={
        "help": "cell type whose logit to explain (its first token); default: the prediction"})
    node_threshold: float = field(default=0.8, metadata={
        "help": "keep the nodes holding this share of influence on the target"})
    edge_threshold: float = field(default=0.98, metadata={
        "help": "keep the edges holding this share of edge influence"})
    csv: str = field(default="", metadata={
        "help": "also write PREFIXnodes.csv and PREFIXedges.csv"})
    graph: str = field(default="", metadata={
        "help": "also save the full unpruned graph (.safetensors) to re-prune later"})
    max_features: int = field(default=1000, metadata={
        "help": "feature nodes with their own row, most influential first; the rest join "
                "their error node"})
    batch_size: int = field(default=32, metadata={"help": "target nodes per backward pass"})
    top_logits: int = field(default=1, metadata={"help": "logit nodes: the target plus the "
                                                          "next most likely tokens"})
    merge_genes: bool = field(default=True, metadata={
        "help": "one input node per gene (its tokens merged)"})
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})


def load_transcoders(folder: str | Path, device=None) -> list:
    """Every MLP transcoder under `folder` (itself or its subfolders), each with its `.path`."""
    from ..dictionaries import load_dictionary
    from ..dictionaries.dictionary import WEIGHTS_FILE
    from ..dictionaries.formats import SAELENS_FILE, SPARSIFY_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise BioLLMError(f"transcoder folder {folder} does not exist; give the folder holding "
                          "one transcoder per layer.")
    names = (WEIGHTS_FILE, SPARSIFY_FILE, SAELENS_FILE)
    dirs = sorted({p.parent for n in names for p in folder.rglob(n)})
    if not dirs:
        raise BioLLMError(f"no dictionaries found in {folder}; train transcoders with "
                          "`biollm train --kind transcoder` and give their folder.")
    tcs, kinds = [], set()
    for path in dirs:
        d = load_dictionary(path, device=device)
        kinds.add(d.cfg.kind)
        if d.cfg.kind in ("transcoder", "skip_transcoder"):
            d.path = str(path)
            tcs.append(d)
    if not tcs:
        raise BioLLMError(f"the dictionaries in {folder} are {', '.join(sorted(kinds))}, not "
                          "transcoders; circuits need MLP transcoders (layers.N.mlp.in -> "
                          "layers.N.mlp.out).")
    return tcs


def open_cell_data(cfg: CircuitConfig):
    """The cell data set, checked to hold cell `cfg.cell`."""
    from ..inputs.cells import CellDataset, CellSentenceConfig

    if not cfg.data:
        raise BioLLMError("--cell needs --data, the .h5ad file the cell comes from.")
    ds = CellDataset(cfg.data, CellSentenceConfig(top_k=cfg.top_genes))
    if not 0 <= cfg.cell < ds.n_cells:
        ds.close()
        raise BioLLMError(f"cell index {cfg.cell} is out of range; {cfg.data} has "
                          f"{ds.n_cells} cells (0..{ds.n_cells - 1}).")
    return ds


def cell_input(ds, cell: int, tokenizer):
    """(prompt, input_ids, gene per token, meta with the cell's obs) of one cell."""
    ex = next(ds.examples(tokenizer, [cell]))
    genes = [ds.genes[u] if u >= 0 else "" for u in ex.unit]
    meta = {"cell": int(cell), "data": str(ds.path or "")}
    obs = ds.obs.iloc[cell]
    meta.update({str(k): str(v) for k, v in obs.items() if isinstance(v, (str, int, float))
                 or not hasattr(v, "__len__")})
    return ex.text, ex.input_ids, genes, meta


def build_circuit(cfg: CircuitConfig, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> tuple[Graph, PrunedGraph]:
    """Load, attribute, prune and write the files `cfg` asks for."""
    from ..models import load_model
    from .attribution import attribute
    from .export import write_csv, write_json
    from .prune import prune

    if (cfg.cell is None) == (not cfg.prompt):
        raise BioLLMError("give exactly one of --cell INDEX (with --data) or --prompt TEXT.")
    for name in ("node_threshold", "edge_threshold"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise BioLLMError(f"--{name.replace('_', '-')} must be between 0 and 1.")
    # Cheap checks of the inputs first, so a typo fails before the model loads.
    tcs = load_transcoders(cfg.dicts)
    if cfg.cell is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        prompt, ids, genes, meta = cfg.prompt, None, None, {}
    else:
        with contextlib.closing(open_cell_data(cfg)) as ds:
            lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
            prompt, ids, genes, meta = cell_input(ds, cfg.cell, lm.tokenizer)
    tcs = [tc.to(lm.device) for tc in tcs]
    graph = attribute(lm, tcs, prompt, input_ids=ids, target=cfg.target or None,
                      top_logits=cfg.top_logits, max_features=cfg.max_features,
                      batch_size=cfg.batch_size, token_genes=genes, merge_genes=cfg.merge_genes,
                      progress=progress, cancel=cancel, meta=meta)
    pruned = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    write_json(pruned, cfg.out)
    if cfg.csv:
        write_csv(pruned, cfg.csv)
    if cfg.graph:
        graph.save(cfg.graph)
    return graph, pruned
