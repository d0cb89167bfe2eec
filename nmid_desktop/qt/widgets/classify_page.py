"""The Classify page: the image on the left; demonstrations, description, synthetic and the card on the right."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.qt.imaging import format_length
from nmid_desktop.qt.widgets.contrast import ContrastControl
from nmid_desktop.qt.widgets.demonstrations import DemonstrationsGrid
from nmid_desktop.qt.widgets.image_viewer import ImageViewer
from nmid_desktop.qt.widgets.prediction_card import PredictionCard
from nmid_desktop.workspace.display import ImagePayload


class ClassifyPage(QWidget):
    """Layout only: the window wires the widgets to jobs.

    Attributes:
        viewer: The image.
        contrast: Display levels.
        demos: The demonstrations grid.
        card: The prediction card and label controls.
        side_tabs: Demonstrations | Description | Synthetic.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("classifyPage")
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(8, 8, 4, 8)
        left_layout.setSpacing(6)
        head = QHBoxLayout()
        self.title = QLabel("No image", left)
        self.title.setObjectName("headline")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        head.addWidget(self.title, 1)
        self.queue_label = QLabel("", left)
        self.queue_label.setObjectName("dimLabel")
        head.addWidget(self.queue_label)
        self.prev_button = QToolButton(left)
        self.prev_button.setText("◀")
        self.prev_button.setToolTip("Previous image (Page Up)")
        self.next_button = QToolButton(left)
        self.next_button.setText("▶")
        self.next_button.setToolTip("Next image (Page Down)")
        for button in (self.prev_button, self.next_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            head.addWidget(button)
        left_layout.addLayout(head)
        self.viewer = ImageViewer(left)
        # A click on the image takes the keyboard from the class box (digits, Enter, Ctrl+Z label again).
        self.viewer.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        left_layout.addWidget(self.viewer, 1)
        tools = QHBoxLayout()
        self.fit_button = QToolButton(left)
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Fit the image to the view (0 or double-click)")
        self.one_button = QToolButton(left)
        self.one_button.setText("1:1")
        self.one_button.setToolTip("One image pixel per screen pixel")
        self.crop_button = QToolButton(left)
        self.crop_button.setText("Crop box")
        self.crop_button.setCheckable(True)
        self.crop_button.setChecked(True)
        self.crop_button.setToolTip("Show the data bar crop: what the encoder and the model see")
        for button in (self.fit_button, self.one_button, self.crop_button):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            tools.addWidget(button)
        self.zoom_label = QLabel("", left)
        self.zoom_label.setObjectName("dimLabel")
        self.zoom_label.setMinimumWidth(54)
        tools.addWidget(self.zoom_label)
        self.contrast = ContrastControl(left)
        tools.addWidget(self.contrast, 1)
        left_layout.addLayout(tools)
        self.info = QLabel("", left)
        self.info.setObjectName("dimLabel")
        self.info.setWordWrap(True)
        left_layout.addWidget(self.info)

        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(4, 8, 8, 8)
        right_layout.setSpacing(8)
        self.side_tabs = QTabWidget(right)
        self.side_tabs.setDocumentMode(True)
        self.demos = DemonstrationsGrid(self.side_tabs)
        self.side_tabs.addTab(self.demos, "Demonstrations")
        right_layout.addWidget(self.side_tabs, 1)
        self.card = PredictionCard(right)
        right_layout.addWidget(self.card)

        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 5)
        splitter.setStretchFactor(1, 4)
        splitter.setHandleWidth(1)
        splitter.setChildrenCollapsible(False)
        self.splitter = splitter
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self.fit_button.clicked.connect(self.viewer.fit)
        self.one_button.clicked.connect(lambda: self.viewer.set_zoom(1.0))
        self.crop_button.toggled.connect(self.viewer.set_show_crop)
        self.viewer.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z:.0%}"))
        self.viewer.cursor_moved.connect(self._on_viewer_cursor_moved)
        self._payload: ImagePayload | None = None
        self._base_info = ""

    def add_side_tab(self, widget: QWidget, title: str) -> None:
        """Add a tab beside the demonstrations (description, synthetic)."""
        self.side_tabs.addTab(widget, title)

    def show_payload(self, payload: ImagePayload, title: str) -> None:
        """Show a freshly loaded image and its facts."""
        self._payload = payload
        self.viewer.set_image(payload.view8, payload.crop_box, payload.pixel_size_m)
        self.contrast.set_histogram(payload.histogram, payload.dtype)
        self.title.setText(title)
        height, width = payload.view8.shape
        facts = [f"{width} × {height} px", payload.dtype]
        if payload.n_pages > 1:
            facts.append(f"page {payload.page + 1} of {payload.n_pages}")
        if payload.pixel_size_m:
            facts.append(f"pixel {format_length(payload.pixel_size_m)}")
        if payload.crop_box is not None and tuple(payload.crop_box) != (0, 0, width, height):
            x0, y0, x1, y1 = payload.crop_box
            facts.append(f"data bar cropped: {height - (y1 - y0)} rows")
        for key in ("instrument", "hv", "magnification"):
            if key in payload.metadata:
                facts.append(f"{key} {payload.metadata[key]}")
        self._base_info = " · ".join(facts)
        self.info.setText(self._base_info)

    def clear(self) -> None:
        """Back to the empty state."""
        self._payload = None
        self.viewer.clear()
        self.contrast.set_histogram(None)
        self.title.setText("No image")
        self.info.setText("")
        self.queue_label.setText("")

    @property
    def payload(self) -> ImagePayload | None:
        """The image shown now."""
        return self._payload

    def _on_viewer_cursor_moved(self, x: int, y: int) -> None:
        payload = self._payload
        if payload is None or x < 0:
            self.info.setText(self._base_info)
            return
        if payload.raw_grey is not None:
            value = payload.raw_grey[y, x]
            shown = f"{float(value):.6g}"
        else:
            shown = str(int(payload.view8[y, x]))
        self.info.setText(f"x {x}, y {y}: {shown}   ·   {self._base_info}")
