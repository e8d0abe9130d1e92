"""How long the Circuit panel takes to redraw after a threshold change, on a built demo graph.

    QT_QPA_PLATFORM=offscreen python bench/circuit_redraw.py [--top-genes 60] [--edges 2000]

Builds one cell's graph once, finds the node threshold that keeps about `--edges` edges, then
moves the slider between it and a neighbouring value and times the whole step (live pruning,
the drawing items' update and a repaint), beside the engine's full `prune` for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top-genes", type=int, default=60)
    ap.add_argument("--max-features", type=int, default=400)
    ap.add_argument("--edges", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--graph", default="", help="reuse this saved graph (built and saved if "
                                                "missing)")
    args = ap.parse_args()

    import anndata as ad
    from PySide6.QtWidgets import QApplication

    from biollm_engine.circuits import Graph
    from biollm_engine.circuits.prune import prune  # the package name is also its module
    from workbench.state.circuit import build
    from workbench.state.session import Session
    from workbench.views.circuit import CircuitPanel

    app = QApplication.instance() or QApplication([])
    session = Session()
    session.open_workspace(DEMO)
    session.cells.set_data(ad.read_h5ad(DEMO / "cells.h5ad"), DEMO / "cells.h5ad")
    panel = CircuitPanel(session, lambda: None, top_genes=args.top_genes,
                         max_features=args.max_features)
    panel.resize(1200, 900)
    panel.show()
    t = time.perf_counter()
    if args.graph and Path(args.graph).exists():
        graph = Graph.load(args.graph)
    else:
        graph, _ = build(panel.request(cell=0))
        if args.graph:
            graph.save(args.graph)
    print(f"graph ready in {time.perf_counter() - t:.1f} s: {graph.n_nodes} nodes")
    panel.state.set_graph(graph, panel.request(cell=0))
    app.processEvents()

    # the node threshold whose pruned graph has about the asked number of edges
    best = min((abs(int(prune(graph, x / 20, 0.98).edge_mask.sum()) - args.edges), x / 20)
               for x in range(2, 21))[1]
    other = round(best - 0.05, 2) if best > 0.1 else round(best + 0.05, 2)
    redraw, engine_prune = [], []
    for r in range(args.repeats):
        value = best if r % 2 == 0 else other
        t = time.perf_counter()
        panel.node_slider.setValue(value)
        panel.glw.repaint()
        app.processEvents()
        redraw.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        prune(graph, value, 0.98)
        engine_prune.append((time.perf_counter() - t) * 1000)
    panel.node_slider.setValue(best)
    n_edges = int(panel.state.pruned.edge_mask.sum())
    ms, full = statistics.median(redraw), statistics.median(engine_prune)
    print(f"{n_edges} edges drawn at node threshold {best} (moving to {other} and back)")
    print(f"threshold change → redrawn: {ms:.1f} ms median over {args.repeats} "
          f"(engine's full prune alone: {full:.1f} ms; ratio {full / ms:.1f}x)")
    print("PASS" if ms < 100 else "SLOW", "(target < 100 ms)")


if __name__ == "__main__":
    main()
