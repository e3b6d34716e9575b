"""Supabase's transaction pooler (port 6543) without POEL_POOLER: polling only, said once.

LISTEN cannot work through a transaction pooler and prepared statements would land on
other server connections, so a DATABASE_URL on port 6543 with POEL_POOLER unset means
``POEL_POOLER=transaction``, and ``serve`` logs a warning that says so and how to undo it.
The session pooler (the same host on port 5432) keeps a server connection per client.
"""

from __future__ import annotations

from typing import Any

import pytest

from poel_host.dsn import looks_like_transaction_pooler
from poel_host.settings import Settings

POOLER = "postgresql://postgres.abcd:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
SESSION = "postgresql://postgres.abcd:secret@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (POOLER, True),
        (SESSION, False),
        ("postgresql://postgres.abcd@aws-0-eu-central-1.pooler.supabase.com/postgres", False),
        ("postgresql://postgres@db.abcd.supabase.co:5432/postgres", False),
        ("host=aws-0.pooler.supabase.com port=6543 dbname=postgres", True),
        ("postgresql://app@/db?host=/run/pgbouncer&port=6543", True),
        ("postgresql://app@db.example:65430/db", False),
    ],
)
def test_which_urls_are_taken_for_the_transaction_pooler(dsn: str, expected: bool) -> None:
    assert looks_like_transaction_pooler(dsn) is expected


def settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def test_pooler_unset_on_port_6543_means_polling_only_and_an_explicit_value_wins() -> None:
    inferred = settings(DATABASE_URL=POOLER)
    assert (inferred.pooler, inferred.pooler_inferred) == ("transaction", True)
    # The process executor's children get it spelled out.
    assert inferred.as_environment()["POEL_POOLER"] == "transaction"
    explicit = settings(DATABASE_URL=POOLER, POEL_POOLER="none")
    assert (explicit.pooler, explicit.pooler_inferred) == ("none", False)
    direct = settings(DATABASE_URL=SESSION)
    assert (direct.pooler, direct.pooler_inferred) == ("none", False)


@pytest.mark.process
def test_serve_warns_that_it_assumed_the_transaction_pooler(serve: Any) -> None:
    # Nothing needs to answer there: the warning comes before the first connection.
    handle = serve(wait=False, DATABASE_URL="postgresql://postgres@127.0.0.1:6543/postgres")

    warning = handle.wait_log("transaction pooler assumed: polling only", timeout=20)

    assert warning["level"] == "warning"
    assert warning["pooler"] == "transaction"
    assert "POEL_POOLER=none" in warning["hint"]
