"""The measurements table: a Qt view over numpy columns.

A Qt model reads cells on demand, so a table of a whole slide's nuclei costs no more to show than
one screen's (a QTableWidget would build an item per cell). Columns sort by clicking their header,
with numpy (a Qt sort proxy would call back into Python n·log n times); double-clicking a row
reports the nucleus so the widget can centre the view on it.

Headers are in words with their units ("area (µm²)"); the first column, "#", numbers the nuclei
1..n in the order of their ids (a whole-slide id reads like 131400: its tile and its number in
the tile), while the id itself is kept as data (hidden column ``label``, in every export). Only a
few columns show by default, so the table fits the panel without a sideways scroll; right-click
a header to show the others.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QSizePolicy, QTableView

#: Header text of each measurement column (two lines where that keeps columns narrow).
HEADERS = {
    "#": "#",
    "label": "id (stored)",
    "centroid_x_um": "centroid\nx (µm)",
    "centroid_y_um": "centroid\ny (µm)",
    "area_um2": "area\n(µm²)",
    "perimeter_um": "perimeter\n(µm)",
    "eccentricity": "eccen-\ntricity",
    "solidity": "solidity",
    "mean_haematoxylin_od": "haemat.\n(OD)",
}
#: Columns shown at first (the others: right-click a header).
DEFAULT_COLUMNS = ("#", "centroid_x_um", "centroid_y_um", "area_um2")


def header_text(name: str) -> str:
    """A column's header on one line, e.g. ``centroid x (µm)``."""
    return HEADERS.get(name, name).replace("-\n", "").replace("\n", " ")


class ColumnsModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._names: list[str] = []
        self._cols: list[np.ndarray] = []
        self._order: np.ndarray | None = None  # row i shows table row _order[i]

    def set_columns(self, table: dict[str, np.ndarray] | None) -> None:
        self.beginResetModel()
        table = dict(table or {})
        if table and "label" in table:  # rows numbered 1..n in the order of their ids
            order = np.argsort(np.asarray(table["label"]), kind="stable")
            table = {k: np.asarray(v)[order] for k, v in table.items()}
            table = {"#": np.arange(1, len(order) + 1, dtype=np.int64), **table}
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
            if np.issubdtype(type(v), np.integer):
                return str(int(v))
            v = float(v)
            return "" if not np.isfinite(v) else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
        if role == Qt.ItemDataRole.ToolTipRole and "label" in self._names:
            label = self._cols[self._names.index("label")][self._row(index.row())]
            return f"nucleus id {int(label)} (as in the exports)"
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or section >= len(self._names):
            return None
        name = self._names[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS.get(name, name)
        if role == Qt.ItemDataRole.ToolTipRole:
            return header_text(name) + " — click to sort, right-click to choose columns"
        return None

    def row(self, i: int) -> dict[str, float]:
        """The table row shown at position ``i``."""
        return {n: c[self._row(i)].item() for n, c in zip(self._names, self._cols)}

    def position_of(self, name: str, value) -> int | None:
        """The position shown of the first row whose column ``name`` is ``value``."""
        if name not in self._names or not self._cols:
            return None
        hits = np.flatnonzero(self._cols[self._names.index(name)] == value)
        if not len(hits):
            return None
        if self._order is None:
            return int(hits[0])
        return int(np.flatnonzero(self._order == hits[0])[0])


class MeasurementsView(QTableView):
    """Sortable read-only table; ``nucleus_chosen`` carries the double-clicked row as a dict
    (also sent by :meth:`step`, the next/previous nucleus keys)."""

    nucleus_chosen = Signal(dict)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.columns = ColumnsModel(self)
        self.setModel(self.columns)
        self.shown = set(DEFAULT_COLUMNS)
        header = self.horizontalHeader()
        header.setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.setSortingEnabled(True)
        # The shown columns share the table's width while they fit it; more columns than fit
        # (all eight, in a docked panel) keep their readable width and scroll sideways
        # (_fit_columns): stretched, they were cut to "olidit" and "0…".
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(36)
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(self._choose_columns)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.doubleClicked.connect(self._on_double_click)

    def set_table(self, table: dict[str, np.ndarray] | None) -> None:
        header = self.horizontalHeader()
        section, order = header.sortIndicatorSection(), header.sortIndicatorOrder()
        names = list(self.columns._names)
        sorted_by = names[section] if 0 <= section < len(names) else "#"
        self.columns.set_columns(table)
        names = self.columns._names
        for i, name in enumerate(names):
            self.setColumnHidden(i, name not in self.shown)
        if sorted_by in names:
            self.sortByColumn(names.index(sorted_by), order)
        self._fit_columns()

    def _fit_columns(self, resized: bool = False) -> None:
        """Shown columns that fit the table share its width (no sideways scroll); when they do
        not, each keeps the width of its header and values, and the table scrolls sideways.
        ``resized``: only the table's size changed; a table that scrolled already keeps the
        widths it has (a user may have dragged them)."""
        header = self.horizontalHeader()
        names = self.columns._names
        shown = [i for i in range(len(names)) if not self.isColumnHidden(i)]
        metrics = header.fontMetrics()

        def header_width(i):  # its widest line (headers break before the unit), and margins
            text = str(self.columns.headerData(i, Qt.Orientation.Horizontal) or "")
            return max(metrics.horizontalAdvance(line) for line in text.split("\n")) + 12

        need = {i: max(header_width(i), self.sizeHintForColumn(i)) for i in shown}
        if sum(need.values()) <= self.viewport().width():
            header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
            if names and names[0] == "#":  # as narrow as its numbers; the others share the rest
                header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
            self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            return
        scrolled = bool(shown) and (
            header.sectionResizeMode(shown[0]) == QHeaderView.ResizeMode.Interactive
        )
        if resized and scrolled:
            return
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for i, width in need.items():
            header.resizeSection(i, width)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit_columns(resized=True)

    def shown_headers(self) -> list[str]:
        """The headers of the columns shown, on one line each."""
        return [
            header_text(n) for i, n in enumerate(self.columns._names) if not self.isColumnHidden(i)
        ]

    def _choose_columns(self, pos) -> None:
        menu = QMenu(self)
        for i, name in enumerate(self.columns._names):
            action = menu.addAction(header_text(name))
            action.setCheckable(True)
            action.setChecked(not self.isColumnHidden(i))
            action.toggled.connect(lambda on, i=i, name=name: self.show_column(name, on))
        menu.popup(self.horizontalHeader().mapToGlobal(pos))

    def show_column(self, name: str, on: bool = True) -> None:
        (self.shown.add if on else self.shown.discard)(name)
        if name in self.columns._names:
            self.setColumnHidden(self.columns._names.index(name), not on)
            self._fit_columns()

    def row_count(self) -> int:
        return self.columns.rowCount()

    def step(self, delta: int) -> dict | None:
        """Select the next (``delta=1``) or previous row and report its nucleus."""
        n = self.row_count()
        if not n:
            return None
        current = self.currentIndex().row() if self.currentIndex().isValid() else -1
        i = min(n - 1, max(0, current + delta)) if current >= 0 else (0 if delta > 0 else n - 1)
        self.selectRow(i)
        self.scrollTo(self.model().index(i, 0))
        row = self.columns.row(i)
        self.nucleus_chosen.emit(row)
        return row

    def _on_double_click(self, index) -> None:
        self.nucleus_chosen.emit(self.columns.row(index.row()))
