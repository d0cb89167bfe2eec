"""Which torch device runs the encoders: CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from nmid_desktop.core.errors import ConfigError

_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(preference: str | None = None) -> str:
    """Resolve a device preference to a torch device string.

    Args:
        preference: ``None`` or ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns:
        A string ``torch.device`` accepts, e.g. ``"cuda"`` or ``"cpu"``.

    Raises:
        ConfigError: If the preference is unknown or names a device this machine lacks.
    """
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return "cpu"
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} requested but CUDA is not available on this machine")
        if ":" in pref:
            try:
                index = int(pref.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"device {preference!r} is not of the form cuda:N") from None
            if not 0 <= index < torch.cuda.device_count():
                raise ConfigError(f"device {preference!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return pref
    if pref == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError("device 'mps' requested but Apple MPS is not available on this machine")
        return "mps"
    raise ConfigError(f"unknown device {preference!r}; choose one of {', '.join(_CHOICES)} or cuda:N")
