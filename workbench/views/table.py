"""A pandas DataFrame as a sortable, filterable Qt table: 16k+ rows without lag.

The model keeps the frame in its own order and shows it through a permutation index: sorting is
one `np.argsort` of a column, filtering one pass of `in` over a cached lower-case text per row,
and the view hears one layout change, not one signal per row as a QSortFilterProxyModel sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt

if TYPE_CHECKING:
    import pandas as pd

_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


def _text(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if np.isnan(v) else f"{v:.4g}"  # undefined (e.g. the AUROC of a dead feature)
    return str(v)


def stable_order(values: np.ndarray, descending: bool = False) -> np.ndarray:
    """Row order sorting `values`; equal values keep their order in both directions."""
    v = values if values.dtype.kind in "biuf" else values.astype(str)
    if not descending:
        return np.argsort(v, kind="stable")
    n = len(v)
    return (n - 1 - np.argsort(v[::-1], kind="stable"))[::-1]


class FrameModel(QAbstractTableModel):
    def __init__(self, df: pd.DataFrame | None = None, editable: tuple[str, ...] = (),
                 header_tips=None):
        """`header_tips`: callable(column name) -> what the column means (a header's tooltip)."""
        super().__init__()
        self.editable = editable
        self.header_tips = header_tips
        self.on_edit = None  # callable(frame_row, column_name, value)
        self.df = None  # the whole table in its own order (what exports write)
        self.rows = np.empty(0, dtype=np.int64)  # frame rows in the order shown
        self.sort_column: int | None = None
        self.sort_descending = False
        self.filter_text = ""
        self._cols: list[np.ndarray] = []
        self._haystack: list[str] | None = None  # per row, lower-case, made on the first filter
        self.set_frame(df)

    # -- the frame ----------------------------------------------------------------------------
    def set_frame(self, df: pd.DataFrame | None) -> None:
        """Show a new table (None: none); the sort column and filter text carry over."""
        self.beginResetModel()
        self.df = None if df is None else df.reset_index(drop=True)
        # editable columns copied: the edit writes both the frame and the array shown
        self._cols = [] if df is None else [
            np.array(self.df[c].to_numpy(), copy=c in self.editable) for c in self.df.columns]
        self._haystack = None
        if self.sort_column is not None and self.sort_column >= len(self._cols):
            self.sort_column = None
        self.rows = self._order()
        self.endResetModel()

    def frame_row(self, view_row: int) -> int:
        """The frame row behind a shown row."""
        return int(self.rows[view_row])

    def shown(self) -> pd.DataFrame:
        """The rows as shown: sorted and filtered."""
        return self.df.iloc[self.rows].reset_index(drop=True)

    # -- sorting and filtering ----------------------------------------------------------------
    def _order(self) -> np.ndarray:
        if self.df is None:
            return np.empty(0, dtype=np.int64)
        n = len(self.df)
        order = (np.arange(n) if self.sort_column is None else
                 stable_order(self._cols[self.sort_column], self.sort_descending))
        if self.filter_text:
            needle = self.filter_text.lower()
            keep = np.fromiter((needle in s for s in self._rows_text()), dtype=bool, count=n)
            order = order[keep[order]]
        return order.astype(np.int64, copy=False)

    def _rows_text(self) -> list[str]:
        if self._haystack is None:
            # "\0" between columns, so a match never spans two cells
            cols = [[_text(v).lower() for v in c] for c in self._cols]
            self._haystack = ["\0".join(r) for r in zip(*cols)]
        return self._haystack

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        """Called by QTableView when a header is clicked (sortingEnabled)."""
        self.sort_column = column
        self.sort_descending = order == Qt.SortOrder.DescendingOrder
        self._relayout()

    def set_filter(self, text: str) -> None:
        """Show the rows with `text` in any column (case-insensitive); "" shows all."""
        self.filter_text = text.strip()
        self._relayout()

    def _relayout(self) -> None:
        """New row order in one layout change; selections follow their rows."""
        if self.df is None:
            return
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        frame_rows = [int(self.rows[i.row()]) for i in old]
        self.rows = self._order()
        where = np.full(len(self.df), -1, dtype=np.int64)
        where[self.rows] = np.arange(len(self.rows))
        new = [self.index(int(where[r]), i.column()) if where[r] >= 0 else QModelIndex()
               for i, r in zip(old, frame_rows)]
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()

    # -- Qt's table protocol ------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._cols)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        v = self._cols[index.column()][self.rows[index.row()]]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return _text(v)
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(v, (int, float, np.number)):
            return _RIGHT
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal or self.df is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return str(self.df.columns[section])
        if role == Qt.ItemDataRole.ToolTipRole and self.header_tips is not None:
            return self.header_tips(str(self.df.columns[section])) or None
        return None

    def flags(self, index):
        f = super().flags(index)
        if self.df.columns[index.column()] in self.editable:
            f |= Qt.ItemFlag.ItemIsEditable
        return f

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        c = index.column()
        col = self.df.columns[c]
        if role != Qt.ItemDataRole.EditRole or col not in self.editable:
            return False
        r, value = self.frame_row(index.row()), str(value)
        self.df.iat[r, c] = value
        self._cols[c][r] = value
        if self._haystack is not None:
            self._haystack[r] = "\0".join(_text(col_[r]).lower() for col_ in self._cols)
        if self.on_edit is not None:
            self.on_edit(r, col, value)
        self.dataChanged.emit(index, index)
        return True

