"""The measurements table: a Qt view over numpy columns.

A Qt model reads cells on demand, so a table of a whole slide's nuclei costs no more to show than
one screen's (a QTableWidget would build an item per cell). Columns sort by clicking their header,
with numpy (a Qt sort proxy would call back into Python n·log n times); double-clicking a row
reports the nucleus so the widget can centre the view on it.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QSizePolicy, QTableView


class ColumnsModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._names: list[str] = []
        self._cols: list[np.ndarray] = []
        self._order: np.ndarray | None = None  # row i shows table row _order[i]

    def set_columns(self, table: dict[str, np.ndarray] | None) -> None:
        self.beginResetModel()
        table = table or {}
        self._names = list(table)
        self._cols = [np.asarray(v) for v in table.values()]
        self._order = None
        self.endResetModel()

    def _row(self, i: int) -> int:
        return int(self._order[i]) if self._order is not None else i

    def sort(self, column, order=Qt.SortOrder.AscendingOrder):
        if not self._cols or not 0 <= column < len(self._cols):
            return
        self.layoutAboutToBeChanged.emit()
        idx = np.argsort(self._cols[column], kind="stable")
        self._order = idx[::-1] if order == Qt.SortOrder.DescendingOrder else idx
        self.layoutChanged.emit()

    def rowCount(self, parent=QModelIndex()):  # noqa: N802 (Qt's name)
        return 0 if parent.isValid() or not self._cols else len(self._cols[0])

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(self._cols)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            v = self._cols[index.column()][self._row(index.row())]
            return str(int(v)) if np.issubdtype(type(v), np.integer) else f"{float(v):.4g}"
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._names[section] if section < len(self._names) else None
        return None

    def row(self, i: int) -> dict[str, float]:
        """The table row shown at position ``i``."""
        return {n: c[self._row(i)].item() for n, c in zip(self._names, self._cols)}


class MeasurementsView(QTableView):
    """Sortable read-only table; ``nucleus_chosen`` carries the double-clicked row as a dict."""

    nucleus_chosen = Signal(dict)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.columns = ColumnsModel(self)
        self.setModel(self.columns)
        self.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.setSortingEnabled(True)
        # Column widths from the first rows only: measuring every row of a big table would call
        # into Python for each cell.
        self.horizontalHeader().setResizeContentsPrecision(50)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().setVisible(False)
        self.setMinimumHeight(160)
        # Its columns scroll: the table must not make the dock (and so squeeze the canvas) wider.
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.doubleClicked.connect(self._on_double_click)

    def set_table(self, table: dict[str, np.ndarray] | None) -> None:
        self.columns.set_columns(table)
        header = self.horizontalHeader()
        self.sortByColumn(header.sortIndicatorSection(), header.sortIndicatorOrder())
        self.resizeColumnsToContents()

    def row_count(self) -> int:
        return self.columns.rowCount()

    def _on_double_click(self, index) -> None:
        self.nucleus_chosen.emit(self.columns.row(index.row()))
