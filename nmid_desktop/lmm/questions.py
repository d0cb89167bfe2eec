"""Question sets and prompt templates: versioned JSON data, not strings in code.

A question set (``"format": "nmid-question-set"``) holds the groups of questions a
vision model answers to describe an image. The built-in one follows the ten groups
of the GDL-NMID paper for SEM nanomaterials. Other domains need their own
questions (one fixed prompt does not fit steel defects and nanowires alike), so
:func:`generate_question_set` has the text model write one from the domain and
its class names; it is saved as an editable JSON file with a version number.

Where sets are found, first hit wins: an explicit file path; ``<library>/prompts/``;
``<config folder>/prompts/``; the shipped ``resources/prompts/``.

Prompt templates (``"format": "nmid-prompt"``) use ``$name`` placeholders
(:class:`string.Template`), so JSON braces in them need no escaping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.core.jobs import CancelToken
from nmid_desktop.core.paths import config_dir, resources_dir
from nmid_desktop.lmm.cost import CostEstimate, PriceTable, chat_estimate
from nmid_desktop.lmm.parsing import parse_question_groups

QUESTION_SET_FORMAT = "nmid-question-set"
PROMPT_FORMAT = "nmid-prompt"
DEFAULT_QUESTION_SET = "sem-nanomaterials"
_NAME_VERSION = re.compile(r"^(?P<name>[a-z0-9][a-z0-9\-]*?)-v(?P<version>\d+)$")
MAX_GROUPS = 12
MAX_QUESTIONS = 6


# ----------------------------------------------------------------------------- prompt templates

@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file: named ``$placeholder`` texts plus numeric hints.

    Attributes:
        name: e.g. ``predict``.
        version: Integer version; changing a prompt means a new file with a new version.
        texts: Template strings by key (``system``, ``instruction``, ...).
        numbers: Numeric fields (expected output tokens, limits).
    """

    name: str
    version: int
    texts: dict[str, str]
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``<name>-v<version>``, the prompt version recorded with every result."""
        return f"{self.name}-v{self.version}"

    def render(self, key: str, **values: Any) -> str:
        """Fill one text's placeholders.

        Raises:
            ConfigError: If the text is missing or a placeholder has no value.
        """
        if key not in self.texts:
            raise ConfigError(f"prompt {self.id} has no text {key!r}")
        try:
            return string.Template(self.texts[key]).substitute({k: str(v) for k, v in values.items()})
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"prompt {self.id}, text {key!r}: bad placeholder {exc}") from None


def load_prompt(name: str, version: int = 1, folder: Path | None = None) -> PromptTemplate:
    """Load ``<folder or resources/prompts>/<name>-v<version>.json``.

    Raises:
        ConfigError: If the file is missing or not a prompt template.
    """
    path = (folder or resources_dir() / "prompts") / f"{name}-v{version}.json"
    data = _read_json(path)
    if data.get("format") != PROMPT_FORMAT:
        raise ConfigError(f"{path} is not an nmid prompt template")
    texts = {k: v for k, v in data.items() if isinstance(v, str) and k not in ("format", "name")}
    numbers = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and k != "version"}
    return PromptTemplate(str(data.get("name", name)), int(data.get("version", version)), texts, numbers)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


# ----------------------------------------------------------------------------- question sets

@dataclass(frozen=True)
class QuestionSet:
    """Groups of questions for describing one kind of image.

    Attributes:
        name: Lower-case slug, e.g. ``steel-surface-defects``.
        version: Integer version; each saved change gets a new one.
        domain: What the images are, in words, used inside prompts.
        groups: ``(title, questions)`` per group, in order.
        classes: Class names it was written for (may be empty).
        created_by: ``built-in``, ``user`` or the model that wrote it.
        notes: Free text for people.
        path: The file it was read from, if any.
    """

    name: str
    version: int
    domain: str
    groups: list[tuple[str, list[str]]]
    classes: list[str] = field(default_factory=list)
    created_by: str = "user"
    notes: str = ""
    path: Path | None = None

    @property
    def id(self) -> str:
        """``<name>-v<version>``."""
        return f"{self.name}-v{self.version}"

    @property
    def digest(self) -> str:
        """Short hash of domain and questions: an in-place edit of the file changes it."""
        payload = json.dumps([self.domain, self.groups], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:8]

    @property
    def n_questions(self) -> int:
        """Total number of questions."""
        return sum(len(q) for _, q in self.groups)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "format": QUESTION_SET_FORMAT,
            "name": self.name,
            "version": self.version,
            "domain": self.domain,
            "classes": list(self.classes),
            "created_by": self.created_by,
            "notes": self.notes,
            "groups": [{"title": t, "questions": list(q)} for t, q in self.groups],
        }

    def numbered(self) -> str:
        """The questions as the prompt shows them: ``Group 1: Basics`` then ``1.1 ...`` lines."""
        lines: list[str] = []
        for g, (title, questions) in enumerate(self.groups, start=1):
            lines.append(f"Group {g}: {title}")
            lines.extend(f"  {g}.{q} {text}" for q, text in enumerate(questions, start=1))
        return "\n".join(lines)


def slugify(text: str) -> str:
    """A file-safe lower-case name: ``Steel surface defects`` -> ``steel-surface-defects``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")
    return slug[:60].strip("-") or "questions"


def question_set_from_json(data: dict[str, Any], path: Path | None = None) -> QuestionSet:
    """Validate and build a question set.

    Raises:
        ConfigError: If the content is not a valid question set (the message names the file).
    """
    where = str(path) if path else "question set"
    if data.get("format") != QUESTION_SET_FORMAT:
        raise ConfigError(f"{where} is not an nmid question set (format must be {QUESTION_SET_FORMAT!r})")
    name = str(data.get("name") or "").strip()
    if not name or slugify(name) != name:
        raise ConfigError(f"{where}: name must be lower-case letters, digits and hyphens, not {name!r}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{where}: version must be a positive integer")
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise ConfigError(f"{where}: groups must be a non-empty list")
    groups: list[tuple[str, list[str]]] = []
    for i, entry in enumerate(raw_groups, start=1):
        title = str((entry or {}).get("title") or "").strip() if isinstance(entry, dict) else ""
        questions = entry.get("questions") if isinstance(entry, dict) else None
        if not title or not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
            raise ConfigError(f"{where}: group {i} needs a title and a list of non-empty questions")
        if not questions:
            raise ConfigError(f"{where}: group {i} ({title}) has no questions")
        groups.append((title, [q.strip() for q in questions]))
    return QuestionSet(
        name=name,
        version=version,
        domain=str(data.get("domain") or "micrographs"),
        groups=groups,
        classes=[str(c) for c in data.get("classes") or []],
        created_by=str(data.get("created_by") or "user"),
        notes=str(data.get("notes") or ""),
        path=path,
    )


def question_set_folders(library_root: Path | None = None) -> list[Path]:
    """Folders searched for question sets, highest priority first."""
    folders = []
    if library_root is not None:
        folders.append(Path(library_root) / "prompts")
    folders += [config_dir() / "prompts", resources_dir() / "prompts"]
    return folders


def _versions(folder: Path, name: str) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    if folder.is_dir():
        for path in folder.glob(f"{name}-v*.json"):
            match = _NAME_VERSION.match(path.stem)
            if match and match.group("name") == name:
                found.append((int(match.group("version")), path))
    return sorted(found)


def load_question_set(spec: str | Path | None = None, library_root: Path | None = None) -> QuestionSet:
    """Find and load a question set.

    Args:
        spec: A file path, ``name-vN``, or ``name`` (its highest version); None means
            the built-in SEM nanomaterials set.
        library_root: The library folder (its ``prompts/`` is searched first).

    Raises:
        ConfigError: If nothing matches or the file is invalid.
    """
    spec = DEFAULT_QUESTION_SET if spec is None or str(spec) == "" else spec
    as_path = Path(spec)
    if as_path.suffix == ".json" or as_path.is_file():
        return question_set_from_json(_read_json(as_path), as_path)
    text = str(spec)
    match = _NAME_VERSION.match(text)
    folders = question_set_folders(library_root)
    for folder in folders:
        if match:
            path = folder / f"{text}.json"
            if path.is_file():
                return question_set_from_json(_read_json(path), path)
        else:
            versions = _versions(folder, text)
            if versions:
                path = versions[-1][1]
                return question_set_from_json(_read_json(path), path)
    searched = ", ".join(str(f) for f in folders)
    raise ConfigError(f"no question set {text!r} in {searched}; list them with `nmid questions --list`")


def list_question_sets(library_root: Path | None = None) -> list[QuestionSet]:
    """Every readable question set in the searched folders (invalid files are skipped)."""
    found: dict[str, QuestionSet] = {}
    for folder in question_set_folders(library_root):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                data = _read_json(path)
                if data.get("format") != QUESTION_SET_FORMAT:
                    continue
                qs = question_set_from_json(data, path)
            except ConfigError:
                continue
            found.setdefault(qs.id, qs)  # a higher-priority folder wins
    return sorted(found.values(), key=lambda q: (q.name, q.version))


def save_question_set(qs: QuestionSet, folder: Path) -> QuestionSet:
    """Save a question set as ``<folder>/<name>-v<N>.json``, N one above any existing version.

    Returns:
        The saved set, with its new version and path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = _versions(folder, qs.name)
    version = max([qs.version - 1] + [v for v, _ in existing]) + 1
    saved = QuestionSet(qs.name, version, qs.domain, qs.groups, qs.classes, qs.created_by, qs.notes)
    path = folder / f"{saved.id}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qs-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(saved.to_json(), handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return QuestionSet(saved.name, saved.version, saved.domain, saved.groups, saved.classes, saved.created_by, saved.notes, path)


# ----------------------------------------------------------------------------- generation

QUESTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "questions": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["title", "questions"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["groups"],
    "additionalProperties": False,
}


def question_request(domain: str, classes: list[str], model: str, *, n_groups: int = 10) -> tuple[dict[str, Any], PromptTemplate]:
    """The chat request that asks the text model for a question set (without ``response_format``)."""
    template = load_prompt("questions")
    class_text = ", ".join(classes) if classes else "(not given)"
    user = template.render("instruction", domain=domain, classes=class_text, n_groups=n_groups)
    user += "\n\n" + template.render("answer_format")
    request = {
        "model": model,
        "messages": [
            {"role": "system", "content": template.render("system")},
            {"role": "user", "content": user},
        ],
    }
    return request, template


def estimate_question_generation(
    domain: str, classes: list[str], lmm: LmmSettings, prices: PriceTable | None = None
) -> CostEstimate:
    """Cost estimate of one question-set generation."""
    request, template = question_request(domain, classes, lmm.text_model)
    text = "\n".join(m["content"] for m in request["messages"])
    return chat_estimate(
        prices or PriceTable.load(), lmm.text_model, text=text, image_sizes=[], detail=lmm.image_detail,
        max_side=lmm.image_max_side, tokens_out=int(template.numbers.get("output_tokens", 900)),
    )


def generate_question_set(
    client: Any,
    domain: str,
    classes: list[str],
    lmm: LmmSettings,
    *,
    name: str | None = None,
    n_groups: int = 10,
    token: CancelToken | None = None,
) -> tuple[QuestionSet, Any]:
    """Have the text model write a question set for a domain.

    Args:
        client: An :class:`~nmid_desktop.lmm.client.LmmClient`.
        domain: What the images are, e.g. ``"optical images of steel surface defects"``.
        classes: The class names the descriptions should help tell apart.
        lmm: Endpoint settings (``text_model``, ``structured_outputs``).
        name: The set's name; default: from the domain.
        n_groups: Groups asked for (the paper uses ten).
        token: Cancels waits between retries.

    Returns:
        ``(question_set, chat_result)``; the set is not saved yet (version 1, no path).

    Raises:
        NmidError: If the model's answer holds no usable groups.
    """
    if not domain.strip():
        raise NmidError("describe the domain in a few words, e.g. --domain \"steel surface defects\"")
    request, template = question_request(domain, classes, lmm.text_model, n_groups=n_groups)
    result = client.chat_structured(
        request, "question_set", QUESTION_SCHEMA, enabled=lmm.structured_outputs, setting="lmm.text_model", token=token
    )
    if result.refused:
        raise NmidError(f"the text model declined to write questions: {result.refusal or result.finish_reason}")
    groups = parse_question_groups(result.text)
    if len(groups) < 2:
        raise NmidError(
            f"the text model ({lmm.text_model}) did not return a usable question set "
            f"({len(groups)} groups parsed); try again or another model (setting lmm.text_model)"
        )
    groups = [(title[:80], qs[:MAX_QUESTIONS]) for title, qs in groups[:MAX_GROUPS]]
    qs = QuestionSet(
        name=slugify(name or domain),
        version=1,
        domain=domain.strip(),
        groups=groups,
        classes=list(classes),
        created_by=f"{lmm.text_model} via {template.id}",
        notes="Written by a text model; review and edit the questions, then save under a new version.",
    )
    return qs, result
