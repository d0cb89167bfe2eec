"""Sub-commands of ``nmid``: one module per area, each with ``register(subparsers)``."""
