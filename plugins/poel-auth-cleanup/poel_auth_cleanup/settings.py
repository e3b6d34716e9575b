"""Which table to clean and how: ``POEL_AUTH_TOKENS_*``, read like the host's settings.

The table and column names come from configuration, so they are checked here and quoted
as identifiers (``psycopg.sql.Identifier``) when the SQL is composed, never formatted in.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TABLE = "auth_tokens"
DEFAULT_EXPIRY_COLUMN = "expires_at"
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 100_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_RULE = "letters, digits, _ or $, not starting with a digit, at most 63 characters"


def split_table_name(name: str) -> tuple[str, ...]:
    """``"auth_tokens"`` or ``"schema.table"`` as its parts; ValueError if it is not one."""
    parts = tuple(name.split("."))
    if not 1 <= len(parts) <= 2 or not all(_NAME.match(part) for part in parts):
        raise ValueError(
            f"{name!r} is not a table name: expected 'table' or 'schema.table', each part {_RULE}"
        )
    return parts


class CleanupSettings(BaseSettings):
    """The plugin's settings, from the environment and ``.env`` (as the host reads them)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    table: str = Field(default=DEFAULT_TABLE, validation_alias="POEL_AUTH_TOKENS_TABLE")
    expiry_column: str = Field(
        default=DEFAULT_EXPIRY_COLUMN, validation_alias="POEL_AUTH_TOKENS_EXPIRY_COLUMN"
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=MAX_BATCH_SIZE,
        validation_alias="POEL_AUTH_CLEANUP_BATCH_SIZE",
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        split_table_name(value)
        return value

    @field_validator("expiry_column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a column name: {_RULE}")
        return value

    @property
    def table_parts(self) -> tuple[str, ...]:
        return split_table_name(self.table)
