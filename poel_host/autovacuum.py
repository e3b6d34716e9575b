"""Whether autovacuum can clean the jobs table: checked once as ``serve`` starts.

A queue's table churns: every job leaves dead row versions behind (its claim, its
outcome, each lease renewal), and only vacuum removes them. With autovacuum off, for the
whole server or for the jobs table alone, nothing fails: they pile up, the table and its
claim index grow, and claims, so every job's latency, get slower week after week (on a
server with autovacuum off, 715,000 jobs left 1.4 million dead row versions, the claim
index grew from 0.09 to 12 MB and the median latency from 6.6 to 11.2 ms, still
climbing: issue 18). So ``serve`` says so once, at start, with what to change; ``/metrics`` shows
the dead row versions and the age of the last vacuum from then on (the README's "What to
watch on the server").

The settings are read from the catalogs on the connection that migrated the schema. A
role that cannot read them (or an error of any kind) only skips the check, logged at
debug: it never stops a worker from starting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import psycopg

from poel_host.errors import DatabaseUnavailable, one_line
from poel_host.store import Conn, Store

WARNING = "autovacuum is off for the jobs table"
WHY = (
    "dead row versions of claimed and finished jobs are never cleaned up: they pile up, the "
    "jobs table and its claim index keep growing and claims slow down, so job latency "
    "climbs until a VACUUM runs (watch poel_jobs_table_dead_tuples on /metrics)"
)


def quoted(name: str) -> str:
    """``name`` as SQL spells it: bare if it is a plain lower-case identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def autovacuum_off(settings: Mapping[str, Any] | None, schema: str) -> dict[str, Any] | None:
    """The warning's fields when ``settings`` (the ``autovacuum_settings`` row) say that
    autovacuum cannot clean the jobs table; None when it can, or without the table."""
    if settings is None:
        return None
    table = f"{quoted(schema)}.jobs"
    off: list[str] = []
    fixes: list[str] = []  # the server's settings, then a reload, then the table's
    if not settings["server_autovacuum"]:
        off.append("the server's autovacuum setting is off")
        fixes.append("ALTER SYSTEM SET autovacuum = on (or set it in postgresql.conf)")
    if not settings["track_counts"]:
        off.append("the server's track_counts setting is off (autovacuum needs it)")
        fixes.append("ALTER SYSTEM SET track_counts = on")
    if fixes:
        fixes.append("SELECT pg_reload_conf()")
    if settings["table_autovacuum"] is False:
        off.append(f"the table option autovacuum_enabled = false on {table}")
        fixes.append(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    if not off:
        return None
    return {"table": table, "off": off, "why": WHY, "hint": "; ".join(fixes)}


def check_autovacuum(store: Store, conn: Conn, log: Any) -> None:
    """Log WARNING if autovacuum cannot clean the jobs table; never raise."""
    try:
        settings = store.autovacuum_settings(conn)
    except (DatabaseUnavailable, psycopg.Error) as exc:
        log.debug("autovacuum settings not readable; not checked", error=one_line(exc))
        return
    fields = autovacuum_off(settings, store.schema)
    if fields is not None:
        log.warning(WARNING, **fields)
