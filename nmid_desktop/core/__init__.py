"""Headless core: no Qt and no top-level torch import anywhere in this package."""
