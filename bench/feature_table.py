"""Sort and filter a feature table of 16k+ rows (goal: < 100 ms each).

Times the workbench's table model (views/table.py: a permutation index over numpy columns) on a
table shaped like the engine's feature analysis, beside Qt's QSortFilterProxyModel over the same
rows in this one run. Usage: python bench/feature_table.py [--rows 16384 65536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from _timing import median_ms  # noqa: E402

GOAL_MS = 100.0


def feature_table(n: int, rng):
    import numpy as np
    import pandas as pd

    types = np.array(["B", "CD4 T", "CD8 T", "NK", "CD14 Mono", "DC", "Megakaryocyte"])
    genes = np.array(["CD79A", "MS4A1", "CD3E", "NKG7", "LYZ", "S100A8", "PPBP", "GNLY", "IL7R"])
    return pd.DataFrame({
        "feature": np.arange(n), "label": ["" if i % 9 else f"program {i}" for i in range(n)],
        "frequency": rng.random(n), "max": rng.exponential(size=n),
        "best_cell_type": rng.choice(types, n), "auroc_cell_type": rng.uniform(0.4, 1.0, n),
        "top_genes": [", ".join(rng.choice(genes, 3, replace=False)) for _ in range(n)]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[16_384, 65_536])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--proxy-rows", type=int, default=16_384,
                    help="also time QSortFilterProxyModel at this size (0: skip; it is slow)")
    args = ap.parse_args()

    import numpy as np
    from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
    from PySide6.QtWidgets import QApplication, QTableView

    from workbench.views.table import FrameModel

    app = QApplication.instance() or QApplication([])
    rng = np.random.default_rng(0)
    print(f"{'rows':>7} {'sort ms':>8} {'filter ms':>10} {'first filter ms':>16} "
          f"{'clear ms':>9}  goal {GOAL_MS:.0f} ms")
    results = {}
    for n in args.rows:
        df = feature_table(n, rng)
        model = FrameModel(df, editable=("label",))
        view = QTableView()
        view.setModel(model)
        view.resize(900, 600)
        view.show()
        app.processEvents()
        t = time.perf_counter()
        model.set_filter("cd79a")  # builds the per-row text once
        app.processEvents()
        first = (time.perf_counter() - t) * 1e3
        cols = iter([2, 3, 5, 4, 6, 0, 2, 3] * args.repeats)
        words = iter(["nk", "program", "0.9", "ms4a1", "mono"] * args.repeats)

        def sort():
            model.sort(next(cols), Qt.SortOrder.DescendingOrder)
            app.processEvents()

        def filt():
            model.set_filter(next(words))
            app.processEvents()

        s, f = median_ms(sort, args.repeats), median_ms(filt, args.repeats)
        c = median_ms(lambda: (model.set_filter(""), app.processEvents()), args.repeats)
        results[n] = (s, f)
        print(f"{n:>7,} {s:>8.1f} {f:>10.1f} {first:>16.1f} {c:>9.1f}  "
              f"sort {s / GOAL_MS:.2f}x, filter {f / GOAL_MS:.2f}x of the goal")
        view.close()

    n = args.proxy_rows
    if n:
        df = feature_table(n, rng)

        class PlainModel(QAbstractTableModel):  # what a proxy sits on: one cell at a time
            def rowCount(self, parent=QModelIndex()):
                return 0 if parent.isValid() else len(df)

            def columnCount(self, parent=QModelIndex()):
                return 0 if parent.isValid() else len(df.columns)

            def data(self, index, role=Qt.ItemDataRole.DisplayRole):
                if role == Qt.ItemDataRole.DisplayRole:
                    v = df.iat[index.row(), index.column()]
                    return f"{v:.4g}" if isinstance(v, float) else str(v)
                if role == Qt.ItemDataRole.UserRole:
                    v = df.iat[index.row(), index.column()]
                    return v.item() if hasattr(v, "item") else v
                return None

        source = PlainModel()
        proxy = QSortFilterProxyModel()
        proxy.setSourceModel(source)
        proxy.setSortRole(Qt.ItemDataRole.UserRole)
        proxy.setFilterKeyColumn(-1)
        proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        t = time.perf_counter()
        proxy.sort(2, Qt.SortOrder.DescendingOrder)
        ps = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        proxy.setFilterFixedString("nk")
        pf = (time.perf_counter() - t) * 1e3
        line = f"QSortFilterProxyModel, {n:,} rows: sort {ps:.0f} ms, filter {pf:.0f} ms"
        if n in results:
            s, f = results[n]
            line += f" (the workbench's model: {ps / s:.0f}x and {pf / f:.0f}x faster)"
        print(line)


if __name__ == "__main__":
    main()
