"""Importing poel_host patches nothing and imports nothing heavy; the green check refuses a
psycopg imported before gevent patched the standard library.

Each check runs in a fresh interpreter: this test process is patched by the pytest plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ["psycopg", "psycopg_pool", "gevent", "pydantic", "pydantic_settings", "pluggy"]
HEAVY += ["structlog", "bottle", "croniter", "psycogreen"]
HEAVY += ["supabase", "httpx", "poel_host.supabase_client"]  # ctx.supabase: on first use only


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("POEL_")}
    environment.pop("DATABASE_URL", None)
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_poel_host_imports_nothing_heavy():
    result = run_python(
        f"""
        import json, sys
        import poel_host
        print(json.dumps({{
            "loaded": [m for m in {HEAVY!r} if m in sys.modules],
            "version": poel_host.__version__,
        }}))
        """
    )
    assert result["loaded"] == []
    assert result["version"]


def test_public_names_load_lazily_and_patch_nothing():
    result = run_python(
        """
        import json, socket, sys, threading, time
        import poel_host
        from poel_host import InvalidPayload, Job, JobRequest, Queue, hookimpl  # noqa: F401

        # a web application enqueueing: the installed plugins validate its payload
        queue = Queue("postgresql://nobody@127.0.0.1:1/none")
        try:
            queue.enqueue("test.flaky", {"fail_times": "many"})
        except InvalidPayload as exc:
            error = str(exc)
        monkey = sys.modules.get("gevent.monkey")
        print(json.dumps({
            "error": error,
            "psycopg": "psycopg" in sys.modules,
            "gevent_monkey_patched": bool(monkey and monkey.saved),
            "socket": socket.socket.__module__,
            "sleep": time.sleep.__module__,
            "thread": threading.get_ident.__module__,
        }))
        """
    )
    assert "fail_times: Input should be a valid integer" in result["error"]
    assert result["psycopg"] is True
    assert result["gevent_monkey_patched"] is False
    assert (result["socket"], result["sleep"]) == ("socket", "time")
    assert result["thread"] in ("_thread", "threading")


def test_unknown_public_name():
    import poel_host

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        poel_host.Nope  # noqa: B018
    for name in poel_host.__all__:
        assert getattr(poel_host, name) is not None


def test_green_check_refuses_unpatched_or_psycopg_imported_too_early():
    result = run_python(
        """
        import json
        import psycopg  # noqa: F401 - too early: before the patch
        from poel_host import green
        from poel_host.errors import GreenError

        errors = []
        for patch in (False, True):
            if patch:
                green.patch()
            try:
                green.check_green()
            except GreenError as exc:
                errors.append([str(exc), exc.exit_code])
            else:
                errors.append(None)
        print(json.dumps(errors))
        """
    )
    unpatched, too_early = result
    assert "gevent has not patched the standard library" in unpatched[0]
    assert "psycopg was imported before gevent patched the standard library" in too_early[0]
    assert too_early[1] == 3


def test_green_check_passes_when_patched_first():
    """What ``poel-host`` does (poel_host.console): patch first, then the CLI, the worker
    and psycopg; psycopg then waits cooperatively."""
    result = run_python(
        """
        import json, sys
        import poel_host.console  # noqa: F401
        from poel_host import green

        assert "psycopg" not in sys.modules
        green.patch()
        import poel_host.cli  # noqa: F401
        import poel_host.worker  # noqa: F401 - psycopg, psycopg_pool
        from psycopg import waiting

        green.check_green()
        print(json.dumps({"ok": True, "wait": waiting.wait.__name__}))
        """
    )
    assert result["ok"] is True
    assert result["wait"] != "wait_c"


def test_testing_plugin_patched_this_process():
    """The pytest plugin patches before anything imports psycopg, so in-process worker
    tests run green, as under ``poel-host serve``."""
    from poel_host.green import check_green

    check_green()
