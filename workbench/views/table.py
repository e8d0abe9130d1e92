"""A pandas DataFrame as a sortable, filterable Qt table: 16k+ rows without lag."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt

if TYPE_CHECKING:
    import pandas as pd

SORT_ROLE = Qt.ItemDataRole.UserRole


class FrameModel(QAbstractTableModel):
    def __init__(self, df: pd.DataFrame | None = None, editable: tuple[str, ...] = ()):
        super().__init__()
        self.df = df  # None until there is a table: pandas is not imported at start-up
        self.editable = editable
        self.on_edit = None  # callable(row, column_name, value)

    def set_frame(self, df: pd.DataFrame | None) -> None:
        self.beginResetModel()
        self.df = None if df is None else df.reset_index(drop=True)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() or self.df is None else len(self.df)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() or self.df is None else len(self.df.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        v = self.df.iat[index.row(), index.column()]
        if role == SORT_ROLE:
            return v.item() if isinstance(v, np.generic) else v
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            if isinstance(v, (float, np.floating)):
                return f"{v:.4g}"
            return str(v)
        if role == Qt.ItemDataRole.TextAlignmentRole and isinstance(v, (int, float, np.number)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return str(self.df.columns[section])
        return None

    def flags(self, index):
        f = super().flags(index)
        if self.df.columns[index.column()] in self.editable:
            f |= Qt.ItemFlag.ItemIsEditable
        return f

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        col = self.df.columns[index.column()]
        if role != Qt.ItemDataRole.EditRole or col not in self.editable:
            return False
        self.df.iat[index.row(), index.column()] = str(value)
        if self.on_edit is not None:
            self.on_edit(index.row(), col, str(value))
        self.dataChanged.emit(index, index)
        return True


def proxy_for(model: FrameModel) -> QSortFilterProxyModel:
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    proxy.setFilterKeyColumn(-1)
    proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    return proxy
