"""Work-arounds for defects of the installed PySide6, each detected, never assumed.

PySide6 6.12.0 on CPython 3.11 returns ``None``, ``True`` and ``False`` from its
functions without taking a reference to them: every call of a void Qt method
(``label.setText``, ``timer.start``, ``processEvents``) lowers the reference count
of ``None`` by one, and every ``signal.emit()`` that of ``True``. After some
tens of thousands of calls the count reaches zero and the interpreter aborts
with "Fatal Python error: none_dealloc: deallocating None" (or ``bool_dealloc``).
CPython 3.12 made these singletons immortal, which hides the defect there;
6.12 was evidently built and tested with that assumption.

:func:`install` measures the loss once, on a private object. Where it exists, it
gives the three singletons what CPython 3.12 gives them: a reference count so
large that no run can exhaust it (the count is only a number; these objects are
statically allocated and never freed). A fixed PySide6, or Python 3.12+,
measures no loss and is left untouched.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

_PROBE_CALLS = 64
# About 2**42 decrements away from zero: decades of calls at millions per second.
_IMMORTAL_TOP_UP = 1 << 42
_installed = False


class _Probe(QObject):
    fired = Signal(int)


def _loses_references(call: Callable[[], object], obj: object) -> bool:
    """Whether each call of ``call`` leaves ``obj`` with one reference fewer."""
    before = sys.getrefcount(obj)
    for _ in range(_PROBE_CALLS):
        call()
    lost = before - sys.getrefcount(obj)
    return lost >= _PROBE_CALLS // 2  # noise from other threads cannot reach half


def _top_up(obj: object) -> None:
    """Add a huge number to a CPython object's reference count (its first field, ``ob_refcnt``)."""
    refcnt = ctypes.c_ssize_t.from_address(id(obj))
    refcnt.value += _IMMORTAL_TOP_UP


def singleton_losses() -> dict[str, bool]:
    """Which singletons PySide6 calls lose references to (measured now)."""
    probe = _Probe()
    return {
        "None": _loses_references(lambda: probe.setObjectName("probe"), None),
        "True": _loses_references(lambda: probe.fired.emit(1), True),
        "False": _loses_references(lambda: probe.signalsBlocked(), False),
    }


def install() -> bool:
    """Detect the lost references and make None, True and False immortal if needed (idempotent).

    Returns:
        True when the work-around was applied (now or earlier).
    """
    global _installed
    if _installed:
        return True
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False  # immortal singletons already (or no reference counts to fix)
    losses = singleton_losses()
    if not any(losses.values()):
        return False
    for obj in (None, True, False):
        _top_up(obj)
    _installed = True
    log.debug("PySide6 loses references to %s; made them immortal", [k for k, v in losses.items() if v])
    return True
