"""Import and stats count the data bars; the exit-code rule on import and export; --help says what exits 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop import cli
from nmid_desktop.core.store import open_library

# ----------------------------------------------------------------------------- data bars


def _micrograph(path: Path, seed: int, bar: bool) -> Path:
    """A 256 x 200 noise image; with ``bar``, a black SEM data bar with white text over the bottom 40 rows."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (200, 256), dtype=np.uint8)
    if bar:
        image[160:] = 0
        image[172:188, 10:120:4] = 255  # "text" strokes
        image[176:184, 150:230] = 255  # a scale bar
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _nmid(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_import_and_stats_report_the_data_bars_found_and_cropped(tmp_path: Path, capsys) -> None:
    from nmid_desktop.commands.library import bar_counts

    src = tmp_path / "src"
    for i in range(3):
        _micrograph(src / "pores" / f"bar{i}.png", i, bar=True)
    for i in range(2):
        _micrograph(src / "pores" / f"plain{i}.png", 10 + i, bar=False)
    lib = tmp_path / "lib"
    code, out, _ = _nmid(capsys, "import", src, "--library", lib)
    assert code == 0, out
    with open_library(lib, create=False) as store:
        found, checked = bar_counts(store.iter_images())
    assert checked == 5 and found >= 1  # the detector decides; the command reports what it stored
    assert f"data bars: {found} found and cropped (of 5 images checked)" in out
    code, out, _ = _nmid(capsys, "stats", "--library", lib)
    assert code == 0 and f"data bars: {found} found and cropped (of 5 images checked)" in out


def test_import_without_bar_detection_says_none_was_checked(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _micrograph(src / "a.png", 0, bar=True)
    code, out, _ = _nmid(capsys, "import", src / "a.png", "--no-bar", "--library", tmp_path / "lib")
    assert code == 0 and "data bars: 0 found and cropped (of 0 images checked; 1 not checked)" in out


def test_bar_counts_compare_the_crop_box_with_the_frame(tmp_path: Path) -> None:
    from nmid_desktop.commands.library import bar_counts
    from nmid_desktop.core.importer import import_files
    from nmid_desktop.core.jobs import run_job

    src = tmp_path / "src"
    paths = [_micrograph(src / f"{i}.png", i, bar=False) for i in range(3)]
    with open_library(tmp_path / "lib") as store:
        report = run_job(import_files(store, paths, None, detect_bar=False))
        ids = [item.image_id for item in report.items]
        store.set_crop_box(ids[0], (0, 0, 256, 160))  # a bar cropped
        store.set_crop_box(ids[1], (0, 0, 256, 200))  # checked, none found
        assert bar_counts(store.iter_images()) == (1, 2)


# ----------------------------------------------------------------------------- exit codes


def test_import_exits_1_when_a_file_was_skipped_and_keeps_the_rest(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _micrograph(src / "good.png", 0, bar=False)
    (src / "broken.png").write_text("not an image")
    code, out, _ = _nmid(capsys, "import", src, "--library", tmp_path / "lib")
    assert code == 1 and "1 imported" in out and "1 skipped" in out and "broken.png" in out
    with open_library(tmp_path / "lib", create=False) as store:
        assert store.count_images() == 1


def test_export_exits_1_when_an_image_changed_since_import(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for i in range(4):
        _micrograph(src / "pores" / f"p{i}.png", i, bar=False)
    lib = tmp_path / "lib"
    assert _nmid(capsys, "import", src, "--reference", "--library", lib)[0] == 0
    _micrograph(src / "pores" / "p0.png", 99, bar=False)  # changed after import
    code, out, _ = _nmid(capsys, "export", tmp_path / "out", "--library", lib)
    assert code == 1, out
    assert "exported 3 images" in out and "1 images changed since import were left out" in out


@pytest.mark.parametrize("command", ["import", "export", "classify", "describe", "synthesize"])
def test_help_states_what_exits_1(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 when every item succeeded" in out.lower() and "Here: 1 when" in out
