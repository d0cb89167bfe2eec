"""The library commands of ``nmid``, run in-process through ``cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nmid_desktop import cli
from nmid_desktop.core.store import open_library

LIBRARY_COMMANDS = [
    ["demo"], ["import"], ["stats"], ["label"], ["label", "set"], ["label", "clear"], ["label", "accept"],
    ["label", "reject"], ["label", "undo"], ["label", "redo"], ["label", "history"], ["classes"],
    ["classes", "list"], ["classes", "add"], ["classes", "rename"], ["classes", "merge"], ["classes", "key"],
    ["classes", "describe"],
    ["export"],
]


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 12), dtype=np.uint8)).save(path)
    return path


def _nmid(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for k, name in enumerate(("pores", "wires")):
        for i in range(4):
            _png(tmp_path / "data" / name / f"{name}{i}.png", k * 10 + i)
    (tmp_path / "data" / "wires" / "wires9.png").write_bytes((tmp_path / "data" / "wires" / "wires0.png").read_bytes())
    (tmp_path / "data" / "pores" / "broken.png").write_text("not an image")
    return tmp_path / "data"


@pytest.mark.parametrize("argv", LIBRARY_COMMANDS, ids=" ".join)
def test_every_library_command_has_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nmid " + " ".join(argv))


def test_demo_builds_and_describes_the_default_demo_library(capsys: pytest.CaptureFixture) -> None:
    from nmid_desktop.core.paths import data_dir

    code, out, _ = _nmid(capsys, "demo", "--per-class", "3", "--size", "128")
    assert code == 0
    assert "15 imported" in out and "classes: 5" in out and "size on disk" in out
    assert "label sources: import 15" in out and "accepted 15" in out
    with open_library(data_dir() / "demo", create=False) as store:
        assert store.count_images() == 15 and len(store.classes()) == 5
    code, out, _ = _nmid(capsys, "demo", "--per-class", "3", "--size", "128")
    assert code == 0 and "0 imported, 15 duplicates" in out


def test_import_stats_label_classes_export_round_trip(data: Path, tmp_path: Path, capsys) -> None:
    lib = tmp_path / "lib"
    code, out, _ = _nmid(capsys, "import", data, "--library", lib)
    assert code == 1  # broken.png was skipped: one item failed (the rest is kept)
    assert "8 imported, 1 duplicates, 1 skipped" in out
    assert "wires9.png = " in out and str(data / "wires" / "wires0.png") in out
    assert "broken.png:" in out

    code, out, _ = _nmid(capsys, "stats", "--library", lib)
    assert code == 0 and "images: 8 (8 labelled" in out and "pores" in out and "wires" in out

    with open_library(lib) as store:
        sha = store.get_image(1).sha256
    code, out, _ = _nmid(capsys, "label", "set", sha[:10], "cracks", "--library", lib)
    assert code == 0 and "image 1: pores -> cracks" in out
    code, out, _ = _nmid(capsys, "label", "undo", "--library", lib)
    assert code == 0 and out.startswith("undo: ")
    code, out, _ = _nmid(capsys, "label", "redo", "--library", lib)
    assert code == 0 and out.startswith("redo: ")
    code, out, _ = _nmid(capsys, "label", "reject", "2", "--library", lib)
    assert code == 0 and "accepted -> rejected" in out
    code, out, _ = _nmid(capsys, "label", "history", "1", "--library", lib)
    assert code == 0 and len(out.splitlines()) == 2 and "cracks" in out

    assert _nmid(capsys, "classes", "rename", "cracks", "crack", "--library", lib)[0] == 0
    assert _nmid(capsys, "classes", "describe", "crack", "--description", "surface cracks", "--color", "#00ff00",
                 "--library", lib)[0] == 0
    code, out, _ = _nmid(capsys, "classes", "merge", "crack", "pores", "--library", lib)
    assert code == 0 and "1 images relabelled" in out
    code, out, _ = _nmid(capsys, "classes", "--library", lib)
    assert code == 0 and out.split() == ["1", "pores", "3", "2", "wires", "4"]  # keys, names, counts
    code, out, _ = _nmid(capsys, "classes", "key", "wires", "1", "--library", lib)  # swaps with pores
    assert code == 0 and out.splitlines() == ["class 'wires': key 1", "class 'pores': key 2"]
    code, out, _ = _nmid(capsys, "classes", "--library", lib)
    assert out.split() == ["2", "pores", "3", "1", "wires", "4"]

    out_dir = tmp_path / "export"
    code, out, _ = _nmid(capsys, "export", out_dir, "--split", "0.5,0.25,0.25", "--seed", "1", "--library", lib)
    assert code == 0 and "exported 7 images" in out
    rows = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and all((out_dir / r["file"]).is_file() for r in rows)


def test_reference_and_label_options(data: Path, tmp_path: Path, capsys) -> None:
    lib = tmp_path / "lib"
    files = [data / "pores" / "pores0.png", data / "pores" / "pores1.png"]
    code, out, _ = _nmid(capsys, "import", *files, "--label", "unknown-phase", "--reference", "--library", lib)
    assert code == 0 and "2 imported" in out
    with open_library(lib) as store:
        images = store.images()
        assert [im.label for im in images] == ["unknown-phase"] * 2 and not any(im.stored for im in images)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stats"], "no library"),
        (["label", "set", "1", "x"], "no library"),
        (["import", "{tmp}/nowhere"], "does not exist"),
        (["export", "{tmp}/out"], "no library"),
    ],
)
def test_errors_are_one_line_and_exit_1(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = _nmid(capsys, *argv, "--library", tmp_path / "missing-lib")
    assert code == 1 and out == ""
    assert err.startswith("nmid: error: ") and message in err and err.count("\n") == 1


def test_label_errors_on_an_existing_library(data: Path, tmp_path: Path, capsys) -> None:
    lib = tmp_path / "lib"
    _nmid(capsys, "import", data / "pores" / "pores0.png", "--library", lib)
    for argv, message in (
        (["label", "set", "1", "../escape"], "must not contain"),
        (["label", "set", "99", "x"], "no image"),
        (["label", "set", "zz", "x"], "neither an image id"),
        (["label", "accept", "1"], "no label to accept"),
        (["classes", "rename", "none", "x"], "no class"),
        (["classes", "key", "none", "1"], "no class"),
        (["classes", "key", "pores", "0"], "digit 1-9 or 'none'"),
        (["classes", "key", "pores", "12"], "digit 1-9 or 'none'"),
        (["export", lib], "not empty"),
    ):
        code, _, err = _nmid(capsys, *argv, "--library", lib)
        assert code == 1 and message in err and err.count("\n") == 1, argv
    code, out, _ = _nmid(capsys, "label", "undo", "--library", lib)
    assert code == 0 and out == "nothing to undo\n"
