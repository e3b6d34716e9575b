"""Connection strings as text: masking their password for messages, and telling
Supabase's transaction pooler by its port. Used by the settings (to infer ``POEL_POOLER``)
and by every module that names a database in a message; nothing here connects.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Supabase's transaction pooler (Supavisor) listens on port 6543 of its pooler host.
SUPABASE_POOLER_PORT = 6543


def looks_like_transaction_pooler(dsn: str) -> bool:
    """Whether ``dsn`` points at Supabase's transaction pooler: port 6543 (a URL or a
    ``key=value`` string). Its session pooler (the same ``pooler.supabase.com`` host on
    port 5432) keeps one server connection per client, where LISTEN works."""
    if "://" not in dsn:
        return re.search(rf"(^|\s)port\s*=\s*'?{SUPABASE_POOLER_PORT}\b", dsn) is not None
    try:
        port = urlsplit(dsn).port
    except ValueError:
        return False
    if port is None:  # a multi-host URL or ?port=: look at the query too
        return re.search(rf"[?&]port={SUPABASE_POOLER_PORT}\b", dsn) is not None
    return port == SUPABASE_POOLER_PORT


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for messages."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1********@", dsn)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1********", dsn)
