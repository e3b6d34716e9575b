"""Shared fixtures for poel-host's own tests.

The database fixtures (``poel_dsn``, ``poel_queue``, ``run_job``...) come from
``poel_host.testing``, the pytest plugin Poel ships for plugin authors; this file adds
what only the host's tests need: running ``poel-host`` as a real subprocess.
"""

from __future__ import annotations
