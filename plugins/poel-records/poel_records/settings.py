"""Where the records live: ``POEL_RECORDS_TABLE``, read like the host's settings.

The table name comes from configuration, so it is checked here and quoted as an identifier
(``psycopg.sql.Identifier``) when the SQL is composed; it is never formatted in as text.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TABLE = "records"
_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def split_table_name(name: str) -> tuple[str, ...]:
    """``"records"`` or ``"schema.table"`` as its parts; ValueError if it is not one."""
    parts = tuple(name.split("."))
    if not 1 <= len(parts) <= 2 or not all(_PART.match(part) for part in parts):
        raise ValueError(
            f"{name!r} is not a table name: expected 'table' or 'schema.table', each part "
            "letters, digits, _ or $, not starting with a digit, at most 63 characters"
        )
    return parts


class RecordsSettings(BaseSettings):
    """The plugin's settings, from the environment and ``.env`` (as the host reads them)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    table: str = Field(default=DEFAULT_TABLE, validation_alias="POEL_RECORDS_TABLE")

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        split_table_name(value)
        return value

    @property
    def table_parts(self) -> tuple[str, ...]:
        return split_table_name(self.table)
