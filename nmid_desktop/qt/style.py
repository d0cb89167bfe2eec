"""The window's look: Qt's Fusion style with a dark palette (micrographs read best on dark grey)."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

BACKGROUND = "#202124"
SURFACE = "#292a2d"
RAISED = "#303134"
BORDER = "#3c4043"
TEXT = "#e8eaed"
DIM = "#9aa0a6"
ACCENT = "#8ab4f8"

STYLE_SHEET = f"""
QMainWindow, QDialog {{ background: {BACKGROUND}; }}
QToolBar {{ background: {SURFACE}; border: none; border-bottom: 1px solid {BORDER}; spacing: 4px; padding: 3px; }}
QToolBar QToolButton {{ padding: 4px 8px; border-radius: 4px; }}
QToolBar QToolButton:hover {{ background: {RAISED}; }}
QStatusBar {{ background: {SURFACE}; border-top: 1px solid {BORDER}; color: {DIM}; }}
QStatusBar QLabel {{ color: {DIM}; padding: 0 6px; }}
QTabWidget::pane {{ border: none; border-top: 1px solid {BORDER}; }}
QTabBar::tab {{ background: transparent; color: {DIM}; padding: 6px 16px; border: none;
    border-bottom: 2px solid transparent; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom: 2px solid {ACCENT}; }}
QTabBar::tab:hover {{ color: {TEXT}; }}
QFrame#predictionCard, QFrame#demoTile, QFrame#panel {{ background: {SURFACE}; border: 1px solid {BORDER};
    border-radius: 8px; }}
QFrame#demoTile:hover {{ border-color: {ACCENT}; }}
QLabel#demoThumb {{ background: #17181a; border-radius: 4px; }}
QLabel#sectionTitle {{ color: {DIM}; font-size: 8pt; font-weight: bold; letter-spacing: 1px; }}
QLabel#headline {{ font-size: 12pt; }}
QLabel#dimLabel {{ color: {DIM}; }}
QLabel#placeholder {{ color: {DIM}; font-size: 10pt; padding: 12px; }}
QLabel#rationale {{ color: #d2d5d9; font-style: italic; }}
QLabel#pill {{ border-radius: 9px; padding: 1px 8px; }}
QLabel#pill[state="agree"] {{ background: #1e3a2b; color: #81c995; }}
QLabel#pill[state="disagree"] {{ background: #4a2a10; color: #fcad70; }}
QFrame#separator {{ color: {BORDER}; }}
QPushButton {{ background: {RAISED}; border: 1px solid {BORDER}; border-radius: 5px; padding: 5px 12px; color: {TEXT}; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:disabled {{ color: #5f6368; }}
QPushButton#primary {{ background: #1a73e8; border-color: #1a73e8; color: white; font-weight: bold; }}
QPushButton#primary:disabled {{ background: {RAISED}; border-color: {BORDER}; color: #5f6368; }}
QPushButton#danger {{ background: #5c2b29; border-color: #8c3a36; }}
QPushButton#classChip {{ padding: 2px 8px; border-radius: 4px; text-align: left; }}
QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox {{ background: {BACKGROUND}; border: 1px solid {BORDER};
    border-radius: 4px; padding: 4px 6px; color: {TEXT}; }}
QLineEdit:focus, QSpinBox:focus, QDoubleSpinBox:focus, QComboBox:focus {{ border-color: {ACCENT}; }}
QListView, QTableView, QTreeView {{ background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 4px;
    alternate-background-color: {SURFACE}; }}
QListView#libraryGrid::item:selected {{ background: #174ea6; border-radius: 4px; }}
QHeaderView::section {{ background: {SURFACE}; color: {DIM}; border: none; border-bottom: 1px solid {BORDER};
    padding: 4px; }}
QProgressBar {{ background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 4px; text-align: center;
    color: {TEXT}; height: 16px; }}
QProgressBar::chunk {{ background: #1a73e8; border-radius: 3px; }}
QScrollArea#demonstrations, QWidget#demoBody {{ background: {BACKGROUND}; }}
QGroupBox {{ border: 1px solid {BORDER}; border-radius: 6px; margin-top: 14px; padding-top: 6px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: {DIM}; }}
QSplitter::handle {{ background: {BORDER}; }}
QToolTip {{ background: {RAISED}; color: {TEXT}; border: 1px solid {BORDER}; }}
"""


def apply_style(app: QApplication) -> None:
    """Fusion, a dark palette and the style sheet."""
    app.setStyle("Fusion")
    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: BACKGROUND,
        QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: BACKGROUND,
        QPalette.ColorRole.AlternateBase: SURFACE,
        QPalette.ColorRole.ToolTipBase: RAISED,
        QPalette.ColorRole.ToolTipText: TEXT,
        QPalette.ColorRole.Text: TEXT,
        QPalette.ColorRole.Button: RAISED,
        QPalette.ColorRole.ButtonText: TEXT,
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: "#1a73e8",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: ACCENT,
        QPalette.ColorRole.PlaceholderText: "#80868b",
    }
    for role, color in roles.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#5f6368"))
    app.setPalette(palette)
    app.setStyleSheet(STYLE_SHEET)
