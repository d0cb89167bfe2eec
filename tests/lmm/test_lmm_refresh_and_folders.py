"""``--refresh`` on the paid commands, and ``nmid classify FOLDER``, run through ``cli.main`` against the fake endpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fake_openai_server import chat_reply
from PIL import Image

from nmid_desktop.cli import main
from nmid_desktop.core.config import save_settings

CHAT = "/v1/chat/completions"
ENCODER = "efficientnet-lite0-imagenet"


@pytest.fixture
def configured(settings):
    save_settings(settings)
    return settings


def _describe_answer(req) -> object:
    return chat_reply(json.dumps({"groups": [{"group": 1, "reasoning": "r", "answers": [{"question": 1, "answer": "Steel."}]}]}))


def test_describe_refresh_asks_again_instead_of_the_cache(server, configured, library, capsys) -> None:
    server.chat_default = _describe_answer
    image = str(library.images()[0].id)
    root = str(library.root)
    library.close()
    assert main(["describe", image, "--library", root]) == 0
    asked = len(server.calls(CHAT))
    assert asked >= 1
    assert main(["describe", image, "--library", root]) == 0
    assert len(server.calls(CHAT)) == asked  # served from the cache
    assert "cached" in capsys.readouterr().out
    assert main(["describe", image, "--refresh", "--library", root]) == 0
    assert len(server.calls(CHAT)) == 2 * asked  # asked again
    assert ", cached" not in capsys.readouterr().out


def test_questions_refresh_asks_again(server, configured, library, capsys) -> None:
    answer = {"groups": [{"title": "Cracks", "questions": ["Are there cracks?"]}, {"title": "Spots", "questions": ["Dark spots?"]}]}
    server.chat_default = lambda req: chat_reply(json.dumps(answer), model="text-1")
    root = str(library.root)
    library.close()
    argv = ["questions", "--domain", "steel", "--name", "steel", "--library", root]
    assert main(argv) == 0
    assert main(argv) == 0
    assert len(server.calls(CHAT)) == 1
    assert main([*argv, "--refresh"]) == 0
    assert len(server.calls(CHAT)) == 2


def test_every_paid_command_has_refresh(capsys) -> None:
    for command in ("describe", "synthesize", "questions", "classify", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--refresh" in capsys.readouterr().out, command


def test_classify_lmm_refresh_asks_again(server, configured, library, capsys) -> None:
    server.chat_default = lambda req: chat_reply(json.dumps({"label": "crazing", "confidence": 0.9, "ranking": ["crazing", "inclusion"],
                                                              "rationale": "lines"}))
    image = str(library.images()[0].path)
    root = str(library.root)
    library.close()
    argv = ["classify", image, "--predictor", "lmm", "--encoder", ENCODER, "--library", root]
    assert main(argv) == 0, capsys.readouterr()
    asked = len(server.calls(CHAT))
    assert main(argv) == 0
    assert len(server.calls(CHAT)) == asked
    assert main([*argv, "--refresh"]) == 0
    assert len(server.calls(CHAT)) == 2 * asked


def test_classify_a_folder_recursively_reports_what_it_skips(library, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "new"
    (folder / "deeper").mkdir(parents=True)
    for n, path in enumerate((folder / "a.png", folder / "deeper" / "b.png")):
        Image.open(library.images()[n].path).save(path)
    (folder / "notes.txt").write_text("not an image, not an item")
    os.mkfifo(folder / "pipe.png")
    root = str(library.root)
    library.close()
    code = main(["classify", str(folder), "--predictor", "local", "--encoder", ENCODER, "--library", root])
    out, err = capsys.readouterr()
    assert code == 1  # the FIFO is a failed item; the two images are classified
    assert f"{folder / 'a.png'}: " in out and f"{folder / 'deeper' / 'b.png'}: " in out
    assert "pipe.png: skipped: " in err and "named pipe" in err and "notes.txt" not in out + err
    assert "2/2 classified" in err  # progress lines, stderr not being a terminal


def test_classify_an_empty_folder_is_one_error(library, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    root = str(library.root)
    library.close()
    assert main(["classify", str(tmp_path / "empty"), "--predictor", "local", "--library", root]) == 1
    assert "no images" in capsys.readouterr().err


def test_evaluate_lmm_refresh_asks_again_and_restores_the_predictor(server, configured, library, capsys) -> None:
    from nmid_desktop.evaluation.runner import PREDICTORS
    from nmid_desktop.lmm.evaluation import LMM_PREDICTOR

    server.chat_default = lambda req: chat_reply(json.dumps({"label": "crazing", "top5": [], "confidence": 0.6, "rationale": "r"}))
    root = str(library.root)
    library.close()
    argv = ["evaluate", "--predictor", "lmm", "--strategy", "similarity", "-k", "1", "--encoder", ENCODER, "--library", root]
    assert main(argv) == 0, capsys.readouterr()
    asked = len(server.calls(CHAT))
    assert asked >= 1
    assert main(argv) == 0
    assert len(server.calls(CHAT)) == asked  # the cache answered
    assert main([*argv, "--refresh"]) == 0
    assert len(server.calls(CHAT)) == 2 * asked
    assert PREDICTORS["lmm"] is LMM_PREDICTOR  # the refreshing stand-in was for that run only


def _described(library) -> int:
    from nmid_desktop.core.store.base import DescriptionRecord, DescriptionRow

    image = library.images()[0]
    library.add_description(DescriptionRecord(image.id, "vision-1", "describe-v1/x/y", [DescriptionRow("Basics", "What?", "Cracks.")]))
    return image.id


def test_synthesize_exits_1_when_a_generated_image_is_refused(server, configured, library, capsys) -> None:
    import base64

    from fake_openai_server import Reply, png_b64

    image_id = _described(library)
    root = str(library.root)
    library.close()
    gif = io_gif()
    server.script("/v1/images/generations", Reply(body={"data": [{"b64_json": png_b64(32, 1)}, {"b64_json": base64.b64encode(gif).decode()}]}))
    assert main(["synthesize", str(image_id), "--n", "2", "--library", root]) == 1
    out, err = capsys.readouterr()
    assert "1 synthetic images" in out and "a generated image was refused" in err
    assert main(["synthesize", str(image_id), "--n", "2", "--library", root]) == 0  # the server's default: 2 good images


def io_gif() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, format="GIF")
    return buffer.getvalue()
