"""Poel plugin: ``cleanup_auth_tokens``."""

__version__ = "0.1.0"
