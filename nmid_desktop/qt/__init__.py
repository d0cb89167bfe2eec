"""The desktop window: the only package that imports PySide6.

Importing it applies the detected PySide6 work-arounds of :mod:`._compat` before
any signal is emitted.
"""

from nmid_desktop.qt import _compat

_compat.install()
