"""Exceptions that reach the user as one clear line.

Every error the user can cause (a bad file, a bad label, a missing library)
derives from :class:`NmidError`; the CLI prints ``str(exc)`` and exits non-zero,
the window shows it in a message box. Messages never contain secrets.
"""

from __future__ import annotations


class NmidError(Exception):
    """Base class of all errors meant for the user."""


class Cancelled(NmidError):
    """A long job was cancelled by the user; partial results are kept."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


class ImageError(NmidError):
    """An image file could not be used. ``path`` names it; ``reason`` says why."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LibraryError(NmidError):
    """The library folder or database is missing, locked, or too new."""


class LabelError(NmidError):
    """A class name is empty, unsafe, or unknown."""


class ConfigError(NmidError):
    """A setting is missing or has an invalid value."""


class DisplayError(NmidError):
    """The window cannot open on this system (missing X libraries, no screen)."""


class LibraryUnavailable(LibraryError):
    """The library's database server cannot be reached (down, restarting, network gone)."""


class LabelConflict(LabelError):
    """A label change was refused: a colleague changed the image's label since it was read."""

    def __init__(self, message: str, *, image_id: int, their_label: str | None, their_actor: str, label_version: int) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.their_label = their_label
        self.their_actor = their_actor
        self.label_version = label_version


class UndoConflict(LabelError):
    """Undo or redo was refused: a colleague has since overwritten the change."""

    def __init__(self, message: str, *, image_id: int, their_label: str | None, their_actor: str) -> None:
        super().__init__(message)
        self.image_id = image_id
        self.their_label = their_label
        self.their_actor = their_actor
