"""Rendering the dashboard's pages: bottle's SimpleTemplate files in ``templates/``, where
``{{value}}`` is always HTML-escaped (a job's payload or error holding ``<script>`` is shown
as text), and the helpers the templates use."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

import bottle


@dataclass(frozen=True)
class Clipped:
    """A long text cut for display: ``text`` (its start) and whether it was cut."""

    text: str
    cut: bool
    length: int


def clip(text: str, limit: int | None) -> Clipped:
    if limit is None or len(text) <= limit:
        return Clipped(text, False, len(text))
    return Clipped(text[:limit], True, len(text))


def ago(seconds: float | None) -> str:
    """A duration for people: 4.2s, 3m 10s, 2h 5m, 3d 4h."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60)}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60)}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@functools.cache
def _folder() -> str:
    return str(resources.files("poel_host").joinpath("dashboard").joinpath("templates"))


@functools.cache
def _template(name: str) -> bottle.SimpleTemplate:
    return bottle.SimpleTemplate(name=name, lookup=[_folder()])


def render(name: str, **values: Any) -> str:
    text: str = _template(name).render(ago=ago, when=when, q=quote, **values)
    return text
