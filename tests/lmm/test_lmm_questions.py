"""Question sets and prompt templates: the built-in set, validation, versions, generation by the text model."""

from __future__ import annotations

import json

import pytest
from fake_openai_server import chat_reply

from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.core.paths import config_dir, resources_dir
from nmid_desktop.lmm.questions import (
    QuestionSet,
    generate_question_set,
    list_question_sets,
    load_prompt,
    load_question_set,
    question_set_from_json,
    save_question_set,
    slugify,
)

CHAT = "/v1/chat/completions"


def test_builtin_set_has_the_papers_ten_groups() -> None:
    qs = load_question_set()
    assert qs.id == "sem-nanomaterials-v1" and qs.created_by == "built-in"
    titles = [t for t, _ in qs.groups]
    assert len(titles) == 10
    assert titles[0] == "Basics" and titles[-1] == "Context and application"
    assert all(questions for _, questions in qs.groups)
    assert "1.1 " in qs.numbered() and "Group 10: Context and application" in qs.numbered()
    assert len(qs.digest) == 8


def test_every_shipped_prompt_template_renders() -> None:
    for name in ("describe", "predict", "questions", "synthesize"):
        template = load_prompt(name)
        assert template.id == f"{name}-v1"
    predict = load_prompt("predict")
    assert "Class: crazing" in predict.render("demo", i=1, k=3, label="crazing")
    with pytest.raises(ConfigError, match="bad placeholder"):
        predict.render("demo", i=1)


def test_question_set_validation_names_the_problem() -> None:
    good = json.loads((resources_dir() / "prompts" / "sem-nanomaterials-v1.json").read_text())
    with pytest.raises(ConfigError, match="not an nmid question set"):
        question_set_from_json({**good, "format": "x"})
    with pytest.raises(ConfigError, match="version must be a positive integer"):
        question_set_from_json({**good, "version": "1"})
    with pytest.raises(ConfigError, match="group 1 needs a title"):
        question_set_from_json({**good, "groups": [{"title": "", "questions": ["q"]}]})
    with pytest.raises(ConfigError, match="name must be lower-case"):
        question_set_from_json({**good, "name": "Bad Name"})


def test_save_bumps_the_version_and_library_sets_win(tmp_path) -> None:
    qs = QuestionSet("steel-defects", 1, "steel surfaces", [("Basics", ["What is shown?"])])
    folder = tmp_path / "lib" / "prompts"
    first = save_question_set(qs, folder)
    second = save_question_set(qs, folder)
    assert (first.id, second.id) == ("steel-defects-v1", "steel-defects-v2")
    assert second.path == folder / "steel-defects-v2.json"
    assert load_question_set("steel-defects", tmp_path / "lib").version == 2  # highest version
    assert load_question_set("steel-defects-v1", tmp_path / "lib").version == 1
    assert load_question_set(str(first.path)).path == first.path
    ids = [q.id for q in list_question_sets(tmp_path / "lib")]
    assert "steel-defects-v2" in ids and "sem-nanomaterials-v1" in ids
    with pytest.raises(ConfigError, match="nmid questions --list"):
        load_question_set("nope", tmp_path / "lib")


def test_an_edited_file_changes_the_digest(tmp_path) -> None:
    saved = save_question_set(QuestionSet("x", 1, "d", [("A", ["q1"])]), config_dir() / "prompts")
    data = json.loads(saved.path.read_text())
    data["groups"][0]["questions"][0] = "q1 edited"
    saved.path.write_text(json.dumps(data))
    assert load_question_set("x-v1").digest != saved.digest


def test_slugify() -> None:
    assert slugify("Steel surface defects (NEU)") == "steel-surface-defects-neu"
    assert slugify("***") == "questions"


def test_the_text_model_writes_a_question_set_for_another_domain(server, client, settings) -> None:
    answer = {
        "groups": [
            {"title": "Basics", "questions": ["What surface is shown?", "Is the scale visible?"]},
            {"title": "Defect morphology", "questions": ["Are there cracks?", "Are there patches?"]},
            {"title": "Texture", "questions": ["Is the texture directional?"]},
        ]
    }
    server.script(CHAT, chat_reply(json.dumps(answer), model="text-1"))
    qs, result = generate_question_set(client, "steel surface defects", ["crazing", "inclusion"], settings.lmm)
    assert qs.name == "steel-surface-defects" and qs.version == 1
    assert qs.groups[1] == ("Defect morphology", ["Are there cracks?", "Are there patches?"])
    assert qs.classes == ["crazing", "inclusion"] and "text-1" in qs.created_by
    sent = server.calls(CHAT)[0]
    assert sent.body["model"] == "text-1"
    assert "steel surface defects" in sent.text() and "crazing, inclusion" in sent.text()
    assert sent.body["response_format"]["json_schema"]["name"] == "question_set"
    assert result.tokens_in == 1000


def test_an_unusable_question_answer_is_an_error(server, client, settings) -> None:
    server.script(CHAT, chat_reply("I would ask about cracks.", model="text-1"))
    with pytest.raises(NmidError, match="did not return a usable question set"):
        generate_question_set(client, "steel", [], settings.lmm)
    server.script(CHAT, chat_reply(None, refusal="I can't help with that.", model="text-1"))
    with pytest.raises(NmidError, match="declined"):
        generate_question_set(client, "steel 2", [], settings.lmm)
