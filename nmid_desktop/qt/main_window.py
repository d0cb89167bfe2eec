"""The main window: drop, look, compare with demonstrations, accept or correct, and move on.

The window only arranges widgets and starts jobs; every disk, model and network
operation runs in a worker (:mod:`nmid_desktop.qt.workers`). The ``engine`` lane
owns the library store and the classifier (:mod:`nmid_desktop.workspace.engine`) and runs
queries and label writes in the order they were asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, QMimeData, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QKeySequence,
    QShortcut,
)
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMessageBox, QTabWidget, QToolBar, QWidget

from nmid_desktop.core.config import Settings
from nmid_desktop.core.errors import LabelConflict, UndoConflict
from nmid_desktop.core.images import SUPPORTED_SUFFIXES
from nmid_desktop.core.jobs import Progress, mark_gui_thread
from nmid_desktop.qt.context import ENGINE_LANE, AppContext
from nmid_desktop.qt.widgets.classify_page import ClassifyPage
from nmid_desktop.qt.widgets.status_bar import StatusBar
from nmid_desktop.qt.workers import JobHandle, JobManager, LibraryWatcher, freeze_heap
from nmid_desktop.workspace.display import ImagePayload, ThumbnailCache, rescale
from nmid_desktop.workspace.engine import (
    Engine,
    EngineRef,
    LabelChange,
    LabelRefused,
    LibraryStatus,
    OpenResult,
    QueryResult,
    build_demo,
    classifier_changed,
    open_engine,
    refused,
)

log = logging.getLogger(__name__)

JOB_WORDS = {
    "open": "Opening images", "query": "Finding similar images", "prepare": "Preparing the classifier",
    "rebuild": "Rebuilding the index", "label": "Saving a label", "lmm": "Asking the model",
    "status": "Reading the library", "settings": "Applying the settings", "reload": "Loading the new encoder",
    "batch": "The batch", "training": "Training", "export": "The export", "describe": "Describing",
    "synthesize": "Generating images", "models": "Listing models", "classes": "Changing classes",
    "endpoint": "Checking the endpoint", "demo": "Building the demo library",
    "watch": "Following colleagues' label changes",
}

# Closing waits this long for workers to reach a cancel point, then abandons the stuck
# ones (a request to a server that does not answer): the window must close within 2 s.
SHUTDOWN_WAIT_S = 1.5


def local_files(mime: QMimeData) -> list[Path]:
    """Local file and folder paths carried by a drop or the clipboard (URLs of other schemes are left out)."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile() and url.toLocalFile()]


def mime_for_paths(paths: list[Path]) -> QMimeData:
    """A QMimeData holding file URLs, as a file manager's drag does."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(Path(p).resolve())) for p in paths])
    return mime


class MainWindow(QMainWindow):
    """nmid-desktop's window. ``library`` is the library folder; ``settings`` the user's settings.

    Args:
        library: The library folder (created when missing).
        settings: Loaded settings.
        demo: Fill an empty library with the built-in demo images first.
        jobs: A job manager to use; one is made otherwise.
        encoder: A loaded encoder to share (benchmarks and tests load it once); by default
            the library's encoder is loaded in the background.
    """

    def __init__(
        self,
        library: Path | str,
        settings: Settings,
        *,
        demo: bool = False,
        jobs: JobManager | None = None,
        encoder: object = None,
    ) -> None:
        super().__init__()
        mark_gui_thread()  # from now on embedding, searching or training here raises
        self._shared_encoder = encoder
        self.setObjectName("mainWindow")
        self.setWindowTitle("nmid-desktop")
        self.setAcceptDrops(True)
        self.jobs = jobs or JobManager(self)
        self.ctx = AppContext(library, settings, self.jobs, ThumbnailCache())
        self._engine_ref = EngineRef()  # filled in the engine thread; off-lane jobs wait for it
        self._closing = False
        self.shutdown_wait_s = SHUTDOWN_WAIT_S
        self.queue: list[int] = []
        self.position = -1
        self.current: QueryResult | None = None
        self.current_id: int | None = None
        self._label_seq = 0
        self._last_drop_t: float | None = None
        self.last_drop_latency_s: float | None = None
        self.last_error: str | None = None  # the latest message shown to the user (tests read it)
        self.last_conflict: str | None = None  # the latest refused change (a colleague's label won)

        self.page = ClassifyPage(self)
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.page, "Classify")
        self.setCentralWidget(self.tabs)
        self.status = StatusBar(self.jobs, self)
        self.setStatusBar(self.status)
        from nmid_desktop.qt.log_bridge import LogBridge
        from nmid_desktop.workspace.log_file import install_log_file

        log_path = install_log_file()
        self.log_path = str(log_path) if log_path is not None else ""
        self.status.log_path = self.log_path
        self._log_bridge = LogBridge(self)
        self._log_bridge.warned.connect(self.status.add_warning)
        self.jobs.job_ended.connect(self._on_jobs_job_ended)
        self._build_actions()
        self._build_panels()
        self._connect()
        self._contrast_timer = QTimer(self)
        self._contrast_timer.setSingleShot(True)
        self._contrast_timer.setInterval(40)
        self._contrast_timer.timeout.connect(self._on_contrast_timer_timeout)
        self._restore_geometry()
        self._build_watcher()
        self._start_engine(demo)

    # -- construction ------------------------------------------------------------------------------
    def _build_actions(self) -> None:
        bar = QToolBar("Main", self)
        bar.setObjectName("mainToolBar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(bar)
        self.toolbar = bar

        def action(text: str, slot, shortcut=None, tip: str = "") -> QAction:  # noqa: ANN001
            act = QAction(text, self)
            if shortcut is not None:
                if isinstance(shortcut, list):
                    act.setShortcuts(shortcut)
                else:
                    act.setShortcut(shortcut)
            act.setToolTip(tip or text)
            act.triggered.connect(slot)
            self.addAction(act)
            return act

        self.open_action = action("Open…", self._on_open_triggered, QKeySequence.StandardKey.Open,
                                  "Open images or a folder (Ctrl+O)")
        self.open_folder_action = action("Open folder…", self._on_open_folder_triggered, None,
                                         "Import a folder (sub-folders named by class become labels)")
        self.paste_action = action("Paste", self._on_paste_triggered, QKeySequence.StandardKey.Paste,
                                   "Paste image files or an image from the clipboard (Ctrl+V)")
        self.undo_action = action("Undo", self.undo, [QKeySequence(QKeySequence.StandardKey.Undo)],
                                  "Undo the last label change (Ctrl+Z)")
        redo_keys = [QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")]
        self.redo_action = action("Redo", self.redo, redo_keys, "Redo (Ctrl+Shift+Z)")
        self.prev_action = action("Previous", self.previous_image, QKeySequence(Qt.Key.Key_PageUp))
        self.next_action = action("Next", self.next_image, QKeySequence(Qt.Key.Key_PageDown))
        self.ask_action = action("Ask model", self.ask_model, QKeySequence("Ctrl+M"),
                                 "Ask the configured model about this image (Ctrl+M)")
        self.rebuild_action = action("Rebuild index", self.rebuild_index, None,
                                     "Rebuild the nearest-neighbour index from the current labels")
        self.export_action = action("Export…", self._on_export_triggered, QKeySequence("Ctrl+E"),
                                    "Export the curated dataset (Ctrl+E)")
        self.classes_action = action("Classes…", self._on_classes_triggered, None,
                                     "Rename, merge or delete classes")
        self.settings_action = action("Settings…", self._on_settings_triggered, QKeySequence.StandardKey.Preferences,
                                      "Library, encoder, retrieval, endpoint and models")
        self.label_errors_action = action("Likely mislabelled…", self.find_label_errors, None,
                                          "Find labels confident learning flags as likely wrong, and review them")
        for act in (self.open_action, self.open_folder_action, self.paste_action):
            bar.addAction(act)
        bar.addSeparator()
        for act in (self.undo_action, self.redo_action):
            bar.addAction(act)
        bar.addSeparator()
        for act in (self.prev_action, self.next_action, self.ask_action):
            bar.addAction(act)
        bar.addSeparator()
        for act in (self.rebuild_action, self.classes_action, self.label_errors_action, self.export_action,
                    self.settings_action):
            bar.addAction(act)

        # Enter and 1-9 are shortcuts, not actions: a focused text box keeps digits (it claims
        # them first), and Enter in the class box means "this class", handled in _on_enter.
        self._enter_shortcuts = []
        for key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.activated.connect(self._on_enter)
            self._enter_shortcuts.append(shortcut)
        self._digit_shortcuts = []
        for number in range(1, 10):
            shortcut = QShortcut(QKeySequence(str(number)), self)
            shortcut.activated.connect(lambda n=number: self._on_number_key(n))
            self._digit_shortcuts.append(shortcut)
        # They label the image on the Classify page only: on another tab Enter belongs to its fields
        # (the Batch tab's folder field starts the batch with it).
        self.tabs.currentChanged.connect(self._on_tabs_current_changed)

    def _on_tabs_current_changed(self, _index: int) -> None:
        on_page = self.tabs.currentWidget() is self.page
        for shortcut in self._enter_shortcuts + self._digit_shortcuts:
            shortcut.setEnabled(on_page)

    def _build_panels(self) -> None:
        """Pages and side tabs that need the context (imported here to keep this module small)."""
        from nmid_desktop.qt.widgets.description_tab import DescriptionTab
        from nmid_desktop.qt.widgets.library_browser import LibraryBrowser
        from nmid_desktop.qt.widgets.synthetic_tab import SyntheticTab

        self.description = DescriptionTab(self.ctx, self)
        self.synthetic = SyntheticTab(self.ctx, self)
        self.page.add_side_tab(self.description, "Description")
        self.page.add_side_tab(self.synthetic, "Synthetic")
        from nmid_desktop.qt.widgets.batch_panel import BatchPanel
        from nmid_desktop.qt.widgets.training_panel import TrainingPanel

        self.browser = LibraryBrowser(self.ctx, self)
        self.tabs.addTab(self.browser, "Library")
        self.batch = BatchPanel(self.ctx, self, encoder=self._shared_encoder)
        self.tabs.addTab(self.batch, "Batch")
        self.training = TrainingPanel(self.ctx, self)
        self.tabs.addTab(self.training, "Training")
        self.training.trained.connect(self._on_training_trained)
        self.training.encoder_chosen.connect(self._on_training_encoder_chosen)
        self.extra_panels: dict[str, QWidget] = {"description": self.description, "synthetic": self.synthetic}

    def _connect(self) -> None:
        page = self.page
        page.prev_button.clicked.connect(self.previous_image)
        page.next_button.clicked.connect(self.next_image)
        page.card.accept_requested.connect(self.accept)
        page.card.label_chosen.connect(self.set_label)
        page.card.model_requested.connect(self.ask_model)
        page.card.model_cancel_requested.connect(self._on_card_model_cancel_requested)
        page.demos.label_clicked.connect(self.set_label)
        page.demos.image_activated.connect(self.show_image)
        page.contrast.levels_changed.connect(self._on_contrast_levels_changed)
        self.ctx.open_image_requested.connect(self._on_ctx_open_image_requested)
        self.ctx.open_queue_requested.connect(self._on_ctx_open_queue_requested)
        self.ctx.status_changed.connect(self._on_ctx_status_changed)
        self.ctx.message.connect(lambda text: self.status.show_message(text, 8000))
        self.ctx.endpoint_changed.connect(self._on_ctx_endpoint_changed)
        self.ctx.status_refresh_requested.connect(self.refresh_status)

    # -- engine ----------------------------------------------------------------------------------
    def _start_engine(self, demo: bool) -> None:
        library, settings, thumbs = self.ctx.library, self.ctx.settings, self.ctx.thumbnails
        encoder = self._shared_encoder
        ref = self._engine_ref = EngineRef()

        def make() -> Engine:
            try:
                engine = open_engine(library, settings, thumbs, encoder)
            except BaseException as exc:
                ref.fail(exc)
                raise
            ref.set(engine)
            return engine

        self.jobs.add_lane(ENGINE_LANE, make, Engine.close)
        self.refresh_status()  # the first lane task: opens the library
        if demo:
            handle = self.jobs.start("demo", lambda eng, token: build_demo(eng, token), lane=ENGINE_LANE)
            handle.finished.connect(lambda _: (self.prepare_classifier(), self.refresh_status(),
                                               self.ctx.labels_changed.emit()))
            handle.failed.connect(lambda msg: self._error("Could not build the demo library", msg))
        else:
            self.prepare_classifier()
        self.check_endpoint()
        self._start_watcher()

    # -- colleagues' changes and the server's state (a shared library) ---------------------------------
    def _build_watcher(self) -> None:
        self.watcher = LibraryWatcher(self.jobs, self)
        self.last_colleague: str | None = None  # the latest status line about a colleague's change
        self.watcher.changed.connect(self._on_watcher_changed)
        self.watcher.away.connect(self._on_watcher_away)
        self.watcher.back.connect(self._on_watcher_back)

    def _start_watcher(self) -> None:
        """Follow label changes made elsewhere (replaces the previous library's watcher)."""
        from nmid_desktop.workspace.watch import watch_library

        ref = self._engine_ref
        self.status.set_server_away(False)

        def factory(token):  # noqa: ANN001, ANN202
            engine = ref.wait(token)
            return watch_library(engine.store, token, take=engine.take_changes)

        self.watcher.start(factory)

    @property
    def server_away(self) -> bool:
        """Whether the shared library's server is away (the watcher's last word)."""
        return self.status.server_away

    def _on_watcher_changed(self, report) -> None:  # noqa: ANN001 - a workspace.watch.WatchReport
        from nmid_desktop.workspace.watch import colleague_line

        self.refresh_status()
        self.ctx.labels_changed.emit()  # the browser re-reads its rows (who labelled what)
        if report.changes:
            self.last_colleague = colleague_line(report.changes)
            self.status.show_message(self.last_colleague, 10000)
        for record in (*report.mine, *report.changes):
            shown = self.current.record if self.current is not None and self.current.image_id == record.id else None
            if record.id != self.current_id or (shown is not None and shown.label_version >= record.label_version):
                continue
            self.page.card.set_current_label(record.label, record.label_source, record.review, record.label_actor)
            if self.current is not None and self.current.image_id == record.id:
                self.current = dataclasses.replace(self.current, record=record)  # Enter now decides knowing it
                self._show_suggestion()

    def _on_watcher_away(self, message: str) -> None:
        self.status.set_server_away(True, message)

    def _on_watcher_back(self, report) -> None:  # noqa: ANN001 - a workspace.watch.WatchReport
        self.status.set_server_away(False)
        self._on_watcher_changed(report)

    def _refused_while_away(self, what: str) -> bool:
        """Refuse a write at once while the server is away (never queued behind a reconnect)."""
        if not self.server_away:
            return False
        self._error(f"The {what} was not saved", "the library's server is away, so nothing was changed; "
                    "do it again when the status bar says the server is back")
        return True

    def _browser_row(self, image_id: int):  # noqa: ANN202 - a workspace.browse.BrowserRow or None
        model = self.browser.model
        row = model.row_of(image_id)
        return None if row is None else model.row_data(row)

    def _off_lane(self, kind: str, work) -> JobHandle:  # noqa: ANN001
        """Run ``work(engine, token)`` in a thread of its own, once the engine exists.

        For long work on the thread-safe classifier (preparing, rebuilding), so that
        imports, queries and label writes on the engine lane are not held up behind it.
        """
        ref = self._engine_ref

        def factory(token):  # noqa: ANN001, ANN202
            return work(ref.wait(token), token)

        return self.jobs.start(kind, factory)

    def check_endpoint(self) -> JobHandle:
        """Find out in a worker whether a model endpoint is configured (the key may sit in a keyring)."""
        from nmid_desktop.workspace.model_tasks import endpoint_configured

        settings = self.ctx.settings
        handle = self.jobs.start("endpoint", lambda token: endpoint_configured(settings))
        handle.finished.connect(self.ctx.set_endpoint_ok)
        return handle

    def _on_ctx_endpoint_changed(self, ok: bool) -> None:
        self.page.card.set_model_visible(ok, self.ctx.settings.lmm.vision_model)
        self.ask_action.setEnabled(ok)
        if ok and self.current is not None and self.page.card.model_answer is None:
            self._maybe_ask_model(self.current)

    def prepare_classifier(self) -> JobHandle:
        """Load the encoder and index in the background (queries wait for it if they must)."""
        handle = self._off_lane("prepare", lambda eng, token: eng.prepare(token))
        # Read the facts again on the lane rather than taking this job's: a status job that
        # started before the encoder was loaded may still be on its way and must not win.
        handle.finished.connect(lambda _: self.refresh_status())
        handle.finished.connect(lambda _: freeze_heap())  # torch and the encoder are loaded now
        handle.failed.connect(lambda msg: self._error("The classifier could not be prepared", msg))
        return handle

    def refresh_status(self) -> None:
        """Ask the engine for fresh library facts (status bar, class chips)."""
        handle = self.jobs.start("status", lambda eng, token: eng.status(), lane=ENGINE_LANE)
        handle.finished.connect(self.ctx.set_status)

    def _on_ctx_status_changed(self, status: LibraryStatus) -> None:
        self.status.set_status(status, self.ctx.settings.lmm.budget_usd if self._model_configured() else None)
        colors = self.ctx.class_colors
        card = self.page.card
        if status.class_names != card.classes or status.class_keys != card.keys:  # keys live in the library
            card.set_classes(status.class_names, colors, status.class_keys)
        # The location, never the URL as typed: a password in it is redacted.
        self.setWindowTitle(f"nmid-desktop — {status.location or status.root}")

    def rebuild_index(self) -> JobHandle:
        """Rebuild the index in its own thread; queries go on using the old one meanwhile."""
        handle = self._off_lane("rebuild", lambda eng, token: eng.rebuild(token))
        handle.finished.connect(lambda _: self.refresh_status())
        handle.failed.connect(lambda msg: self._error("The index could not be rebuilt", msg))
        return handle

    # -- opening images ----------------------------------------------------------------------------
    def open_paths(self, paths: list[Path]) -> JobHandle | None:
        """Import (if needed) and show dropped, opened or pasted files and folders."""
        paths = [Path(p) for p in paths]
        if not paths:
            return None
        self._last_drop_t = time.perf_counter()
        self.tabs.setCurrentWidget(self.page)
        handle = self.jobs.start("open", lambda eng, token: eng.open_paths(paths, token), lane=ENGINE_LANE)
        handle.finished.connect(self._on_open_finished)
        handle.failed.connect(lambda msg: self._error("Could not open the images", msg))
        return handle

    def _on_open_finished(self, result: OpenResult) -> None:
        if result.skipped and not result.image_ids:
            self._error("Nothing could be opened", "\n".join(result.skipped[:20]))
            return
        self.status.show_message(f"Opened: {result.summary}", 8000)
        if not result.image_ids:
            return
        self.queue = list(result.image_ids)
        self.position = 0
        self.show_image(self.queue[0], keep_drop_clock=True)
        self.refresh_status()
        self.ctx.labels_changed.emit()

    def show_image(self, image_id: int, keep_drop_clock: bool = False) -> JobHandle:
        """Show a library image with its demonstrations and local prediction."""
        if not keep_drop_clock:
            self._last_drop_t = time.perf_counter()
        if image_id not in self.queue:
            self.queue = [image_id]
            self.position = 0
        else:
            self.position = self.queue.index(image_id)
        self.current_id = image_id
        self.current = None
        self.tabs.setCurrentWidget(self.page)
        self._update_queue_label()
        self.page.card.set_waiting("Finding similar labelled images…")
        self.page.card.set_model(None)
        self.page.demos.show_message("Searching the library…")
        fallback = self._browser_row(image_id)  # its file is still shown while the server is away
        handle = self.jobs.start("query", lambda eng, token: eng.query(image_id, token, fallback), lane=ENGINE_LANE)
        handle.progress_changed.connect(self._on_query_progress)
        handle.finished.connect(self._on_query_finished)
        handle.failed.connect(self._on_query_failed)
        return handle

    def _on_query_progress(self, progress: Progress) -> None:
        if isinstance(progress.data, ImagePayload):
            payload = progress.data
            if payload.image_id != self.current_id:
                return
            self.page.show_payload(payload, payload.path.name)
            self.page.card.set_enabled_for_image(True)
            self.page.card.set_waiting("Embedding and searching…")

    def _on_query_finished(self, result: QueryResult) -> None:
        if result.image_id != self.current_id:
            return
        self.current = result
        record = result.record
        self.page.title.setText(record.original_name or record.path.name)
        self.page.card.set_current_label(record.label, record.label_source, record.review, record.label_actor)
        self.page.demos.set_demonstrations(result.tiles, self.ctx.class_names, self.ctx.class_colors)
        self.page.card.set_local(result.ranking, result.predictor, len(result.tiles), novelty=result.novelty,
                                 stale=result.trust_stale)
        if result.stored_answer is not None:
            self.page.card.set_model(result.stored_answer, stored=True)  # paid once: shown, not asked again
        self._show_suggestion()
        if self._last_drop_t is not None:
            self.last_drop_latency_s = time.perf_counter() - self._last_drop_t
            self._last_drop_t = None
            log.info("drop to demonstrations: %.0f ms (%s)", self.last_drop_latency_s * 1000,
                     ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items()))
        self._after_query(result)

    def _after_query(self, result: QueryResult) -> None:
        """Tell the side tabs, and ask the model when it is the chosen predictor."""
        self._maybe_ask_model(result)
        for panel in self.extra_panels.values():
            on_query = getattr(panel, "on_query", None)
            if callable(on_query):
                on_query(result)

    def _on_query_failed(self, message: str) -> None:
        self.page.card.set_waiting("No prediction.")
        row = self._browser_row(self.current_id) if self.server_away and self.current_id is not None else None
        if row is not None:  # the label as the browser last read it
            self.page.card.set_current_label(row.label, row.source, row.review, row.actor)
        self.page.demos.show_message(f"Could not search: {message}")
        self.status.show_message(message, 15000)

    def _update_queue_label(self) -> None:
        n = len(self.queue)
        self.page.queue_label.setText(f"{self.position + 1} of {n}" if n > 1 else "")
        self.page.prev_button.setEnabled(self.position > 0)
        self.page.next_button.setEnabled(0 <= self.position < n - 1)

    def next_image(self) -> None:
        """Go to the next image of the opened set."""
        if 0 <= self.position < len(self.queue) - 1:
            self.show_image(self.queue[self.position + 1])

    def previous_image(self) -> None:
        """Go to the previous image of the opened set."""
        if self.position > 0:
            self.show_image(self.queue[self.position - 1])

    def _on_ctx_open_image_requested(self, image_id: int) -> None:
        self.show_image(image_id)

    def _on_ctx_open_queue_requested(self, ids: list[int], image_id: int) -> None:
        self.queue = [int(i) for i in ids] or [image_id]
        self.show_image(image_id)

    # -- labelling ---------------------------------------------------------------------------------
    def suggestion(self) -> tuple[str, str, str | None, float | None] | None:
        """(label, source, model, confidence) that Enter would accept, or None.

        An image whose label awaits review offers that label (source ``"review"``: Enter
        accepts it as it is); else the model's answer when it is the preferred predictor;
        else the local prediction. The card's Accept button names the same label.
        """
        card = self.page.card
        record = self.current.record if self.current is not None else None
        if record is not None and record.label and record.review == "pending":
            return record.label, "review", record.label_model, record.label_confidence
        answer = card.model_answer
        prefer_model = self.ctx.settings.predictor in ("lmm", "both")
        if prefer_model and answer is not None and answer.valid and answer.label:
            return answer.label, "lmm", answer.model, answer.confidence
        # An image unlike the library offers no local suggestion: one reflexive Enter must not
        # file it under the nearest (far) class; the expert chooses with a digit or the class box.
        if self.current is not None and self.current.ranking and self.current.trusted:
            label, prob = self.current.ranking[0]
            return label, "local", self.current.predictor, prob
        return None

    def accept(self) -> JobHandle | None:
        """Accept the suggested label for the current image (Enter)."""
        if self.current_id is None:
            return None
        suggestion = self.suggestion()
        if suggestion is None:
            untrusted = self.page.card.untrusted
            if untrusted is not None:
                self.status.show_message(f"Unlike your library: the nearest class '{untrusted}' is not trusted, so Enter "
                                         "does not accept it. Choose a class (1-9 or type its name).", 8000)
            else:
                self.status.show_message("Nothing to accept yet: choose a class (1-9 or type its name).", 6000)
            return None
        label, source, model, confidence = suggestion
        if source == "review":
            return self._accept_pending()
        return self._write_label(label, source=source, model=model, confidence=confidence)

    def _accept_pending(self) -> JobHandle | None:
        image_id = self.current_id
        if image_id is None or self._refused_while_away("review"):
            return None
        self._label_seq += 1
        handle = self.jobs.start(
            f"label-{self._label_seq}", lambda eng, token: eng.set_review(image_id, "accepted", actor=""),
            lane=ENGINE_LANE,
        )
        handle.finished.connect(lambda change: self._on_label_changed(change, advance=True))
        handle.failed.connect(lambda msg: self._error("The review was not saved", msg))
        return handle

    def _show_suggestion(self) -> None:
        suggestion = self.suggestion()
        self.page.card.set_accept_label(suggestion[0] if suggestion else None,
                                        pending=bool(suggestion and suggestion[1] == "review"))

    def set_label(self, label: str) -> JobHandle | None:
        """Label the current image as ``label`` (a correction by the expert)."""
        if self.current_id is None or not label.strip():
            return None
        return self._write_label(label.strip(), source="expert", model=None, confidence=None)

    def _write_label(self, label: str, *, source: str, model: str | None, confidence: float | None) -> JobHandle | None:
        image_id = self.current_id
        if image_id is None or self._refused_while_away("label"):
            return None
        self._label_seq += 1

        record = self.current.record if self.current is not None and self.current.image_id == image_id else None
        expected = record.label_version if record is not None else None

        def factory(eng: Engine, token):  # noqa: ANN001, ANN202
            try:
                return eng.set_label(image_id, label, source=source, model=model, confidence=confidence, actor="",
                                     expected_version=expected)
            except LabelConflict as exc:  # a colleague labelled it since we read it: tell, never overwrite
                return refused(eng, exc)

        # A unique kind per write: label writes are never superseded, only queued in order.
        handle = self.jobs.start(f"label-{self._label_seq}", factory, lane=ENGINE_LANE)
        handle.finished.connect(lambda change: self._on_label_changed(change, advance=True))
        handle.failed.connect(lambda msg: self._error("The label was not saved", msg))
        return handle

    def undo(self) -> JobHandle | None:
        """Undo the latest label change (Ctrl+Z), without limit."""
        return self._history_step("undo")

    def redo(self) -> JobHandle | None:
        """Redo the latest undone change (Ctrl+Shift+Z)."""
        return self._history_step("redo")

    def _history_step(self, which: str) -> JobHandle | None:
        if self._refused_while_away(which):
            return None
        self._label_seq += 1
        def factory(eng: Engine, token):  # noqa: ANN001, ANN202
            try:
                return getattr(eng, which)()
            except UndoConflict as exc:  # a colleague overwrote that change since: refused, with their label
                return refused(eng, exc)

        handle = self.jobs.start(f"label-{self._label_seq}", factory, lane=ENGINE_LANE)
        handle.finished.connect(lambda change: self._on_label_changed(change, advance=False, which=which))
        handle.failed.connect(lambda msg: self._error(f"{which.capitalize()} failed", msg))
        return handle

    def _on_label_changed(self, change: LabelChange | LabelRefused | None, *, advance: bool, which: str = "set") -> None:
        if change is None:
            self.status.show_message(f"Nothing to {which}.", 4000)
            return
        if isinstance(change, LabelRefused):
            self._on_label_refused(change)
            return
        record = change.record
        label = record.label or "no label"
        verb = {"set": "Labelled", "undo": "Undone:", "redo": "Redone:", "review": "Reviewed"}.get(change.action, "")
        self.status.show_message(f"{verb} {record.original_name} → {label}", 5000)
        self.refresh_status()
        self.ctx.labels_changed.emit()
        if change.image_id == self.current_id:
            self.page.card.set_current_label(record.label, record.label_source, record.review, record.label_actor)
            if self.current is not None:
                self.current = dataclasses.replace(self.current, record=record)
                self._show_suggestion()
        elif change.action in ("undo", "redo"):
            # Show what was undone or redone, so the expert sees the change.
            self.show_image(change.image_id)
        if advance and change.image_id == self.current_id and self.position < len(self.queue) - 1:
            self.next_image()

    def _on_label_refused(self, refusal: LabelRefused) -> None:
        record = refusal.record
        self.last_conflict = refusal.message
        self.status.add_warning(f"Not changed: {refusal.message}")
        self.refresh_status()
        self.ctx.labels_changed.emit()
        if refusal.image_id == self.current_id:
            # Show the colleague's label: the next Enter or digit decides knowing it.
            self.page.card.set_current_label(record.label, record.label_source, record.review, record.label_actor)
            if self.current is not None:
                self.current = dataclasses.replace(self.current, record=record)
                self._show_suggestion()

    # -- keys --------------------------------------------------------------------------------------
    def _on_enter(self) -> None:
        if self.tabs.currentWidget() is not self.page:
            return
        card = self.page.card
        if card.class_box.hasFocus():
            card.submit_class_box(create=False)  # an empty box accepts, and gives the keys back
            return
        self.accept()

    def _on_number_key(self, number: int) -> None:
        if self.tabs.currentWidget() is not self.page:
            return
        label = self.page.card.class_for_key(number)
        if label is not None:
            self.set_label(label)

    # -- contrast ----------------------------------------------------------------------------------
    def _on_contrast_levels_changed(self, black: float, white: float) -> None:
        payload = self.page.payload
        if payload is None:
            return
        if not payload.histogram.deep:
            self.page.viewer.set_levels(black, white)
            return
        self._contrast_timer.start()  # coalesce a drag into one re-stretch per 40 ms

    def _on_contrast_timer_timeout(self) -> None:
        payload = self.page.payload
        if payload is None or payload.raw_grey is None:
            return
        black, white = self.page.contrast.levels()
        raw = payload.raw_grey
        image_id = payload.image_id
        handle = self.jobs.start("contrast", lambda token: rescale(raw, black, white))
        handle.finished.connect(lambda view8: self._on_contrast_finished(image_id, view8))

    def _on_contrast_finished(self, image_id: int | None, view8: np.ndarray) -> None:
        payload = self.page.payload
        if payload is not None and payload.image_id == image_id:
            self.page.viewer.replace_view(view8)

    # -- drag, drop, open, paste ---------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        mime = event.mimeData()
        if local_files(mime) or mime.hasImage():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802, ANN001
        event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        mime = event.mimeData()
        paths = local_files(mime)
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)
        elif mime.hasImage():
            event.acceptProposedAction()
            self._open_qimage(QImage(mime.imageData()))
        else:
            event.ignore()

    def _on_open_triggered(self) -> None:
        patterns = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
        files, _ = QFileDialog.getOpenFileNames(self, "Open micrographs", "", f"Images ({patterns});;All files (*)")
        if files:
            self.open_paths([Path(f) for f in files])

    def _on_open_folder_triggered(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of micrographs")
        if folder:
            self.import_folder(Path(folder))

    def import_folder(self, folder: Path) -> JobHandle:
        """Import a folder; sub-folders named by class (ImageFolder layout) become labels."""
        from nmid_desktop.core.importer import import_folder

        settings = self.ctx.settings

        def factory(eng: Engine, token):  # noqa: ANN001, ANN202
            def job():  # noqa: ANN202
                report = yield from import_folder(
                    eng.store, folder, max_pixels=settings.max_pixels, detect_bar=settings.crop_data_bar, actor=""
                )
                ids = tuple(dict.fromkeys(int(i.image_id) for i in report.items if i.image_id is not None))
                skipped = tuple(f"{Path(i.path).name}: {i.reason}" for i in report.items if i.image_id is None)
                return OpenResult(ids, report.summary(), skipped)

            return job()

        handle = self.jobs.start("open", factory, lane=ENGINE_LANE)
        handle.finished.connect(self._on_open_finished)
        handle.failed.connect(lambda msg: self._error("Could not import the folder", msg))
        return handle

    def _on_paste_triggered(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None:
            return
        paths = local_files(mime)
        if paths:
            self.open_paths(paths)
        elif mime.hasImage():
            self._open_qimage(QImage(mime.imageData()))
        else:
            self.status.show_message("The clipboard holds no image or image file.", 5000)

    def _open_qimage(self, image: QImage) -> None:
        """Save a pasted or dropped bitmap as a PNG (in a worker), then open it."""
        if image.isNull():
            return
        grey = image.convertToFormat(QImage.Format.Format_Grayscale8)
        width, height = grey.width(), grey.height()
        data = np.frombuffer(grey.constBits(), dtype=np.uint8, count=grey.sizeInBytes())
        array = data.reshape(height, grey.bytesPerLine())[:, :width].copy()

        def factory(eng: Engine, token):  # noqa: ANN001, ANN202
            from nmid_desktop.workspace.display import save_pasted

            return eng.open_paths([save_pasted(array)], token)

        handle = self.jobs.start("open", factory, lane=ENGINE_LANE)
        handle.finished.connect(self._on_open_finished)
        handle.failed.connect(lambda msg: self._error("Could not open the pasted image", msg))

    # -- model -------------------------------------------------------------------------------------
    def _model_configured(self) -> bool:
        return self.ctx.endpoint_ok

    def _maybe_ask_model(self, result: QueryResult) -> None:
        if result.stored_answer is not None:
            return  # the stored answer is shown; Ask model asks again on purpose
        if self.ctx.endpoint_ok and self.ctx.settings.predictor in ("lmm", "both") and result.tiles:
            self.ask_model()

    def ask_model(self) -> JobHandle | None:
        """Ask the configured vision model about the current image, with its demonstrations (Ctrl+M)."""
        from nmid_desktop.workspace.model_tasks import model_predict_job

        result = self.current
        if not self.ctx.endpoint_ok:
            self.status.show_message("No model endpoint is configured: see Settings.", 6000)
            return None
        if result is None or result.image_id != self.current_id:
            return None
        library, settings, image_id = self.ctx.library, self.ctx.settings, result.image_id
        demos = [(t.image_id, t.label) for t in result.tiles]
        self.page.card.set_model_waiting(f"Asking {settings.lmm.vision_model}…")
        handle = self.jobs.start("lmm", lambda token: model_predict_job(library, settings, image_id, demos, token))
        handle.finished.connect(lambda answer: self._on_model_answer(image_id, answer))
        handle.failed.connect(lambda msg: self._on_model_failed(image_id, msg))
        handle.cancelled.connect(lambda: self._on_model_cancelled(image_id, handle))
        return handle

    def _on_card_model_cancel_requested(self) -> None:
        # Ends the job's handle now: a request stuck on a silent server may take its whole
        # timeout to notice the token, and its late answer must not reach the card.
        if not self.jobs.cancel_now("lmm"):
            self.page.card.set_model_cancelled()

    def _on_model_cancelled(self, image_id: int, handle: JobHandle) -> None:
        if image_id == self.current_id and not handle.superseded:
            self.page.card.set_model_cancelled()
            self.status.show_message("Model request cancelled.", 5000)

    def _on_model_answer(self, image_id: int, answer) -> None:  # noqa: ANN001
        if image_id == self.current_id:
            self.page.card.set_model(answer)
            self._show_suggestion()
        self.refresh_status()  # spending changed
        self.ctx.labels_changed.emit()  # the review queue orders by disagreement

    def _on_model_failed(self, image_id: int, message: str) -> None:
        if image_id == self.current_id:
            self.page.card.set_model_error(message)

    # -- dialogs -----------------------------------------------------------------------------------
    def _on_training_trained(self, result) -> None:  # noqa: ANN001
        self.refresh_status()  # the library's encoder is unchanged until the user adopts the new one

    def _on_training_encoder_chosen(self, name: str) -> None:
        # The library now names the new encoder: a fresh classifier re-embeds and rebuilds.
        self.jobs.start("reload", lambda eng, token: eng.reload_classifier(), lane=ENGINE_LANE)
        self.prepare_classifier()
        self.refresh_status()

    def _on_export_triggered(self) -> QWidget:
        from nmid_desktop.qt.widgets.export_dialog import ExportDialog

        dialog = ExportDialog(self.ctx, self)
        dialog.open()  # window-modal without a nested event loop
        return dialog

    def _on_classes_triggered(self) -> QWidget:
        from nmid_desktop.qt.widgets.classes_dialog import ClassesDialog

        dialog = ClassesDialog(self.ctx, self)
        dialog.changed.connect(lambda text: self.status.show_message(text, 6000))
        dialog.open()
        return dialog

    def _on_settings_triggered(self) -> QWidget:
        from nmid_desktop.qt.widgets.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.ctx, self)
        dialog.saved.connect(self.apply_settings)
        dialog.open()
        return dialog

    def apply_settings(self, settings: Settings) -> None:
        """Use new settings (already saved): a new library reopens everything."""
        old = self.ctx.settings
        self.ctx.settings = settings
        from nmid_desktop.workspace.library import as_location

        new_library = as_location(settings.library) if settings.library else self.ctx.library
        if new_library != self.ctx.library:
            self.ctx.library = new_library
            self.queue, self.position, self.current, self.current_id = [], -1, None, None
            self.page.clear()
            self.jobs.cancel("query")
            self._start_engine(demo=False)
            self.ctx.library_changed.emit(new_library)
        else:
            if settings.encoder and settings.encoder != old.encoder:
                # A library's recorded encoder wins over the settings': the choice made here is
                # recorded in the library, so a replaced encoder can be chosen again.
                name = settings.encoder
                handle = self.jobs.start("use-encoder", lambda eng, token: eng.use_encoder(name), lane=ENGINE_LANE)
                handle.failed.connect(lambda msg: self._error("The encoder was not changed", msg))
            self.jobs.start("settings", lambda eng, token: eng.update_settings(settings), lane=ENGINE_LANE)
            if classifier_changed(old, settings):
                self.prepare_classifier()
        self.ctx.settings_changed.emit(settings)
        self.refresh_status()
        self.check_endpoint()

    def _on_jobs_job_ended(self, handle: JobHandle) -> None:
        # Every failed job reaches the user in words, also those no panel reports itself
        # (status, settings, reload...); its traceback is in the log file.
        # While the server is away the status bar says so once; each row clicked does not add a warning.
        expected = self.server_away and handle.kind in ("status", "query")
        if handle.outcome == "failed" and not self._closing and not expected:
            self.status.add_warning(f"{JOB_WORDS.get(handle.kind.split('-')[0], handle.kind)} failed: {handle.error}")

    # -- the "likely mislabelled" queue (qt/widgets/label_errors_dialog.py, workspace/review.py) ---------
    def find_label_errors(self) -> JobHandle:
        """Look for likely mislabelled images in a worker (progress and cancel in the status bar)."""
        from nmid_desktop.workspace.review import find_suspects

        handle = self.jobs.start("suspects", lambda eng, token: find_suspects(eng, token), lane=ENGINE_LANE)
        handle.finished.connect(self._on_suspects_found)
        handle.failed.connect(lambda msg: self._error("Could not look for likely mislabelled images", msg))
        return handle

    def _on_suspects_found(self, suspects: list) -> None:  # list[SuspectItem]
        from nmid_desktop.qt.widgets.label_errors_dialog import LabelErrorsDialog

        if not suspects:
            self.status.show_message("No likely mislabelled images found.", 8000)
            return
        dialog = LabelErrorsDialog(suspects, self.ctx.class_names, self.jobs, self)
        dialog.label_changed.connect(lambda change: self._on_label_changed(change, advance=False))
        dialog.decision_failed.connect(lambda msg: self.status.add_warning(f"A review decision was not saved: {msg}"))
        self.label_errors_dialog = dialog
        dialog.show()

    def _error(self, title: str, message: str) -> None:
        self.status.show_message(f"{title}: {message}", 15000)
        if not self._closing and self.isVisible() and QGuiApplication.platformName() != "offscreen":
            where = f"\n\nDetails are in {self.log_path}" if self.log_path else ""
            QMessageBox.warning(self, title, message + where)
        self.last_error = f"{title}: {message}"

    # -- geometry and closing ------------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        qs = QSettings()
        geometry = qs.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1480, 920)
        splitter = qs.value("window/splitter")
        if isinstance(splitter, QByteArray) and not splitter.isEmpty():
            self.page.splitter.restoreState(splitter)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        """Cancel every job and wait briefly for the workers before the window goes.

        A worker still stuck after ``shutdown_wait_s`` is abandoned (see
        :func:`nmid_desktop.qt.workers.exit_process`); the window never waits for it.
        """
        self._closing = True
        qs = QSettings()
        qs.setValue("window/geometry", self.saveGeometry())
        qs.setValue("window/splitter", self.page.splitter.saveState())
        for panel in self.extra_panels.values():
            stop = getattr(panel, "shutdown", None)
            if callable(stop):
                stop()
        self.browser.shutdown()
        self.watcher.stop()
        self._log_bridge.close()
        self.status.show_message("Stopping background work…")
        self.jobs.shutdown(timeout_s=self.shutdown_wait_s)
        mark_gui_thread(active=False)
        super().closeEvent(event)
