"""nmid-desktop: classify electron micrographs by retrieved demonstrations.

The package keeps Qt in ``nmid_desktop.qt`` only; everything else runs headless.
"""

__version__ = "0.1.0"
