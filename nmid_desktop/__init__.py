"""nmid-desktop: classify electron micrographs by retrieved demonstrations.

The package keeps Qt in ``nmid_desktop.qt`` only; everything else runs headless.
"""

__version__ = "0.1.0"

import os as _os

# Before torch is first imported anywhere: with OpenMP's default busy-wait, 2 threads ran
# 2-3x slower than 1 whenever anything else used the CPU (a GUI, a second job).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
