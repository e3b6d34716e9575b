"""A handler's result and progress, checked where they are made.

A handler's return value is kept with its job as ``jsonb`` (read back by
``Queue.result``); ``ctx.progress(fraction, message)`` reports how far a running job got.
Both are checked here, in the handler's executor, before anything reaches the worker's
batched statements: a value PostgreSQL would refuse (a NUL character, which neither
``text`` nor ``jsonb`` holds), that JSON cannot say (NaN, an object), or that is too big
then fails its own job with a message saying why, instead of failing the statement that
writes a whole batch of outcomes (see ``completer.py``). Imports nothing heavy: a child
process and the test kit use it too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

DEFAULT_MAX_RESULT_BYTES = 1_048_576  # POEL_MAX_RESULT_BYTES
# "\u0000" as json.dumps writes a NUL character: an odd number of backslashes before it
# (an even number is an escaped backslash followed by the text "u0000").
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class ResultError(Exception):
    """A handler's return value cannot be kept as its job's result (the job fails)."""


def encode_result(value: Any, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> str | None:
    """``value`` as the JSON text stored as the job's result; None for None.

    :raises ResultError: naming why: not JSON-serialisable (a set, an object), NaN or
        infinity, a NUL character, or more than ``max_bytes`` bytes of JSON
        (``POEL_MAX_RESULT_BYTES``)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise ResultError("the handler's return value is nested too deeply for JSON") from None
    except ValueError as exc:  # NaN/inf, or a circular reference
        raise ResultError(f"the handler's return value cannot be stored as JSON: {exc}") from None
    except TypeError as exc:
        raise ResultError(
            f"the handler's return value is not JSON-serialisable ({exc}); return dicts, "
            "lists, strings, numbers, booleans or None"
        ) from None
    if _NUL.search(text):
        raise ResultError(
            "the handler's return value holds a NUL character (\\u0000), which PostgreSQL's "
            "jsonb cannot store"
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ResultError(
            "the handler's return value holds a lone surrogate character, which is not UTF-8"
        ) from None
    if size > max_bytes:
        raise ResultError(
            f"the handler's return value is {size:,} bytes of JSON, over the "
            f"{max_bytes:,} that POEL_MAX_RESULT_BYTES allows: store large results "
            "elsewhere (a bucket, a table) and return where they are"
        )
    return text


def check_progress(fraction: Any, message: Any) -> tuple[float, str | None]:
    """The ``(fraction, message)`` of a ``ctx.progress`` call, checked.

    :raises ValueError: ``fraction`` is not a number from 0 to 1 (NaN, infinity and
        booleans included), or ``message`` is neither a string nor None."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
    value = float(fraction)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"progress message must be a string or None, got {message!r}")
    return value, message
