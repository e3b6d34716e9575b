"""Poel plugin: ``process_new_record``."""

__version__ = "0.1.0"
