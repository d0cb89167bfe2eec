"""Model answers into data: JSON in all its wrappings, text lines, labels, rankings, description rows."""

from __future__ import annotations

import pytest

from nmid_desktop.lmm.parsing import (
    REASONING,
    canonical_label,
    extract_json,
    parse_description,
    parse_prediction,
    parse_question_groups,
    ranking_from,
)

CLASSES = ["crazing", "inclusion", "rolled-in_scale", "pitted_surface"]


@pytest.mark.parametrize(
    "text",
    [
        '{"label": "crazing"}',
        'Sure!\n```json\n{"label": "crazing"}\n```',
        'My answer is {"label": "crazing", "note": "braces } in strings { are fine"} as requested.',
    ],
)
def test_extract_json_finds_the_object(text) -> None:
    assert extract_json(text)["label"] == "crazing"


def test_extract_json_gives_none_without_an_object() -> None:
    assert extract_json("no json here {not: valid}") is None
    assert extract_json("") is None


def test_labels_match_exactly_after_normalising_case_and_separators() -> None:
    assert canonical_label("Rolled-in Scale", CLASSES) == "rolled-in_scale"
    assert canonical_label(" 'Pitted surface'. ", CLASSES) == "pitted_surface"
    assert canonical_label("craze", CLASSES) is None  # no fuzzy matching: that is what the repair is for
    assert canonical_label(None, CLASSES) is None


def test_parse_prediction_from_json() -> None:
    parsed = parse_prediction(
        '{"label": "Inclusion", "top5": ["inclusion", "crazing", "bogus", "pitted surface"], '
        '"confidence": 0.8, "rationale": "dark elongated spots"}',
        CLASSES,
    )
    assert parsed.label == "inclusion"
    assert parsed.top5 == ["inclusion", "crazing", "pitted_surface"]  # outside names dropped, label first
    assert parsed.confidence == 0.8 and parsed.rationale == "dark elongated spots"


def test_parse_prediction_from_text_lines_and_bare_names() -> None:
    parsed = parse_prediction("**Label:** crazing\nTop-5: crazing, inclusion\nConfidence: 85%\nReason: fine cracks", CLASSES)
    assert (parsed.label, parsed.top5, parsed.confidence, parsed.rationale) == (
        "crazing", ["crazing", "inclusion"], 0.85, "fine cracks",
    )
    assert parse_prediction("inclusion", CLASSES).label == "inclusion"


def test_parse_prediction_outside_the_taxonomy_keeps_the_raw_answer() -> None:
    parsed = parse_prediction('{"label": "scratches", "top5": ["scratches"], "confidence": 2}', CLASSES)
    assert parsed.label is None and parsed.label_raw == "scratches"
    assert parsed.confidence == 0.02  # 2 read as a percentage
    assert parsed.top5 == []


def test_ranking_keeps_order_and_sums_to_one() -> None:
    ranking = ranking_from(["a", "b", "c"], 0.7)
    assert [name for name, _ in ranking] == ["a", "b", "c"]
    assert ranking[0][1] == 0.7
    assert sum(p for _, p in ranking) == pytest.approx(1.0)
    assert ranking[1][1] > ranking[2][1]
    assert ranking_from(["a"], None) == [("a", 1.0)]
    assert ranking_from(["a"], 0.4) == [("a", 1.0)]  # alone in the list: all the mass
    no_conf = ranking_from(["a", "b"], None)
    assert no_conf[0][1] > no_conf[1][1] and sum(p for _, p in no_conf) == pytest.approx(1.0)
    assert ranking_from([], 0.5) == []


@pytest.mark.parametrize("confidence", [0.05, 0.2, 0.34, 0.5, 0.99, None])
@pytest.mark.parametrize("top", [["a"], ["a", "b"], ["a", "b", "c", "d", "e"]])
def test_ranking_never_contradicts_the_order_and_covers_the_taxonomy(top, confidence) -> None:
    classes = ["a", "b", "c", "d", "e", "f", "g"]
    ranking = ranking_from(top, confidence, classes)
    assert [name for name, _ in ranking][: len(top)] == top
    assert sorted(name for name, _ in ranking) == classes
    probs = [p for _, p in ranking]
    assert sum(probs) == pytest.approx(1.0)
    assert all(x >= y - 1e-12 for x, y in zip(probs, probs[1:]))  # non-increasing
    if confidence is not None and confidence >= 1 / len(classes):
        assert probs[0] == pytest.approx(confidence)


GROUPS = [("Basics", ["What is it?", "What scale?"]), ("Surface", ["Texture?"])]


def test_parse_description_from_json_with_reasoning_rows() -> None:
    text = (
        '{"groups": [{"group": 1, "reasoning": "I see particles.", "answers": ['
        '{"question": 1, "answer": "Nanoparticles."}, {"question": 2, "answer": "About 100 nm."}]},'
        '{"group": 2, "reasoning": "Rough.", "answers": [{"question": 1, "answer": "Grainy."}, '
        '{"question": 9, "answer": "out of range"}]}]}'
    )
    rows = parse_description(text, GROUPS)
    assert [(r.group, r.question, r.answer) for r in rows] == [
        ("Basics", REASONING, "I see particles."),
        ("Basics", "What is it?", "Nanoparticles."),
        ("Basics", "What scale?", "About 100 nm."),
        ("Surface", REASONING, "Rough."),
        ("Surface", "Texture?", "Grainy."),
    ]


def test_parse_description_accepts_titles_and_positions() -> None:
    text = '{"groups": [{"group": "Surface", "reasoning": "", "answers": ["Smooth."]}]}'
    rows = parse_description(text, GROUPS)
    assert [(r.group, r.question, r.answer) for r in rows] == [("Surface", "Texture?", "Smooth.")]


def test_parse_description_from_numbered_lines() -> None:
    rows = parse_description("Q1.1: Wires.\n1.2) Microns.\n2.1 Smooth surface.\n7.1 ignored", GROUPS)
    assert [r.answer for r in rows] == ["Wires.", "Microns.", "Smooth surface."]


def test_parse_question_groups() -> None:
    groups = parse_question_groups('{"groups": [{"title": "Basics", "questions": ["What?", " "]}, {"title": "", "questions": ["x"]}]}')
    assert groups == [("Basics", ["What?"])]
    assert parse_question_groups("nothing") == []
