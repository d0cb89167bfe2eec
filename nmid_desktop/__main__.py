"""``python -m nmid_desktop``: the same as the ``nmid`` command."""

import sys

from nmid_desktop.cli import main

sys.exit(main())
