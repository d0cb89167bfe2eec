"""Which library a face opens, and the built-in demo library: one rule for the command and the window."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nmid_desktop.core.config import Settings, load_settings
from nmid_desktop.core.importer import ImportReport, import_folder
from nmid_desktop.core.jobs import Job
from nmid_desktop.core.paths import data_dir, default_library_dir
from nmid_desktop.core.store import Store
from nmid_desktop.core.store.location import is_pg_url


def demo_library_dir() -> Path:
    """Where the demo library lives when no ``--library`` is given: ``demo`` in the user data folder."""
    return data_dir() / "demo"


def resolve_library(library: Path | str | None, settings: Settings | None = None, *, demo: bool = False) -> Path | str:
    """The library: ``--library``, else the demo folder with ``--demo``, else settings, else the default.

    A folder comes back as a ``Path``; a shared library's ``postgresql://`` URL as text
    (``Path`` would fold its ``//``).

    Args:
        library: What the user named (``--library``), or None.
        settings: The user's settings (their ``library``); read from the settings file when needed and None.
        demo: The demo library was asked for.
    """
    if library:
        return _location(library)
    if demo:
        return demo_library_dir()
    if settings is None:
        settings = load_settings()
    return _location(settings.library) if settings.library else default_library_dir()


def as_location(chosen: Path | str) -> Path | str:
    """A library as named by the user: a ``postgresql://`` URL stays text, anything else is a folder."""
    return str(chosen) if is_pg_url(str(chosen)) else Path(chosen)


_location = as_location


def fill_demo(
    store: Store,
    settings: Settings,
    *,
    per_class: int | None = None,
    seed: int = 0,
    size: int | None = None,
    only_if_empty: bool = True,
) -> Job[ImportReport | None]:
    """Generate the deterministic demo images and import them labelled (a job).

    Args:
        store: The library to fill.
        settings: Import settings (pixel limit, data-bar crop).
        per_class: Images per class (None: the demo's default).
        seed: Generator seed.
        size: Image side in pixels (None: the demo's default).
        only_if_empty: Do nothing (return None) when the library already holds images.

    Returns:
        The import report, or None when nothing was done.
    """
    from nmid_desktop.core.demo import generate_demo

    if only_if_empty and store.count_images() > 0:
        return None
    options: dict[str, int] = {}
    if per_class is not None:
        options["per_class"] = per_class
    if size is not None:
        options["size"] = size
    with tempfile.TemporaryDirectory(prefix="nmid-demo-") as tmp:
        yield from generate_demo(Path(tmp), seed=seed, **options)
        report = yield from import_folder(
            store, Path(tmp), layout="imagefolder", max_pixels=settings.max_pixels,
            detect_bar=settings.crop_data_bar, actor="demo",
        )
    return report
