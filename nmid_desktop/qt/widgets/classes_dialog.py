"""Rename, merge, delete and key classes from the window, as ``nmid classes`` does."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.store import CLASS_KEYS
from nmid_desktop.qt.context import ENGINE_LANE, AppContext
from nmid_desktop.qt.workers import JobHandle
from nmid_desktop.workspace.engine import Engine, LibraryStatus

NameRole = Qt.ItemDataRole.UserRole + 1
KeyRole = Qt.ItemDataRole.UserRole + 2


class ClassesDialog(QDialog):
    """The taxonomy with counts; the change runs on the engine lane, then every view refreshes."""

    changed = Signal(str)  # what was done, in words

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("classesDialog")
        self.setWindowTitle("Classes")
        self.setMinimumWidth(440)
        self.ctx = ctx
        self.handle: JobHandle | None = None
        self.list = QListWidget(self)
        self.name_edit = QLineEdit(self)
        self.name_edit.setPlaceholderText("New name, or the class to merge into")
        self.rename_button = QPushButton("Rename", self)
        self.merge_button = QPushButton("Merge into", self)
        self.delete_button = QPushButton("Delete", self)
        self.delete_button.setToolTip("Delete a class no image carries")
        # One button per number key: a click gives the selected class that key (its holder
        # takes the selected class's old one); "none" removes the key.
        keys_row = QHBoxLayout()
        keys_row.addWidget(QLabel("Key:", self))
        self.key_buttons: dict[int | None, QPushButton] = {}
        for key in (*CLASS_KEYS, None):
            button = QPushButton(str(key) if key is not None else "none", self)
            button.setObjectName("classKeyButton")
            button.setCheckable(True)
            button.setAutoExclusive(False)
            button.setToolTip(
                f"Label with this class by pressing {key} (swaps with the class that has it)"
                if key is not None else "No number key for this class (still selectable by typing)"
            )
            button.clicked.connect(lambda _=False, k=key: self._change_key(k))
            keys_row.addWidget(button)
            self.key_buttons[key] = button
        keys_row.addStretch(1)
        self.message = QLabel("Select a class.", self)
        self.message.setWordWrap(True)
        close = QPushButton("Close", self)
        close.clicked.connect(self.accept)
        row = QHBoxLayout()
        for button in (self.rename_button, self.merge_button, self.delete_button):
            row.addWidget(button)
        row.addStretch(1)
        row.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.name_edit)
        layout.addLayout(row)
        layout.addLayout(keys_row)
        layout.addWidget(self.message)
        self.rename_button.clicked.connect(lambda: self._change("rename"))
        self.merge_button.clicked.connect(lambda: self._change("merge"))
        self.delete_button.clicked.connect(lambda: self._change("delete"))
        self.list.currentItemChanged.connect(self._update_buttons)
        self.name_edit.textChanged.connect(self._update_buttons)
        ctx.status_changed.connect(self._on_ctx_status_changed)
        if ctx.status is not None:
            self._on_ctx_status_changed(ctx.status)

    def _on_ctx_status_changed(self, status: LibraryStatus) -> None:
        current = self.selected()
        self.list.clear()
        for info in status.classes:
            key = f"   · key {info.key}" if info.key is not None else ""
            item = QListWidgetItem(f"{info.name}   ({info.count} image{'s' if info.count != 1 else ''}){key}")
            item.setData(NameRole, info.name)
            item.setData(KeyRole, info.key)
            item.setData(Qt.ItemDataRole.UserRole, info.count)
            self.list.addItem(item)
            if info.name == current:
                self.list.setCurrentItem(item)
        self._update_buttons()

    def selected(self) -> str | None:
        """The class selected in the list."""
        item = self.list.currentItem()
        return None if item is None else str(item.data(NameRole))

    def _update_buttons(self, *args: object) -> None:
        name, other = self.selected(), self.name_edit.text().strip()
        busy = self.handle is not None and self.handle.running
        item = self.list.currentItem()
        empty = item is not None and int(item.data(Qt.ItemDataRole.UserRole)) == 0
        self.rename_button.setEnabled(not busy and name is not None and bool(other) and other != name)
        self.merge_button.setEnabled(not busy and name is not None and other in self.ctx.class_names and other != name)
        self.delete_button.setEnabled(not busy and name is not None and empty)
        current = None if item is None else item.data(KeyRole)
        for key, button in self.key_buttons.items():
            button.setEnabled(not busy and name is not None)
            button.setChecked(name is not None and key == current)

    def selected_key(self) -> int | None:
        """The number key of the class selected in the list (None: no key, or nothing selected)."""
        item = self.list.currentItem()
        return None if item is None or item.data(KeyRole) is None else int(item.data(KeyRole))

    def _change_key(self, key: int | None) -> JobHandle | None:
        name = self.selected()
        if name is None:
            return None
        if key == self.selected_key():
            self._update_buttons()  # a click on the key it has: nothing to do (keep it checked)
            return None

        def factory(eng: Engine, token: object) -> str:
            return eng.set_class_key(name, key)

        return self._start(factory)

    def _change(self, action: str) -> JobHandle | None:
        name, other = self.selected(), self.name_edit.text().strip()
        if name is None:
            return None

        def factory(eng: Engine, token: object) -> str:
            return eng.change_class(action, name, other, actor="")

        return self._start(factory)

    def _start(self, factory: Callable[[Engine, object], str]) -> JobHandle:
        self.message.setText("Working…")
        handle = self.ctx.jobs.start("classes", factory, lane=ENGINE_LANE)
        handle.finished.connect(self._on_finished)
        handle.failed.connect(lambda msg: self.message.setText(f"Not changed: {msg}"))
        handle.ended.connect(self._update_buttons)
        self.handle = handle
        self._update_buttons()
        return handle

    def _on_finished(self, done: str) -> None:
        self.message.setText(done + ".")
        self.name_edit.clear()
        self.ctx.labels_changed.emit()
        self.ctx.status_refresh_requested.emit()
        self.changed.emit(done)
