"""The ``nmid`` model commands, run as the CLI runs them, against the fake endpoint."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from fake_openai_server import chat_reply
from lmm_helpers import SECRET

from nmid_desktop.commands import lmm as lmm_commands
from nmid_desktop.core.config import save_settings
from nmid_desktop.core.errors import NmidError
from nmid_desktop.lmm.describe import QUESTION_SET_META

CHAT = "/v1/chat/completions"


def nmid(*argv: str) -> int:
    """Parse and run like ``nmid_desktop.cli.main`` (one error line, exit 1), with only the model commands."""
    parser = argparse.ArgumentParser(prog="nmid")
    lmm_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args) or 0)
    except NmidError as exc:
        print(f"nmid: error: {exc}", file=__import__("sys").stderr)
        return 1


@pytest.fixture
def configured(settings):
    save_settings(settings)
    return settings


def test_models_lists_shutdown_dates_and_flags_a_retired_setting(server, configured, capsys) -> None:
    configured.lmm.vision_model = "gpt-4-vision-preview"
    save_settings(configured)
    assert nmid("models") == 1
    out, err = capsys.readouterr()
    assert "gpt-4-vision-preview" in out and "2024-12-06 (gone)" in out and "lmm.vision_model" in out
    assert "setting lmm.vision_model: model 'gpt-4-vision-preview' was shut down on 2024-12-06" in err
    assert SECRET not in out + err


def test_models_is_clean_when_the_settings_are_fine(server, configured, capsys) -> None:
    assert nmid("models", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"id": "sunset-later", "owned_by": "system", "shutdown_date": "2999-01-01"} in listed


def test_offline_commands_say_no_endpoint(capsys) -> None:
    assert nmid("models") == 1
    assert "no endpoint configured" in capsys.readouterr().err


def test_describe_dry_run_prints_the_estimate_and_sends_nothing(server, configured, library, capsys) -> None:
    ids = [str(i.id) for i in library.images()[:2]]
    assert nmid("describe", *ids, "--dry-run", "--library", str(library.root)) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run, nothing sent: 2 calls") and "cost unknown for vision-1" in out
    assert server.requests == []


def test_describe_prints_and_stores(server, configured, library, capsys) -> None:
    server.chat_default = lambda req: chat_reply(json.dumps({"groups": [{"group": 1, "reasoning": "r", "answers": [{"question": 1, "answer": "Steel."}]}]}))
    image = library.images()[0]
    library_root = str(library.root)
    assert nmid("describe", str(image.id), "--library", library_root) == 0
    out = capsys.readouterr().out
    assert f"== image {image.id} (vision-1, describe-v1/sem-nanomaterials-v1/" in out and "Steel." in out
    assert library.descriptions(image.id)[0].rows[-1].answer == "Steel."


def test_questions_generates_saves_and_selects_a_set(server, configured, library, capsys) -> None:
    answer = {"groups": [{"title": "Cracks", "questions": ["Are there cracks?"]}, {"title": "Spots", "questions": ["Dark spots?"]}]}
    server.script(CHAT, chat_reply(json.dumps(answer), model="text-1"))
    assert nmid("questions", "--domain", "steel surface defects", "--library", str(library.root)) == 0
    out = capsys.readouterr().out
    assert "saved steel-surface-defects-v1" in out and "Group 1: Cracks" in out
    assert (library.root / "prompts" / "steel-surface-defects-v1.json").is_file()
    assert library.get_meta(QUESTION_SET_META) == "steel-surface-defects-v1"
    assert "crazing, inclusion" in server.calls(CHAT)[0].text()  # the library's classes
    assert nmid("questions", "--library", str(library.root)) == 0
    listing = capsys.readouterr().out
    assert "steel-surface-defects-v1" in listing and "sem-nanomaterials-v1" in listing


def test_questions_dry_run(server, configured, library, capsys) -> None:
    assert nmid("questions", "--domain", "steel", "--dry-run", "--library", str(library.root)) == 0
    assert capsys.readouterr().out.startswith("dry run, nothing sent: 1 call")
    assert server.requests == []


def test_synthesize_dry_run_prints_the_prompt(server, configured, library, capsys) -> None:
    from nmid_desktop.core.store.base import DescriptionRecord, DescriptionRow

    image = library.images()[0]
    library.add_description(DescriptionRecord(image.id, "vision-1", "describe-v1/x/y", [DescriptionRow("Basics", "What?", "Cracks.")]))
    assert nmid("synthesize", str(image.id), "--n", "2", "--dry-run", "--library", str(library.root)) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing sent: 1 call" in out and "2 images generated" in out and "Cracks." in out
    assert server.requests == []


def test_api_key_set_status_delete(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    assert nmid("api-key", "set") == 0
    out = capsys.readouterr().out
    assert "readable only by you" in out and SECRET not in out
    assert nmid("api-key", "status") == 0
    assert "private file" in capsys.readouterr().out
    assert nmid("api-key", "delete") == 0
    assert nmid("api-key", "status") == 0
    assert "no API key" in capsys.readouterr().out


def test_questions_use_selects_a_set_by_id_or_by_path(library, tmp_path, capsys) -> None:
    from nmid_desktop.lmm.questions import QuestionSet, save_question_set

    assert nmid("questions", "--use", "sem-nanomaterials-v1", "--library", str(library.root)) == 0
    assert library.get_meta(QUESTION_SET_META) == "sem-nanomaterials-v1"
    elsewhere = save_question_set(QuestionSet("mine", 1, "my images", [("A", ["q?"])]), tmp_path / "elsewhere")
    assert nmid("questions", "--use", str(elsewhere.path), "--library", str(library.root)) == 0
    assert library.get_meta(QUESTION_SET_META) == str(elsewhere.path.resolve())
    assert nmid("questions", "--show", "mine-v1", "--library", str(library.root)) == 1  # not in a searched folder
    assert "no question set 'mine-v1'" in capsys.readouterr().err


def test_classify_exits_1_when_every_model_call_failed(server, configured, library, capsys) -> None:
    """One exit-code rule: a batch in which any item failed exits 1, the answers that came are kept."""
    from fake_openai_server import error_reply

    from nmid_desktop.cli import main

    server.chat_default = lambda req: error_reply(400, "this request is refused")
    image = library.images()[0].path
    library.close()
    code = main(["classify", str(image), "--predictor", "lmm", "--encoder", "efficientnet-lite0-imagenet", "--library", str(library.root)])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "failed" in out.out
