"""Split a SQL script into its statements, for migrations that run outside a transaction.

``CREATE INDEX CONCURRENTLY`` refuses to run in a transaction block, and PostgreSQL runs a
query string of several statements as one implicit transaction, so such a migration is
sent one statement at a time. Only the lexical parts of PostgreSQL's grammar that can hold
a ``;`` matter here: quoted strings (``'...'``, ``E'...'`` with backslash escapes), quoted
identifiers, ``--`` and (nested) ``/* */`` comments, and dollar quoting (``$$...$$``,
``$tag$...$tag$``). A small scanner of those is written here rather than depending on a
full parser (``pglast`` wraps PostgreSQL's own, but is a compiled package tied to one
server version, for a few lines of DDL). Not understood: a SQL-standard function body
(``BEGIN ATOMIC ... END``), whose inner ``;`` would split it; write such a function in a
migration that runs in a transaction, or with a dollar-quoted body.
"""

from __future__ import annotations

import re

__all__ = ["split_statements"]

# A dollar-quote tag: $$ or $name$ (a name does not start with a digit: $1 is a parameter).
_DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_IDENT_CHAR = re.compile(r"[\w$\x80-\uffff]")


def split_statements(text: str) -> list[str]:
    """The statements of ``text``, each without its ``;``; empty and comment-only ones are
    left out. Raises ValueError for an unterminated quote, comment or dollar quote."""
    statements: list[str] = []
    start, i, n = 0, 0, len(text)
    meaningful = False  # whether the current statement holds more than blanks and comments
    while i < n:
        char = text[i]
        if char == ";":
            if meaningful:
                statements.append(text[start:i].strip())
            start, i, meaningful = i + 1, i + 1, False
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif char == "'":
            escapes = i > 0 and text[i - 1] in "eE" and not _ident_before(text, i - 1)
            i, meaningful = _skip_string(text, i, "'", backslash=escapes), True
        elif char == '"':
            i, meaningful = _skip_string(text, i, '"', backslash=False), True
        elif char == "$" and not _ident_before(text, i):
            match = _DOLLAR.match(text, i)
            if match:
                end = text.find(match.group(), match.end())
                if end < 0:
                    raise ValueError(f"unterminated dollar quote {match.group()} at {i}")
                i = end + len(match.group())
            else:
                i += 1
            meaningful = True
        else:
            if not char.isspace():
                meaningful = True
            i += 1
    if meaningful:
        statements.append(text[start:].strip())
    return statements


def _ident_before(text: str, i: int) -> bool:
    """Whether ``text[i]`` continues an identifier (so ``a$b$`` and ``one'`` are no quote)."""
    return i > 0 and bool(_IDENT_CHAR.match(text[i - 1]))


def _skip_block_comment(text: str, i: int) -> int:
    depth, i = 1, i + 2
    while depth:
        if i >= len(text):
            raise ValueError("unterminated /* comment")
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _skip_string(text: str, i: int, quote: str, *, backslash: bool) -> int:
    """The index after the string opened at ``i`` (a doubled quote stays inside)."""
    i += 1
    while i < len(text):
        if backslash and text[i] == "\\":
            i += 2
        elif text[i] == quote:
            if text.startswith(quote, i + 1):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise ValueError(f"unterminated {quote} quote")
