"""Checking and encoding payloads before they are stored.

A payload is a JSON object. When the job type's plugin is installed, it must also validate
against the plugin's pydantic model; the stored payload is what the producer sent (the
model is applied again when the job runs, so defaults added later still apply).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from poel_host.errors import InvalidPayload, error_text
from poel_host.jobs import Job

MAX_DEPTH = 64


def to_object(job_type: str, payload: Any) -> dict[str, Any]:
    """The payload as a plain JSON object (a model is dumped in JSON mode)."""
    if payload is None:
        return {}
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    elif isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidPayload(
                f"payload for {job_type!r} is not valid JSON: {exc}", job_type=job_type
            ) from None
        except RecursionError:
            raise InvalidPayload(
                f"payload for {job_type!r} is nested deeper than {MAX_DEPTH} levels",
                job_type=job_type,
            ) from None
    if not isinstance(payload, dict):
        raise InvalidPayload(
            f"payload for {job_type!r} must be a JSON object, got {type(payload).__name__}",
            job_type=job_type,
        )
    return payload


def encode(job_type: str, payload: dict[str, Any], *, max_bytes: int) -> str:
    """The payload as JSON text that PostgreSQL's jsonb accepts, or InvalidPayload."""
    _check_values(job_type, payload, depth=0)
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(
            f"payload for {job_type!r} is not JSON-serialisable: {exc}", job_type=job_type
        ) from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidPayload(
            f"payload for {job_type!r} is {size} bytes, over the limit of {max_bytes} "
            "(POEL_MAX_PAYLOAD_BYTES); store large data elsewhere and enqueue a reference",
            job_type=job_type,
        )
    return text


def _check_values(job_type: str, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidPayload(
            f"payload for {job_type!r} is nested deeper than {MAX_DEPTH} levels",
            job_type=job_type,
        )
    if isinstance(value, str):
        _check_text(job_type, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidPayload(
                    f"payload for {job_type!r} has a non-string key {key!r}", job_type=job_type
                )
            _check_text(job_type, key)
            _check_values(job_type, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_values(job_type, item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidPayload(
            f"payload for {job_type!r} contains {value!r}, which JSON cannot hold",
            job_type=job_type,
        )


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (as text or in jsonb), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid UTF-8"
    return None


def shown(value: object) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def optional_text_problem(name: str, text: object, limit: int) -> str | None:
    """Why ``text`` is not an optional string of at most ``limit`` characters that
    PostgreSQL can store (a message naming ``name``), or None: the one check behind a
    job's queue and unique key and a pause's reason and author."""
    if text is None:
        return None
    if not isinstance(text, str):
        return f"{name} must be a string, got {shown(text)}"
    if len(text) > limit:
        return f"{name} is {len(text)} characters, over the limit of {limit}"
    problem = text_problem(text)
    return f"{name} {problem}" if problem else None


def _check_text(job_type: str, text: str) -> None:
    problem = text_problem(text)
    if problem:
        raise InvalidPayload(f"payload for {job_type!r} {problem}", job_type=job_type)


def validate(job: Job, payload: dict[str, Any]) -> BaseModel:
    """The payload validated into the job's model, or InvalidPayload with pydantic's message."""
    try:
        model: BaseModel = job.schema.model_validate(payload)
        return model
    except ValidationError as exc:
        raise InvalidPayload(describe(job.type, exc), job_type=job.type) from None
    except Exception as exc:  # noqa: BLE001 - a validator's own bug (TypeError, KeyError...)
        raise InvalidPayload(
            f"invalid payload for {job.type!r}: validation raised {error_text(exc)}",
            job_type=job.type,
        ) from None


def describe(job_type: str, exc: ValidationError) -> str:
    """pydantic's errors as one readable line per field."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return f"invalid payload for {job_type!r}: " + "; ".join(parts)
