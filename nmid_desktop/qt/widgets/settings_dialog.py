"""Settings: library, encoder, retrieval, predictor, endpoint and key, models, prices, budget, data bar.

Reading what the dialog offers (encoder manifests, where the key is, the user's
price overrides, the endpoint's model list) and saving (settings file, prices
file, key in the OS keyring) all run in workers; the dialog only edits values.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from nmid_desktop.core.config import Settings, save_settings
from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.core.paths import config_dir
from nmid_desktop.qt.context import AppContext
from nmid_desktop.qt.workers import JobHandle

PRICES_FILE = "prices.toml"


@dataclass(frozen=True)
class SettingsFacts:
    """What the dialog offers besides the settings themselves (read in a worker)."""

    encoders: tuple[tuple[str, str], ...]  # (name, description)
    key_source: str  # environment, keyring, file, none
    vision_price: tuple[float, float] | None  # USD per 1M input, output tokens
    image_price: float | None  # USD per image (default quality)


@dataclass(frozen=True)
class SettingsChange:
    """What Save writes (plain data for the worker)."""

    settings: Settings
    api_key: str | None = None  # None: leave the stored key alone; "": delete it
    vision_price: tuple[float, float] | None = None
    image_price: float | None = None
    prices_for: tuple[str, str] = ("", "")  # vision model, image model the prices belong to
    notes: list[str] = field(default_factory=list)


def read_facts(library: Path, settings: Settings) -> SettingsFacts:
    """Encoders on offer, where the key comes from, and current prices of the configured models."""
    from nmid_desktop.inference.loader import DEFAULT_ENCODER, resolve_encoder_name
    from nmid_desktop.lmm.cost import PriceTable
    from nmid_desktop.lmm.secrets import key_source
    from nmid_desktop.ml.manifest import library_models_dir, list_manifests

    offered = [(m.name, m.description) for m in list_manifests([library_models_dir(library)])]
    # The default (+d4 view averaging) and the library's encoder now are always on offer, so an
    # encoder replaced by a trained one can be chosen again.
    current = ""
    try:
        from nmid_desktop.core.store import open_library

        with open_library(library, create=False) as store:
            current = resolve_encoder_name(store, settings)
    except NmidError:
        current = ""
    for name, note in ((DEFAULT_ENCODER, "the default encoder"), (current, "this library's encoder now")):
        if name and all(name != n for n, _ in offered):
            offered.insert(0, (name, note))
    encoders = tuple(offered)
    try:
        prices = PriceTable.load()
    except ConfigError:
        prices = None
    chat = prices.chat(settings.lmm.vision_model) if prices else None
    image = prices.image(settings.lmm.image_model) if prices else None
    return SettingsFacts(
        encoders=encoders,
        key_source=key_source(),
        vision_price=(chat.input_per_1m, chat.output_per_1m) if chat else None,
        image_price=image.cost(1) if image else None,
    )


def write_change(change: SettingsChange) -> Settings:
    """Save settings, the key (keyring or private file) and price overrides; returns the settings."""
    import tomli_w

    from nmid_desktop.lmm.secrets import delete_api_key, store_api_key

    save_settings(change.settings)
    if change.api_key is not None:
        if change.api_key.strip():
            store_api_key(change.api_key)
        else:
            delete_api_key()
    vision_model, image_model = change.prices_for
    if change.vision_price is not None or change.image_price is not None:
        path = config_dir() / PRICES_FILE
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        if change.vision_price is not None and vision_model:
            entry = dict(data.setdefault("chat", {}).get(vision_model, {}))
            entry["input_per_1m"], entry["output_per_1m"] = change.vision_price
            data["chat"][vision_model] = entry
        if change.image_price is not None and image_model:
            entry = dict(data.setdefault("image", {}).get(image_model, {}))
            per_image = entry.get("per_image")
            per_image = dict(per_image) if isinstance(per_image, dict) else {}
            per_image["default"] = change.image_price
            entry["per_image"] = per_image
            data["image"][image_model] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{PRICES_FILE}.tmp")
        tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
        tmp.replace(path)
    return change.settings


class SettingsDialog(QDialog):
    """Edit the settings; Save writes them in a worker and then closes with ``accepted``."""

    saved = Signal(object)  # Settings

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self.setMinimumWidth(620)
        self.ctx = ctx
        self.original = copy.deepcopy(ctx.settings)
        self._saved: Settings | None = None
        self._facts: SettingsFacts | None = None
        s = self.original

        library_box = QGroupBox("Library and retrieval", self)
        form = QFormLayout(library_box)
        self.library_edit = QLineEdit(s.library or str(ctx.library), self)
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse_clicked)
        row = QHBoxLayout()
        row.addWidget(self.library_edit, 1)
        row.addWidget(browse)
        form.addRow("Library folder", row)
        self.encoder_combo = QComboBox(self)
        self.encoder_combo.addItem("Library default", "")
        if s.encoder:
            self.encoder_combo.addItem(s.encoder, s.encoder)
            self.encoder_combo.setCurrentIndex(1)
        form.addRow("Encoder", self.encoder_combo)
        self.k_spin = QSpinBox(self)
        self.k_spin.setRange(1, 50)
        self.k_spin.setValue(s.k)
        form.addRow("Demonstrations (K)", self.k_spin)
        self.strategy_combo = self._combo(("similarity", "random"), s.strategy,
                                          {"similarity": "Most similar (cosine)", "random": "Random (baseline)"})
        form.addRow("Sampling", self.strategy_combo)
        self.predictor_combo = self._combo(("local", "lmm", "both"), s.predictor,
                                           {"local": "Local only", "lmm": "Model (LMM)", "both": "Both, model preferred"})
        form.addRow("Predictor", self.predictor_combo)
        self.local_combo = self._combo(("knn", "logreg"), s.local_predictor,
                                       {"knn": "kNN vote of the demonstrations", "logreg": "Logistic-regression probe"})
        form.addRow("Local predictor", self.local_combo)
        self.crop_check = QCheckBox("Detect the SEM data bar and keep it out of the encoder and the model", self)
        self.crop_check.setChecked(s.crop_data_bar)
        form.addRow("Data bar", self.crop_check)

        endpoint_box = QGroupBox("Model endpoint (optional: everything works offline)", self)
        eform = QFormLayout(endpoint_box)
        self.base_url_edit = QLineEdit(s.lmm.base_url, self)
        self.base_url_edit.setPlaceholderText("https://api.openai.com/v1, or http://localhost:11434/v1 for Ollama")
        eform.addRow("Base URL", self.base_url_edit)
        self.key_edit = QLineEdit(self)
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("unchanged")
        self.key_clear = QCheckBox("Forget the stored key", self)
        krow = QHBoxLayout()
        krow.addWidget(self.key_edit, 1)
        krow.addWidget(self.key_clear)
        eform.addRow("API key", krow)
        self.key_note = QLabel("", self)
        self.key_note.setObjectName("dimLabel")
        eform.addRow("", self.key_note)
        self.vision_combo = self._model_combo(s.lmm.vision_model)
        self.text_combo = self._model_combo(s.lmm.text_model)
        self.image_combo = self._model_combo(s.lmm.image_model)
        self.models_button = QPushButton("List the endpoint's models", self)
        self.models_button.clicked.connect(self.fetch_models)
        self.models_note = QLabel("", self)
        self.models_note.setObjectName("dimLabel")
        self.models_note.setWordWrap(True)
        eform.addRow("Vision model", self.vision_combo)
        eform.addRow("Text model", self.text_combo)
        eform.addRow("Image model", self.image_combo)
        eform.addRow(self.models_button, self.models_note)

        cost_box = QGroupBox("Prices and budget (USD)", self)
        cform = QFormLayout(cost_box)
        self.price_in = self._money(0.0, 1000.0, 4)
        self.price_out = self._money(0.0, 1000.0, 4)
        prow = QHBoxLayout()
        prow.addWidget(QLabel("input", self))
        prow.addWidget(self.price_in)
        prow.addWidget(QLabel("output", self))
        prow.addWidget(self.price_out)
        prow.addWidget(QLabel("per 1M tokens", self))
        cform.addRow("Vision model", prow)
        self.price_image = self._money(0.0, 100.0, 4)
        cform.addRow("Image model, per image", self.price_image)
        self.budget_spin = self._money(0.0, 100000.0, 2)
        self.budget_spin.setValue(s.lmm.budget_usd)
        cform.addRow("Budget cap", self.budget_spin)
        self._prices_loaded = False

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self)
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        self.error = QLabel("", self)
        self.error.setStyleSheet("color: #f28b82")
        self.error.setWordWrap(True)
        layout = QVBoxLayout(self)
        for box in (library_box, endpoint_box, cost_box):
            layout.addWidget(box)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)

        library, settings = ctx.library, self.original
        handle = ctx.jobs.start("settings-load", lambda token: read_facts(library, settings))
        handle.finished.connect(self._on_facts)
        handle.failed.connect(lambda msg: self.error.setText(msg))

    # -- building helpers ---------------------------------------------------------------------------
    def _combo(self, values: tuple[str, ...], current: str, labels: dict[str, str]) -> QComboBox:
        combo = QComboBox(self)
        for value in values:
            combo.addItem(labels.get(value, value), value)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        return combo

    def _model_combo(self, current: str) -> QComboBox:
        combo = QComboBox(self)
        combo.setEditable(True)
        combo.addItem(current)
        combo.setCurrentText(current)
        return combo

    def _money(self, lo: float, hi: float, decimals: int) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setRange(lo, hi)
        spin.setDecimals(decimals)
        spin.setPrefix("$ ")
        return spin

    # -- workers ------------------------------------------------------------------------------------
    def _on_facts(self, facts: SettingsFacts) -> None:
        self._facts = facts
        current = self.encoder_combo.currentData()
        self.encoder_combo.clear()
        self.encoder_combo.addItem("Library default", "")
        for name, description in facts.encoders:
            self.encoder_combo.addItem(name, name)
            self.encoder_combo.setItemData(self.encoder_combo.count() - 1, description, Qt.ItemDataRole.ToolTipRole)
        if current and self.encoder_combo.findData(current) < 0:
            self.encoder_combo.addItem(f"{current} (not found)", current)
        self.encoder_combo.setCurrentIndex(max(0, self.encoder_combo.findData(current)))
        where = {
            "environment": "A key is set by the OPENAI_API_KEY variable (it wins over a stored one).",
            "keyring": "A key is stored in the OS keyring.",
            "file": "A key is stored in a private file (no OS keyring on this system).",
            "none": "No key stored (local servers such as Ollama need none).",
        }
        self.key_note.setText(where.get(facts.key_source, facts.key_source))
        if facts.vision_price is not None:
            self.price_in.setValue(facts.vision_price[0])
            self.price_out.setValue(facts.vision_price[1])
        if facts.image_price is not None:
            self.price_image.setValue(facts.image_price)
        self._prices_loaded = True
        self._loaded_prices = (self.price_in.value(), self.price_out.value(), self.price_image.value())

    def fetch_models(self) -> JobHandle:
        """List the endpoint's models (with the URL and key typed here) into the model boxes."""
        from nmid_desktop.workspace.model_tasks import list_models_job

        settings = self.settings_from_fields()
        key = self.key_edit.text().strip()
        self.models_note.setText("Asking the endpoint…")
        self.models_button.setEnabled(False)

        # A key typed but not yet saved is used for this listing only.
        handle = self.ctx.jobs.start("models", lambda token: list_models_job(settings, token, api_key=key or None))
        handle.finished.connect(self._on_models)
        handle.failed.connect(lambda msg: self.models_note.setText(f"<span style='color:#f28b82'>{msg}</span>"))
        handle.ended.connect(lambda: self.models_button.setEnabled(True))
        return handle

    def _on_models(self, models: list[tuple[str, str]]) -> None:
        names = {name for name, _ in models}
        for combo in (self.vision_combo, self.text_combo, self.image_combo):
            current = combo.currentText()
            combo.clear()
            for name, note in models:
                combo.addItem(f"{name}  ({note})" if note else name, name)
            index = combo.findData(current)
            if index >= 0:
                combo.setCurrentIndex(index)
            else:
                combo.setEditText(current)
        problems = []
        for label, combo in (("vision", self.vision_combo), ("text", self.text_combo), ("image", self.image_combo)):
            name = self._model_name(combo)
            note = next((n for m, n in models if m == name), None)
            if name not in names:
                problems.append(f"{label} model '{name}' is not offered by this endpoint")
            elif note == "retired":
                problems.append(f"{label} model '{name}' is retired")
        text = f"{len(models)} models listed."
        if problems:
            text += " <span style='color:#fcad70'>" + "; ".join(problems) + ": choose another.</span>"
        self.models_note.setText(text)

    @staticmethod
    def _model_name(combo: QComboBox) -> str:
        data = combo.currentData()
        text = combo.currentText().strip()
        if data and combo.itemText(combo.currentIndex()) == text:
            return str(data)
        return text.split("  (")[0].strip()

    # -- values -------------------------------------------------------------------------------------
    def settings_from_fields(self) -> Settings:
        """A Settings object from the fields (validated by Settings.validate on save)."""
        s = copy.deepcopy(self.original)
        library = self.library_edit.text().strip()
        s.library = library
        s.encoder = self.encoder_combo.currentData() or ""
        s.k = self.k_spin.value()
        s.strategy = self.strategy_combo.currentData()
        s.predictor = self.predictor_combo.currentData()
        s.local_predictor = self.local_combo.currentData()
        s.crop_data_bar = self.crop_check.isChecked()
        lmm = dataclasses.replace(
            s.lmm,
            base_url=self.base_url_edit.text().strip(),
            vision_model=self._model_name(self.vision_combo),
            text_model=self._model_name(self.text_combo),
            image_model=self._model_name(self.image_combo),
            budget_usd=float(self.budget_spin.value()),
        )
        s.lmm = lmm
        return s

    def change(self) -> SettingsChange:
        """What Save would write."""
        settings = self.settings_from_fields()
        if self.key_clear.isChecked():
            key: str | None = ""
        else:
            key = self.key_edit.text().strip() or None
        vision_price = image_price = None
        if self._prices_loaded:
            loaded = getattr(self, "_loaded_prices", (None, None, None))
            now = (self.price_in.value(), self.price_out.value(), self.price_image.value())
            if now[:2] != loaded[:2]:
                vision_price = (now[0], now[1])
            if now[2] != loaded[2]:
                image_price = now[2]
        return SettingsChange(
            settings=settings, api_key=key, vision_price=vision_price, image_price=image_price,
            prices_for=(settings.lmm.vision_model, settings.lmm.image_model),
        )

    def save(self) -> JobHandle | None:
        """Validate, then write everything in a worker; the dialog closes when it is written."""
        change = self.change()
        try:
            change.settings.validate()
        except ConfigError as exc:
            self.error.setText(str(exc))
            return None
        self.buttons.setEnabled(False)
        self.error.setText("")
        handle = self.ctx.jobs.start("settings-save", lambda token: write_change(change))
        handle.finished.connect(self._on_saved)
        handle.failed.connect(self._on_save_failed)
        return handle

    def _on_saved(self, settings: Settings) -> None:
        self._saved = settings
        self.saved.emit(settings)
        self.accept()

    def _on_save_failed(self, message: str) -> None:
        self.buttons.setEnabled(True)
        self.error.setText(message)

    def result_settings(self) -> Settings:
        """The settings as saved (the original ones when nothing was saved)."""
        return self._saved or self.original

    def _on_browse_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Library folder", self.library_edit.text())
        if folder:
            self.library_edit.setText(folder)
