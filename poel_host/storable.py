"""Text made storable: what a handler's error, traceback or log field becomes before it
reaches a database column.

A job's error message is the handler's text, and so anything: a NUL byte (an ID3 tag's
raw text is NUL-terminated), a lone surrogate (bytes decoded with ``surrogateescape``),
megabytes of it. PostgreSQL's ``text`` and ``jsonb`` refuse the first, UTF-8 cannot encode
the second, and the third would bloat every row of the error history. One statement
writes the outcomes of a whole batch of jobs, so one such text used to fail every outcome
beside it. The store passes every such text through :func:`storable` at its one boundary
(``Store.finish``); nothing else needs to know. The limits of PostgreSQL's values that
settings and producers check against live here too.
"""

from __future__ import annotations

INT4_MAX = 2**31 - 1  # PostgreSQL's integer: priorities, attempts, statement_timeout (ms)
ERROR_MAX_CHARS = 8_000  # a job's error message (last_error and each history entry)
TRACEBACK_MAX_CHARS = 32_000  # a traceback kept beside it
PROGRESS_MESSAGE_MAX_CHARS = 1_000  # a job's progress message (ctx.progress)
# The longest retry delay a row can hold: 100 years (an interval of more overflows the
# timestamp it is added to, and a plugin's backoff function may return anything).
MAX_DELAY_MS = 100 * 365 * 24 * 3600 * 1000


def storable(text: str, limit: int, *, keep: str = "head") -> str:
    """``text`` without NUL bytes or lone surrogates (written as ``\\x00`` and
    ``\\udcff``, so the reader sees they were there) and at most ``limit`` characters:
    the head is kept for a message, the tail (``keep="tail"``) for a traceback, whose last
    lines say where it was raised."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    note = f" [... {cut:,} characters cut ...] "
    if keep == "tail":
        return note + text[-(limit - len(note)) :]
    return text[: limit - len(note)] + note


def storable_error(text: str | None) -> str | None:
    return None if text is None else storable(text, ERROR_MAX_CHARS)


def storable_traceback(text: str | None) -> str | None:
    return None if text is None else storable(text, TRACEBACK_MAX_CHARS, keep="tail")


def storable_message(text: str | None) -> str | None:
    """A progress message (ctx.progress) as it can be stored."""
    return None if text is None else storable(text, PROGRESS_MESSAGE_MAX_CHARS)


def storable_delay_ms(delay_ms: float) -> int:
    """A retry delay clamped to what a timestamp can hold (0 for NaN or a negative)."""
    if not delay_ms > 0:  # NaN too
        return 0
    return int(min(delay_ms, MAX_DELAY_MS))
