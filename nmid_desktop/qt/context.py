"""What every panel of the window shares: library, settings, jobs, thumbnails, and change signals."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from nmid_desktop.core.config import Settings
from nmid_desktop.qt.workers import JobManager
from nmid_desktop.workspace.display import ThumbnailCache
from nmid_desktop.workspace.engine import LibraryStatus
from nmid_desktop.workspace.library import as_location

ENGINE_LANE = "engine"  # the lane that owns the store and classifier (see qt/engine.py)


class AppContext(QObject):
    """Shared state of one window. Lives in the GUI thread; jobs get copies of its plain values."""

    settings_changed = Signal(object)  # Settings
    library_changed = Signal(object)  # Path or postgresql:// URL
    labels_changed = Signal()  # a label, review or class changed: views refresh
    status_changed = Signal(object)  # LibraryStatus
    open_image_requested = Signal(int)  # show this library image in the Classify page
    open_queue_requested = Signal(object, int)  # work through these image ids, starting at this one
    message = Signal(str)  # a short line for the status bar
    endpoint_changed = Signal(bool)  # whether a model endpoint is configured
    status_refresh_requested = Signal()  # counts or spending changed: the window re-reads them

    def __init__(self, library: Path | str, settings: Settings, jobs: JobManager, thumbnails: ThumbnailCache) -> None:
        super().__init__()
        # A folder, or a shared library's postgresql:// URL (jobs open their own store from it).
        self.library: Path | str = as_location(library)
        self.settings = settings
        self.jobs = jobs
        self.thumbnails = thumbnails
        self.status: LibraryStatus | None = None
        self.endpoint_ok = False  # set by a worker's check (reading the key may touch the keyring)

    def set_endpoint_ok(self, ok: bool) -> None:
        """Record whether a model endpoint is configured."""
        self.endpoint_ok = bool(ok)
        self.endpoint_changed.emit(self.endpoint_ok)

    def set_status(self, status: LibraryStatus) -> None:
        """Record and announce fresh library facts."""
        self.status = status
        self.status_changed.emit(status)

    @property
    def class_names(self) -> list[str]:
        """The taxonomy as last reported."""
        return self.status.class_names if self.status is not None else []

    @property
    def class_colors(self) -> dict[str, str]:
        """Explicit class colours of the taxonomy ("" when unset)."""
        return {c.name: c.color for c in self.status.classes} if self.status is not None else {}
