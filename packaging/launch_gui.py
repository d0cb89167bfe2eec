"""Entry script that PyInstaller freezes: starts the window."""

import sys

from nmid_desktop.qt.app import main

if __name__ == "__main__":
    sys.exit(main())
