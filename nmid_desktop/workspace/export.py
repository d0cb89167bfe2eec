"""The export use case: the curated dataset of one library, as a job for the window and the command."""

from __future__ import annotations

from pathlib import Path

from nmid_desktop.core.export import ExportReport, export_dataset
from nmid_desktop.core.jobs import CancelToken, Job
from nmid_desktop.core.store import open_library


def export_job(library: Path, out_dir: Path, split: tuple[float, float, float], seed: int,
               include_pending: bool, copy_mode: str, token: CancelToken | None = None) -> Job[ExportReport]:
    """Export the library with a store of this job's own (it may run in any thread).

    Args:
        library: The library folder.
        out_dir: The export folder.
        split: Train, val and test fractions.
        seed: Seed of the stratified split.
        include_pending: Also export labels nobody has reviewed.
        copy_mode: How image files are written (see :func:`~nmid_desktop.core.export.export_dataset`).
        token: Unused here: every ``yield`` is a cancel point.
    """
    with open_library(library, create=False) as store:
        report = yield from export_dataset(
            store, out_dir, split=split, seed=seed, include_pending=include_pending, copy_mode=copy_mode
        )
    return report
