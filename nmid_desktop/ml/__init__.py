"""Machine learning: micrograph encoders, their manifests, SimCLR training and embedding jobs.

Import the submodules directly (``from nmid_desktop.ml.encoders import load_encoder``).

One process-wide setting is made here, before any submodule imports torch: OpenMP
threads wait passively instead of spinning. With the default (active) policy a 2-core
machine with any other busy process ran EfficientNet 2-3x *slower* with 2 threads than
with 1 (each parallel region waits for a descheduled spinning thread); with passive
waiting 2 threads beat 1 again. It only takes effect if torch was not imported yet, and
a value the user set in the environment is kept.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
