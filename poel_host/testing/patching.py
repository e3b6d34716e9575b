"""The opt-in to gevent's patching of a test session, read before any conftest is imported.

The kit is a pytest plugin of every session in an environment where poel-host is
installed, a web application's that only enqueues included. Patching the standard library
there would change how that application's tests run, so a session is patched only when
its project asks: ``poel_gevent = true`` in its pytest configuration, or ``--poel-gevent``.

The patch must come before anything imports psycopg (psycopg chooses a blocking or a
cooperative wait function when it is imported), and conftest files and test modules do.
``pytest_load_initial_conftests`` is the first hook that sees both the ini file and the
command line, and runs before the initial conftests (pytest's own implementation is
``trylast``; this one is ``tryfirst``, before other plugins' too). This module imports
nothing but pytest until then, and gevent only to patch.
"""

from __future__ import annotations

import warnings

import pytest

INI = "poel_gevent"
FLAG = "--poel-gevent"

NOT_PATCHED = f"""\
run_job runs Poel's worker in this test process, and the worker needs gevent's \
monkey-patching applied before anything imports psycopg, as `poel-host serve` does. \
This test session was not patched: opt in by adding the line

    {INI} = true

under [tool.pytest.ini_options] in pyproject.toml (or under [pytest] in pytest.ini or \
tox.ini, [tool:pytest] in setup.cfg), or run pytest with {FLAG}. Fixtures other than \
run_job (poel_queue, poel_context, assert_enqueued...) work without it."""

TOO_LATE = """\
run_job runs Poel's worker in this test process, but psycopg was imported before the kit \
applied gevent's patching (the session opted in), so its queries would block the worker. Is \
another pytest plugin importing psycopg when pytest loads it? Disable that plugin for \
this project (`-p no:NAME`) or have it import psycopg lazily."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI,
        type="bool",
        default=False,
        help="patch the session with gevent before conftest files load, so that Poel's "
        "run_job fixture can run the worker in-process",
    )
    parser.getgroup("poel").addoption(
        FLAG,
        action="store_true",
        default=False,
        dest="poel_gevent",
        help=f"the same as `{INI} = true` in the pytest configuration",
    )


def opted_in(config: pytest.Config) -> bool:
    """Whether the session asked for gevent's patching (flag or ini option)."""
    namespace = getattr(config, "known_args_namespace", config.option)
    return bool(getattr(namespace, "poel_gevent", False) or config.getini(INI))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    if opted_in(early_config):
        from gevent.monkey import MonkeyPatchWarning

        from poel_host.green import patch

        # pytest imports every installed pytest plugin before any hook runs, and anyio's
        # (anyio comes with httpx, which supabase-py needs) imports ssl. gevent then warns
        # that ssl was imported before its patch: the names anyio took from it serve its
        # asyncio TLS streams, which nothing green uses; the sync clients a handler uses
        # (httpx, psycopg) take theirs after the patch. Other late imports still warn.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="Monkey-patching ssl after ssl has already been imported",
                category=MonkeyPatchWarning,
            )
            patch()


def require_patched(config: pytest.Config) -> None:
    """Fail the test, with what to change, unless the worker can run green here."""
    if not opted_in(config):
        pytest.fail(NOT_PATCHED, pytrace=False)
    from poel_host.errors import GreenError
    from poel_host.green import check_green

    try:
        check_green()
    except GreenError:
        pytest.fail(TOO_LATE, pytrace=False)
