"""The endpoint's models (``GET /v1/models``) and checks of the configured model names.

Model names change and models retire (GPT-4V and DALL-E 3 are gone from OpenAI's
API), so every model is a setting and is checked against the endpoint's own list:

* a model whose ``shutdown_date`` has passed is refused before a batch starts,
  with one message naming the setting to change;
* a model the list does not contain gets a warning only, because some servers
  list base models while requests name deployments (Azure) or accept a tag-less
  name (Ollama's ``llava`` for ``llava:latest``). If it really is unknown, the
  first call fails with a 404, which the client turns into the same kind of message;
* a server without ``/v1/models`` is not an error: the check is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from nmid_desktop.core.config import LmmSettings
from nmid_desktop.lmm.client import LmmClient, ModelUnavailableError, RequestRejectedError

log = logging.getLogger(__name__)

MODEL_SETTINGS = ("vision_model", "text_model", "image_model")


@dataclass(frozen=True)
class ModelInfo:
    """One model the endpoint offers.

    Attributes:
        id: The name to put in a setting.
        owned_by: Owner as reported.
        created: Creation time (UTC), when reported.
        shutdown_date: The announced (or passed) shutdown date, when reported.
    """

    id: str
    owned_by: str = ""
    created: datetime | None = None
    shutdown_date: date | None = None

    def retired(self, today: date | None = None) -> bool:
        """True when the shutdown date is today or earlier."""
        return self.shutdown_date is not None and self.shutdown_date <= (today or date.today())


def _timestamp(value: Any) -> datetime | None:
    """A UTC time from seconds since 1970, or None for anything odd (bool, nan, year 30000)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _parse_date(value: Any) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = _timestamp(value)
        return moment.date() if moment is not None else None
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        log.debug("unreadable shutdown_date %r", value)
        return None


def model_info(entry: dict[str, Any]) -> ModelInfo:
    """A :class:`ModelInfo` from one ``/v1/models`` entry; odd fields are dropped, never fatal."""
    if not isinstance(entry, dict):
        return ModelInfo(id="")
    return ModelInfo(
        id=str(entry.get("id") or ""),
        owned_by=str(entry.get("owned_by") or ""),
        created=_timestamp(entry.get("created")),
        shutdown_date=_parse_date(entry.get("shutdown_date")),
    )


def list_models(client: LmmClient, *, refresh: bool = False) -> list[ModelInfo]:
    """The endpoint's models, sorted by id."""
    models = (model_info(m) for m in client.list_models(refresh=refresh))
    return sorted((m for m in models if m.id), key=lambda m: m.id)


def _find(models: list[ModelInfo], name: str) -> ModelInfo | None:
    for model in models:
        if model.id == name:
            return model
    if ":" not in name:  # Ollama: "llava" means "llava:latest"
        for model in models:
            if model.id == f"{name}:latest":
                return model
    return None


def model_problem(models: list[ModelInfo], setting: str, name: str, today: date | None = None) -> str | None:
    """A message when the model named by ``setting`` is retired or not listed; None when fine.

    Args:
        models: The endpoint's list.
        setting: The setting's full name, e.g. ``lmm.vision_model``.
        name: Its value.
        today: For tests; defaults to today's date.
    """
    if not name:
        return f"setting {setting} is empty; choose a model with `nmid models`"
    found = _find(models, name)
    if found is None:
        return f"setting {setting}: model '{name}' is not listed by this endpoint; choose another with `nmid models`"
    if found.retired(today) and found.shutdown_date is not None:
        return (
            f"setting {setting}: model '{name}' was shut down on {found.shutdown_date.isoformat()}; "
            "choose another with `nmid models`"
        )
    return None


def configured_model_problems(models: list[ModelInfo], lmm: LmmSettings, today: date | None = None) -> list[str]:
    """Problems with all three model settings (vision, text, image)."""
    problems = []
    for attr in MODEL_SETTINGS:
        problem = model_problem(models, f"lmm.{attr}", getattr(lmm, attr), today)
        if problem:
            problems.append(problem)
    return problems


def require_model(client: LmmClient, setting: str, name: str, today: date | None = None) -> None:
    """Refuse a retired model before a batch starts; warn about one that is not listed.

    Raises:
        ModelUnavailableError: If the endpoint lists the model with a past shutdown date.
    """
    try:
        models = list_models(client)
    except RequestRejectedError as exc:  # no /v1/models on this server: nothing to check
        log.info("cannot list models (%s); skipping the model check", exc)
        return
    problem = model_problem(models, setting, name, today)
    if problem is None:
        return
    found = _find(models, name)
    if found is not None and found.retired(today):
        raise ModelUnavailableError(problem)
    log.warning("%s", problem)


def format_models(models: list[ModelInfo], lmm: LmmSettings, today: date | None = None) -> str:
    """A table for ``nmid models``: id, owner, shutdown date, and which setting uses it."""
    today = today or date.today()
    used: dict[str, list[str]] = {}
    for attr in MODEL_SETTINGS:
        used.setdefault(getattr(lmm, attr), []).append(f"lmm.{attr}")
    width = max([len(m.id) for m in models] + [5])
    lines = [f"{'MODEL':<{width}}  {'OWNER':<16}  {'SHUTDOWN':<10}  USED BY"]
    for model in models:
        shutdown = model.shutdown_date.isoformat() if model.shutdown_date else ""
        if model.retired(today):
            shutdown += " (gone)"
        settings = ", ".join(used.get(model.id, []) or used.get(model.id.removesuffix(":latest"), []))
        lines.append(f"{model.id:<{width}}  {model.owned_by[:16]:<16}  {shutdown:<10}  {settings}".rstrip())
    return "\n".join(lines)
