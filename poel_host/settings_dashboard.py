"""The dashboard's settings (:class:`DashboardSettings`, part of
:class:`~poel_host.settings.Settings`): where it listens, who may sign in, how long a
session lasts, and which proxies it believes. Kept apart because they are the dashboard's
security settings, read together when reviewing who can see what.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator


def comma_list(value: str) -> list[str]:
    """The parts of a comma-separated setting, stripped, empty ones dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


class DashboardSettings(BaseModel):
    """The ``POEL_DASHBOARD_*`` variables."""

    dashboard_host: str = Field(default="127.0.0.1", validation_alias="POEL_DASHBOARD_HOST")
    dashboard_port: int = Field(
        default=8081, ge=0, le=65_535, validation_alias="POEL_DASHBOARD_PORT"
    )
    dashboard_token: SecretStr | None = Field(default=None, validation_alias="POEL_DASHBOARD_TOKEN")
    dashboard_payloads: Literal["shown", "hidden"] | None = Field(
        default=None, validation_alias="POEL_DASHBOARD_PAYLOADS"
    )
    dashboard_session_hours: float = Field(
        default=12,
        gt=0,
        le=720,
        allow_inf_nan=False,
        validation_alias="POEL_DASHBOARD_SESSION_HOURS",
    )
    dashboard_secure_cookies: Literal["auto", "always"] = Field(
        default="auto", validation_alias="POEL_DASHBOARD_SECURE_COOKIES"
    )
    dashboard_trusted_proxies: str | None = Field(
        default=None, validation_alias="POEL_DASHBOARD_TRUSTED_PROXIES"
    )

    @field_validator("dashboard_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random string)")
        return value

    @field_validator("dashboard_trusted_proxies")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        for part in comma_list(value or ""):
            ipaddress.ip_network(part, strict=False)  # a ValueError names the bad part
        return value

    @property
    def trusted_proxies(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The proxies whose X-Forwarded-For and X-Forwarded-Proto the dashboard believes."""
        parts = comma_list(self.dashboard_trusted_proxies or "")
        return [ipaddress.ip_network(part, strict=False) for part in parts]
