"""How long finished things stay (:class:`RetentionSettings`, part of
:class:`~poel_host.settings.Settings`): when a finished job leaves the live table, how
long succeeded and failed ones are kept, and how long a gone worker stays listed. Kept
apart because they are read together when sizing storage for months of load.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# Upper bounds: each ends up in an SQL interval, where a larger one fails at run time.
_DAY_S = 86_400.0
_YEAR_S = 366 * _DAY_S
_CENTURY_H = 100 * 366 * 24


class RetentionSettings(BaseModel):
    """``POEL_ARCHIVE_AFTER_S``, ``POEL_RETAIN_*_HOURS`` and ``POEL_GONE_WORKERS_KEEP_S``."""

    archive_after_s: float = Field(
        default=60,
        ge=0,
        le=_DAY_S,
        allow_inf_nan=False,
        validation_alias="POEL_ARCHIVE_AFTER_S",
    )
    retain_succeeded_hours: float = Field(
        default=24,
        ge=0,
        le=_CENTURY_H,
        allow_inf_nan=False,
        validation_alias="POEL_RETAIN_SUCCEEDED_HOURS",
    )
    retain_failed_hours: float | None = Field(
        default=None,
        ge=0,
        le=_CENTURY_H,
        allow_inf_nan=False,
        validation_alias="POEL_RETAIN_FAILED_HOURS",
    )
    gone_workers_keep_s: float = Field(
        default=3_600,
        ge=0,
        le=_YEAR_S,
        allow_inf_nan=False,
        validation_alias="POEL_GONE_WORKERS_KEEP_S",
    )
