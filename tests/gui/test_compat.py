"""PySide6's lost references to None/True/False are compensated: Qt calls can be made without limit."""

from __future__ import annotations

import subprocess
import sys

from PySide6.QtCore import QObject, QTimer, Signal

import nmid_desktop.qt  # noqa: F401  (installs the work-around)
from nmid_desktop.qt import _compat


class _Emitter(QObject):
    fired = Signal(int)


def test_void_calls_and_emits_cannot_exhaust_the_singletons(qapp):
    emitter = _Emitter()
    timer = QTimer()
    # More calls than None had references before the work-around (about 60,000 with torch loaded):
    # unpatched PySide6 6.12 on Python 3.11 aborts the interpreter in this loop.
    for _ in range(150_000):
        emitter.setObjectName("x")
        emitter.fired.emit(1)
        timer.stop()
    # Reaching this line is the check (the unpatched interpreter aborts inside the loop); the counts
    # must also not have fallen towards zero, which is how the abort comes about.
    assert sys.getrefcount(None) > 1000 and sys.getrefcount(True) > 1000


def test_the_loss_is_measured_not_assumed():
    # In a fresh interpreter: the probe finds the loss exactly where the work-around is applied.
    code = (
        "import os; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "from nmid_desktop.qt import _compat\n"
        "losses = _compat.singleton_losses()\n"
        "applied = _compat.install()\n"
        "print(any(losses.values()), applied, _compat.singleton_losses()['None'] if applied else 'n/a')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lost, applied, _ = out.stdout.split()
    assert lost == applied  # applied exactly when PySide6 loses references
    if applied == "True":
        assert sys.getrefcount(None) > 1 << 40  # this process got the same treatment at import
    assert _compat.install() is (applied == "True")
