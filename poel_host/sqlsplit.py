"""Split a SQL script into its statements, for migrations that run outside a transaction.

``CREATE INDEX CONCURRENTLY`` refuses to run in a transaction block, and PostgreSQL runs a
query string of several statements as one implicit transaction, so such a migration is
sent one statement at a time. sqlparse's splitter knows what can hold a ``;`` without
ending a statement: quoted strings (``E'...'`` too), quoted identifiers, comments, dollar
quoting (``$$...$$``, ``$tag$...$tag$``) and ``BEGIN ... END`` bodies. Not understood:
PostgreSQL's nested block comments (``/* /* */ */``); write plain ones. A script that does
not parse (an unterminated quote) is sent as it splits and refused by the server, whose
error names the migration.
"""

from __future__ import annotations

import sqlparse

__all__ = ["split_statements"]


def split_statements(text: str) -> list[str]:
    """The statements of ``text``, each without its ``;``; empty and comment-only ones are
    left out."""
    statements = []
    for piece in sqlparse.split(text):
        if sqlparse.format(piece, strip_comments=True).strip(" \t\r\n;"):
            statements.append(piece.strip().removesuffix(";").rstrip())
    return statements
