"""Entry script that PyInstaller freezes as the bundle's second executable: the ``nmid`` command."""

import sys

from nmid_desktop.cli import main

if __name__ == "__main__":
    sys.exit(main())
