"""`nmid train` and the window's Training tab train on the same images for the same choice."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from gui_helpers import TIMEOUT_MS
from PIL import Image
from PySide6.QtCore import Qt

from nmid_desktop.commands import train as train_command
from nmid_desktop.core.demo import make_demo_image
from nmid_desktop.core.importer import import_files
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library


@pytest.fixture()
def mixed_library(tmp_path: Path) -> Path:
    """12 images: one rejected, one in the fixed test split, one pending and one accepted synthetic image."""
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(12):
        image, _ = make_demo_image(("particles", "nanowires")[i % 2], np.random.default_rng(i), size=96)
        paths.append(folder / f"d{i}.png")
        Image.fromarray(image).save(paths[-1])
    root = tmp_path / "lib"
    with open_library(root) as store:
        run_job(import_files(store, paths, label="particles", copy=False))
        ids = [r.id for r in store.iter_images()]
        store.set_review(ids[0], "rejected")
        store.set_split({ids[1]: "test", ids[2]: "train"})
        for n, source in enumerate((ids[3], ids[4])):
            synthetic_id, _ = store.add_image(
                store.get_image(source).path, sha256=f"{n + 1:x}" * 64, page=0, n_pages=1, width=96, height=96,
                dtype="uint8", copy=False, synthetic=True, source_image_id=source,
            )
            if n == 0:
                store.set_label(synthetic_id, "particles", source="expert")  # accepted; the other stays pending
    return root


def _cli_count(library: Path, capsys: pytest.CaptureFixture, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="nmid")
    train_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--library", str(library), "--epochs", "1", "--batch-size", "4",
                              "--device", "cpu", *extra])
    assert args.func(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training "))
    return int(line.split(" on ")[1].split()[0])


def test_window_and_command_train_on_the_same_images(make_window, mixed_library: Path, qtbot, capsys):
    # The command first: while a window is open its thread refuses to train (the GUI-thread guard).
    cli = {False: _cli_count(mixed_library, capsys), True: _cli_count(mixed_library, capsys, "--include-test")}
    window = make_window(mixed_library)
    panel = window.training
    window.tabs.setCurrentWidget(panel)
    panel.epochs.setValue(1)
    panel.batch.setValue(4)
    panel.use_check.setChecked(False)
    panel.device = "cpu"
    counts = {}
    for include_test in (False, True):
        panel.include_test_check.setChecked(include_test)
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
        assert panel.handle is not None
        qtbot.waitUntil(lambda: not panel.handle.running, timeout=TIMEOUT_MS)
        assert panel.handle.outcome == "finished", panel.handle.error
        counts[include_test] = panel.result.n_train + panel.result.n_val
    # 13 images less the rejected, the test-split and the pending synthetic one; the test image is back with it
    assert counts == {False: 11, True: 12}
    assert cli == counts
