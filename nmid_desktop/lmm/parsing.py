"""Turning model answers into data: JSON where the model gave JSON, careful text parsing where not.

Servers with structured outputs return exactly the JSON schema asked for. Others
(many local servers, older models) wrap JSON in prose or code fences, or answer in
``key: value`` lines; the parsers here accept all of these and say plainly when
nothing usable was found. Class names are matched exactly after normalising case,
spaces, hyphens and underscores; there is no fuzzy matching, because a wrong
class that merely looks similar must go through the repair request instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nmid_desktop.core.store.base import DescriptionRow

REASONING = "(reasoning)"
"""The ``question`` of a description row that holds a group's step-by-step reasoning."""

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any | None:
    """The first JSON object in a text (bare, fenced, or embedded in prose), or None."""
    text = (text or "").strip()
    if not text:
        return None
    candidates = [text] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    # Scan for a balanced {...}, skipping braces inside strings.
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[start : i + 1])
                    except json.JSONDecodeError:
                        break
                    if isinstance(value, dict):
                        return value
                    break
        start = text.find("{", start + 1)
    return None


def _norm(name: str) -> str:
    name = name.strip().strip("\"'`*.,;:()[]").casefold()
    return re.sub(r"[\s_\-]+", " ", name).strip()


def canonical_label(answer: str | None, classes: Sequence[str]) -> str | None:
    """The class an answer names, spelled as in ``classes``; None when it names none of them."""
    if not answer:
        return None
    wanted = _norm(str(answer))
    for name in classes:
        if _norm(name) == wanted:
            return name
    return None


@dataclass(frozen=True)
class ParsedPrediction:
    """A model's classification answer, before validation against the taxonomy.

    Attributes:
        label_raw: The label as the model wrote it (None when none was found).
        label: ``label_raw`` mapped onto the taxonomy, or None when it is outside it.
        top5: Ranked classes from the answer that are in the taxonomy, ``label`` first.
        confidence: In [0, 1] (percentages are converted), or None when not given.
        rationale: The model's short reason.
    """

    label_raw: str | None
    label: str | None
    top5: list[str] = field(default_factory=list)
    confidence: float | None = None
    rationale: str = ""


def _confidence(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text.rstrip("%").strip())
    except ValueError:
        return None
    if percent or 1.0 < number <= 100.0:
        number /= 100.0
    if not 0.0 <= number <= 1.0:
        return None
    return number


_LINE = {
    "label": re.compile(r"^\s*[*_#\s]*(?:label|class|category|answer)[*_\s]*[:=]\s*(.+?)\s*$", re.I | re.M),
    "top5": re.compile(r"^\s*[*_#\s]*top[\s\-_]*5[*_\s]*[:=]\s*(.+?)\s*$", re.I | re.M),
    "confidence": re.compile(r"^\s*[*_#\s]*confidence[*_\s]*[:=]\s*([0-9.]+\s*%?)", re.I | re.M),
    "rationale": re.compile(r"^\s*[*_#\s]*(?:rationale|reason|because)[*_\s]*[:=]\s*(.+?)\s*$", re.I | re.M),
}


def parse_prediction(text: str, classes: Sequence[str]) -> ParsedPrediction:
    """Parse a classification answer (JSON or ``label: ...`` lines, or a bare class name).

    Args:
        text: The model's message.
        classes: The allowed class names.

    Returns:
        The parsed answer; ``label`` is None when the model named no allowed class.
    """
    data = extract_json(text)
    label_raw: str | None = None
    top: list[Any] = []
    confidence: Any = None
    rationale = ""
    if isinstance(data, dict):
        raw = data.get("label", data.get("class", data.get("category")))
        label_raw = None if raw is None else str(raw)
        top_value = data.get("top5", data.get("top_5", data.get("ranking", [])))
        top = list(top_value) if isinstance(top_value, list) else [top_value]
        confidence = data.get("confidence")
        rationale = str(data.get("rationale") or data.get("reason") or "")
    else:
        found = {key: pattern.search(text or "") for key, pattern in _LINE.items()}
        if found["label"]:
            label_raw = found["label"].group(1)
        elif text and len(text.strip()) <= 80 and "\n" not in text.strip():
            label_raw = text.strip()  # a bare "crazing"
        if found["top5"]:
            top = re.split(r"\s*[,;]\s*", found["top5"].group(1).strip("[] "))
        if found["confidence"]:
            confidence = found["confidence"].group(1)
        if found["rationale"]:
            rationale = found["rationale"].group(1)
    label = canonical_label(label_raw, classes)
    ranked: list[str] = [label] if label else []
    for item in top:
        if isinstance(item, dict):  # {"label": ..., "probability": ...}
            item = item.get("label") or item.get("class")
        name = canonical_label(None if item is None else str(item), classes)
        if name and name not in ranked:
            ranked.append(name)
    return ParsedPrediction(
        label_raw=None if label_raw is None else label_raw.strip(),
        label=label,
        top5=ranked[:5],
        confidence=_confidence(confidence),
        rationale=rationale.strip(),
    )


def ranking_from(
    top5: Sequence[str], confidence: float | None, classes: Sequence[str] = ()
) -> list[tuple[str, float]]:
    """A probability for every ranked class, in the model's order, summing to 1.

    The model reports one confidence and an order, not a distribution. The first
    class gets the confidence (raised to 1/n when lower, since it is ranked first);
    the remainder goes to the others with halving weights by rank (1/2, 1/4, ...),
    capped at the first class's probability with the excess passed down, so the
    probabilities never contradict the order. Without a confidence the halving
    weights are used throughout.

    Args:
        top5: Classes best first, as the model ranked them.
        confidence: The model's probability for the first, or None.
        classes: The whole taxonomy: classes the model did not rank come last and
            share one rank's weight (so the result covers every class). Empty: only ``top5``.

    Returns:
        ``(class, probability)`` pairs in the model's order, then the unranked classes.
    """
    if not top5:
        return []
    ranked = list(dict.fromkeys(top5))
    others = [c for c in classes if c not in ranked]
    names = ranked + others
    n = len(names)
    if n == 1:
        return [(names[0], 1.0)]
    weights = [0.5**i for i in range(len(ranked))]
    if others:
        weights += [0.5 ** len(ranked) / len(others)] * len(others)
    if confidence is None:
        total = sum(weights)
        return [(name, w / total) for name, w in zip(names, weights, strict=True)]
    first = min(1.0, max(float(confidence), 1.0 / n))
    rest_w = weights[1:]
    rest = [(1.0 - first) * w / sum(rest_w) for w in rest_w]
    # Water-filling: no later class may exceed the first; pass any excess down the order.
    for i in range(len(rest)):
        if rest[i] > first:
            excess = rest[i] - first
            rest[i] = first
            tail = sum(rest_w[i + 1 :])
            for j in range(i + 1, len(rest)):
                rest[j] += excess * rest_w[j] / tail
    return [(names[0], first)] + list(zip(names[1:], rest, strict=True))


_ANSWER_LINE = re.compile(r"^\s*(?:Q\s*)?(\d+)\s*[.\-]\s*(\d+)\s*[:.)\]]?\s+(.+?)\s*$", re.M)


def parse_description(text: str, groups: Sequence[tuple[str, Sequence[str]]]) -> list[DescriptionRow]:
    """Parse a group-by-group description into rows.

    Accepts the JSON asked for (``{"groups": [{"group", "reasoning", "answers": [{"question", "answer"}]}]}``,
    groups and questions numbered from 1, or given by title/text) and falls back to
    lines such as ``Q2.3: answer`` / ``2.3 answer``.

    Args:
        text: The model's message.
        groups: The question set: ``(title, questions)`` per group, in order.

    Returns:
        Rows in question-set order: per group its reasoning row (question
        :data:`REASONING`, when given) and one row per answered question.
    """
    answers: dict[tuple[int, int], str] = {}
    reasoning: dict[int, str] = {}
    titles = [_norm(title) for title, _ in groups]
    data = extract_json(text)
    if isinstance(data, dict) and isinstance(data.get("groups"), list):
        for position, entry in enumerate(data["groups"]):
            if not isinstance(entry, dict):
                continue
            g = _index(entry.get("group", entry.get("title")), titles, fallback=position)
            if g is None or g >= len(groups):
                continue
            if entry.get("reasoning"):
                reasoning[g] = str(entry["reasoning"]).strip()
            questions = [_norm(q) for q in groups[g][1]]
            for q_pos, item in enumerate(entry.get("answers") or []):
                if isinstance(item, dict):
                    q = _index(item.get("question"), questions, fallback=q_pos)
                    answer = item.get("answer")
                else:
                    q, answer = q_pos, item
                if q is not None and q < len(groups[g][1]) and answer not in (None, ""):
                    answers[(g, q)] = str(answer).strip()
    else:
        for match in _ANSWER_LINE.finditer(text or ""):
            g, q = int(match.group(1)) - 1, int(match.group(2)) - 1
            if 0 <= g < len(groups) and 0 <= q < len(groups[g][1]):
                answers[(g, q)] = match.group(3)
    rows: list[DescriptionRow] = []
    for g, (title, questions) in enumerate(groups):
        if g in reasoning:
            rows.append(DescriptionRow(title, REASONING, reasoning[g]))
        for q, question in enumerate(questions):
            if (g, q) in answers:
                rows.append(DescriptionRow(title, question, answers[(g, q)]))
    return rows


def _index(value: Any, names: Sequence[str], *, fallback: int) -> int | None:
    """A 1-based number, or a title/text matched among ``names``, as a 0-based index."""
    if isinstance(value, bool):
        return fallback
    if isinstance(value, int):
        return value - 1 if value >= 1 else None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.isdigit():
            return int(stripped) - 1 if int(stripped) >= 1 else None
        wanted = _norm(stripped)
        if wanted in names:
            return names.index(wanted)
    return fallback


def parse_question_groups(text: str) -> list[tuple[str, list[str]]]:
    """Parse a generated question set: ``{"groups": [{"title": ..., "questions": [...]}]}``.

    Returns:
        ``(title, questions)`` per group with non-empty title and questions; [] when none.
    """
    data = extract_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        return []
    groups: list[tuple[str, list[str]]] = []
    for entry in data["groups"]:
        if not isinstance(entry, dict):
            continue
        title = str(entry.get("title") or "").strip()
        raw = entry.get("questions")
        questions = [str(q).strip() for q in raw if str(q).strip()] if isinstance(raw, list) else []
        if title and questions:
            groups.append((title, questions))
    return groups
