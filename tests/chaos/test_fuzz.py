"""Hypothesis fuzzing: payloads through Queue.enqueue (a valid JSON object round-trips
exactly, an invalid one is an InvalidPayload before anything is sent) and settings (any
environment is either accepted with values the worker can use, or one SettingsError;
never a traceback).

Runs without serve processes; marked chaos with the rest of the bad-input suite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poel_host import Queue
from poel_host.database import connection
from poel_host.errors import InvalidPayload, SettingsError
from poel_host.payloads import MAX_DEPTH, to_object
from poel_host.settings import Settings, load_settings
from poel_host.testing import create_database, drop_database, dsn_for

pytestmark = pytest.mark.chaos

FUZZ = settings(
    database=None,  # no .hypothesis folder in the checkout
    deadline=None,  # the database's latency is not the subject
    suppress_health_check=[HealthCheck.too_slow],
)
NO_SERVER = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"

# Payloads -------------------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=25,
)
objects = st.dictionaries(text, values, max_size=6)


def same(a: object, b: object) -> bool:
    """Equal as JSON values: numbers by their decimal value (jsonb keeps numbers as
    numeric, so 1e+23 comes back as the integer 100000000000000000000000), bools apart
    from numbers, strings, lists and objects exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return Decimal(repr(a)) == Decimal(repr(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def fuzz_dsn(poel_template: str) -> Iterator[str]:
    """One database for the module (hypothesis runs many examples per test)."""
    name = f"poel_fuzz_{os.getpid()}"
    create_database(name, template=poel_template)
    yield dsn_for(name)
    drop_database(name)


@pytest.fixture(scope="module")
def fuzz_queue(fuzz_dsn: str) -> Iterator[Queue]:
    with Queue(fuzz_dsn, jobs={}, allow_unknown=True) as queue:
        yield queue


@pytest.fixture(scope="module")
def reader(fuzz_dsn: str):
    with connection(fuzz_dsn) as conn:
        yield conn


@settings(FUZZ, max_examples=300)
@given(payload=objects)
def test_valid_json_objects_round_trip_exactly(fuzz_queue, reader, payload):
    job_id = fuzz_queue.enqueue("fuzz.any", payload)
    row = reader.execute(
        "SELECT payload, payload::text AS text FROM poel.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert same(row["payload"], payload), (row["payload"], payload)
    # what the worker parses (claim_jobs returns the payload as text)
    assert same(to_object("fuzz.any", row["text"]), payload)
    # and as JSON text, the same
    again = fuzz_queue.enqueue("fuzz.any", json.dumps(payload))
    assert same(
        reader.execute("SELECT payload FROM poel.jobs WHERE id = %s", [again]).fetchone()[
            "payload"
        ],
        payload,
    )


def deep(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


bad_leaf = st.one_of(
    st.text(min_size=0, max_size=5).map(lambda t: t + "\x00"),
    st.sampled_from(["\ud800", "\udfff", "a\udc80"]),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.builds(set, st.lists(st.integers(), max_size=2)),
    st.binary(max_size=5),
    st.builds(complex, st.floats(allow_nan=False), st.floats(allow_nan=False)),
    st.builds(object),
    st.integers(min_value=MAX_DEPTH + 1, max_value=300).map(deep),
    st.integers(min_value=4301, max_value=6000).map(lambda n: 10**n),
)
bad_key = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.tuples(st.integers()),
    st.none(),
    st.just("k\x00"),
    st.just("\ud800"),
)


@st.composite
def invalid_payloads(draw):
    base = draw(objects)
    how = draw(st.sampled_from(["leaf", "key", "top", "text"]))
    if how == "leaf":  # a bad value somewhere inside a valid object
        leaf = draw(bad_leaf)
        holder = draw(st.sampled_from(["direct", "list", "object"]))
        base[draw(text)] = {"direct": leaf, "list": [1, leaf], "object": {"x": leaf}}[holder]
        return base
    if how == "key":
        base[draw(bad_key)] = 1
        return base
    if how == "top":  # JSON, but not an object
        return draw(
            st.one_of(
                st.lists(values, max_size=3),
                scalars.filter(lambda v: v is not None and not isinstance(v, str)),
            )
        )
    raw = draw(st.text(max_size=30))  # text that is not a JSON object
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    return raw if not isinstance(parsed, dict) else raw + "}"


@settings(FUZZ, max_examples=500)
@given(payload=invalid_payloads())
def test_invalid_payloads_raise_invalid_payload(payload):
    # This Queue's server does not exist: a payload that got past validation would raise
    # DatabaseUnavailable instead.
    with (
        Queue(NO_SERVER, jobs={}, allow_unknown=True) as queue,
        pytest.raises(InvalidPayload) as info,
    ):
        queue.enqueue("fuzz.any", payload)
    assert str(info.value) and "\n" not in str(info.value)


# Settings -------------------------------------------------------------------------------

VARIABLES = sorted(str(f.validation_alias) for f in Settings.model_fields.values())
SECRETS = {"DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"}
# What the environment can hold: any text without NUL (undecodable bytes arrive as lone
# surrogates), with numbers and their edge cases over-represented.
env_values = st.one_of(
    st.text(st.characters(blacklist_characters="\x00"), max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1",
            "1e300",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "1.5",
            "true",
            "no",
            "99999999999999999999999",
            str(2**31),
            str(2**63),
            "0x10",
            "1_000",
            " 5 ",
            "postgresql://u:pw@h/db",
            "https://x",
            "production",
            "console",
            "debug",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),
)
environments = st.dictionaries(st.sampled_from(VARIABLES), env_values, max_size=6)

# What the worker does with each accepted number (intervals in SQL, statement_timeout,
# gevent timers) has limits: an accepted value must be within them, or it would fail at
# run time ("interval out of range") instead of at start-up.
INT4 = 2**31 - 1
BOUNDED = {
    "job_timeout_ms": INT4,
    "poll_interval_ms": INT4,
    "lease_ms": INT4,
    "shutdown_timeout_ms": INT4,
    "retry_backoff_ms": 10**12,  # milliseconds added to now(): about 31 years
    "retry_backoff_max_ms": 10**12,
    "connect_timeout_s": INT4,
    "blocking_warn_ms": INT4,
    "max_payload_bytes": 2**28,  # jsonb holds at most 255 MB
    "retain_succeeded_hours": 10**6,
    "retain_failed_hours": 10**6,
}


@pytest.fixture(scope="module")
def no_dotenv(tmp_path_factory) -> Iterator[None]:
    """Run in an empty folder (no .env) with none of Poel's variables inherited."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in VARIABLES}
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("settings"))
    yield
    os.chdir(cwd)
    os.environ.update(saved)


@settings(FUZZ, max_examples=500)
@given(env=environments)
def test_any_environment_is_accepted_usably_or_one_settings_error(no_dotenv, env):
    try:
        s = load_settings(**env)
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith("invalid configuration:")
        for name, value in env.items():
            others = [v for k, v in env.items() if k != name]
            if name in SECRETS and len(value.strip()) >= 6 and value not in str(others):
                assert value not in message, "a secret was echoed"
        return
    for name, limit in BOUNDED.items():
        value = getattr(s, name)
        if value is not None:
            assert math.isfinite(value) and 0 <= value <= limit, (name, value)


@settings(FUZZ, max_examples=6)
@given(env=environments.filter(bool))
def test_cli_with_any_environment_exits_cleanly(no_dotenv, env):
    """The command line with the same environments: a clean exit or exit 2 with the
    message, never a traceback."""
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    encoded = {k: v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    done = subprocess.run(
        [sys.executable, "-m", "poel_host", "plugins", "--json"],
        env={
            **{k.encode(): v.encode() for k, v in clean.items()},
            **{k.encode(): v for k, v in encoded.items()},
        },
        cwd=Path.cwd(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert done.returncode in (0, 2, 3), (done.returncode, stderr)
    if done.returncode == 2:
        assert stderr.startswith("poel-host: error: invalid configuration:"), stderr
