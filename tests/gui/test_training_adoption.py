"""A trained encoder replaces the current one only after a better evaluation and the user's yes;
the previous encoder can always be chosen again in Settings."""

from __future__ import annotations

from pathlib import Path

from gui_helpers import TIMEOUT_MS
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from nmid_desktop.core.store import open_library
from nmid_desktop.ml.encoders import DEFAULT_ENCODER, LIBRARY_ENCODER_META


def _meta_encoder(library: Path) -> object:
    with open_library(library, create=False) as store:
        return store.get_meta(LIBRARY_ENCODER_META)


def test_a_worse_trained_encoder_is_not_adopted_and_the_old_one_stays_choosable(make_window, library: Path, qtbot):
    window = make_window(library)
    encoder_before = window.ctx.status.encoder
    panel = window.training
    bar = window.tabs.tabBar()
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(window.tabs.indexOf(panel)).center())
    panel.epochs.setValue(1)
    panel.batch.setValue(8)
    panel.device = "cpu"
    panel.max_images = 30
    assert panel.use_check.isChecked()  # compare when done: on by default
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.comparison is not None or "Not evaluated" in panel.verdict.text(), timeout=600_000)
    comparison = panel.comparison
    assert comparison is not None, panel.verdict.text()
    text = panel.verdict.text()
    assert f"{comparison.current_top1:.1%}" in text and f"{comparison.trained_top1:.1%}" in text
    # One epoch of a ViT from scratch on 30 images is no match for ImageNet features.
    assert comparison.trained_top1 < comparison.current_top1
    assert "not better" in text and not panel.use_button.isEnabled()
    assert _meta_encoder(library) is None  # the library still uses its encoder
    qtbot.waitUntil(lambda: window.ctx.status.encoder == encoder_before, timeout=TIMEOUT_MS)

    # A library that adopted the trained one (as `nmid train --use` does) can go back in Settings.
    with open_library(library, create=False) as store:
        store.set_meta(LIBRARY_ENCODER_META, comparison.trained)
    from nmid_desktop.qt.widgets.settings_dialog import SettingsDialog

    qtbot.mouseClick(window.toolbar.widgetForAction(window.settings_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.findChild(SettingsDialog) is not None, timeout=TIMEOUT_MS)
    dialog = window.findChild(SettingsDialog)
    combo = dialog.encoder_combo
    qtbot.waitUntil(lambda: combo.findData(DEFAULT_ENCODER) >= 0 and combo.findData(comparison.trained) >= 0,
                    timeout=TIMEOUT_MS)
    combo.setCurrentIndex(combo.findData(DEFAULT_ENCODER))
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Save), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: _meta_encoder(library) == DEFAULT_ENCODER, timeout=TIMEOUT_MS)
