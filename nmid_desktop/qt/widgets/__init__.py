"""Widgets of the main window, one role per module."""
