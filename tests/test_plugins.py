"""The plugin manager: discovery through entry points (faked, so nothing is installed),
selection, and the errors that name the broken plugin instead of failing mid-job."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import sys
import textwrap
import uuid

import pytest
from pydantic import BaseModel

from poel_host import Job, hookimpl
from poel_host.errors import PluginError
from poel_host.plugins import ENTRY_POINT_GROUP, FailedPlugin, load_plugins

GOOD = """
from pydantic import BaseModel
from poel_host import Job, hookimpl

class Payload(BaseModel):
    n: int

def handle(payload, ctx):
    pass

@hookimpl
def register_jobs():
    return [Job(type={job_type!r}, schema=Payload, handler=handle)]
"""


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """``make_plugin(name, source)``: write a module under tmp_path and return an entry
    point of the ``poel.jobs`` group naming it, as an installed distribution would."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = []

    def make(name: str, source: str) -> md.EntryPoint:
        module = f"poel_fake_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        modules.append(module)
        return md.EntryPoint(name, module, ENTRY_POINT_GROUP)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def good(make_plugin, name: str, job_type: str) -> md.EntryPoint:
    return make_plugin(name, GOOD.format(job_type=job_type))


def names(plugins) -> list[str]:
    return [p.name for p in plugins.loaded]


def test_discovers_every_entry_point(make_plugin):
    eps = [good(make_plugin, "alpha", "a.job"), good(make_plugin, "beta", "b.job")]
    plugins = load_plugins(entry_points=eps)
    assert names(plugins) == ["alpha", "beta"]
    assert sorted(plugins.jobs) == ["a.job", "b.job"]
    assert plugins.failed == []
    assert plugins.owner_of("b.job").name == "beta"
    assert plugins.owner_of("nope") is None
    assert plugins.loaded[0].hooks == ["register_jobs"]


def test_load_selection(make_plugin):
    eps = [good(make_plugin, "alpha", "a.job"), good(make_plugin, "beta", "b.job")]
    assert names(load_plugins(None, entry_points=eps)) == ["alpha", "beta"]
    assert names(load_plugins([], entry_points=eps)) == []
    assert names(load_plugins(["beta"], entry_points=eps)) == ["beta"]
    assert names(load_plugins(None, ["alpha"], entry_points=eps)) == ["beta"]
    assert names(load_plugins(["alpha", "beta"], ["beta"], entry_points=eps)) == ["alpha"]


def test_load_selection_naming_an_uninstalled_plugin_is_an_error(make_plugin):
    eps = [good(make_plugin, "alpha", "a.job")]
    with pytest.raises(PluginError) as info:
        load_plugins(["alpha", "gamma"], entry_points=eps)
    assert "gamma" in str(info.value)
    assert "POEL_LOAD_PLUGINS" in str(info.value)
    assert "installed: alpha" in str(info.value)


def test_disabled_plugin_is_not_even_imported(make_plugin):
    broken = make_plugin("broken", "raise RuntimeError('should not be imported')\n")
    plugins = load_plugins(None, ["broken"], entry_points=[broken])
    assert plugins.loaded == [] and plugins.failed == []


def test_plugin_that_fails_to_import_is_reported_and_others_load(make_plugin):
    eps = [
        make_plugin("broken", "import poel_no_such_module_xyz\n"),
        good(make_plugin, "alpha", "a.job"),
    ]
    plugins = load_plugins(entry_points=eps)
    assert names(plugins) == ["alpha"]
    [failed] = plugins.failed
    assert failed.name == "broken"
    assert failed.error.startswith("import failed: ModuleNotFoundError")
    assert "poel_no_such_module_xyz" in failed.error
    assert "broken" in failed.message()


def test_plugin_raising_at_import_is_reported(make_plugin):
    eps = [make_plugin("boom", "raise RuntimeError('bad config\\n  on two lines')\n")]
    [failed] = load_plugins(entry_points=eps).failed
    assert failed.error == "import failed: RuntimeError: bad config on two lines"


def test_misspelled_hook_is_reported(make_plugin):
    source = GOOD.format(job_type="a.job") + textwrap.dedent(
        """
        @hookimpl
        def register_job():
            return []
        """
    )
    eps = [make_plugin("typo", source), good(make_plugin, "beta", "b.job")]
    plugins = load_plugins(entry_points=eps)
    assert names(plugins) == ["beta"]
    [failed] = plugins.failed
    assert failed.name == "typo"
    assert "unknown hook 'register_job'" in failed.error
    assert "register_jobs" in failed.error  # the known hooks are listed
    assert "a.job" not in plugins.jobs  # a failed plugin's jobs are not registered
    assert plugins.manager.get_plugin("typo") is None


def test_hook_with_an_unknown_argument_is_reported(make_plugin):
    source = """
    from poel_host import hookimpl

    @hookimpl
    def job_finished(ctx, result):
        pass
    """
    [failed] = load_plugins(entry_points=[make_plugin("args", source)]).failed
    assert failed.name == "args"
    assert "result" in failed.error


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return ['not a job']", "register_jobs() returned 'not a job', not a Job"),
        ("raise KeyError('missing setting')", "register_jobs() raised KeyError: 'missing setting'"),
        (
            "return [Job(type='bad type!', schema=Payload, handler=print)]",
            "register_jobs() raised ValueError: invalid Job 'bad type!'",
        ),
    ],
)
def test_bad_register_jobs_is_reported(make_plugin, body, expected):
    source = f"""
    from pydantic import BaseModel
    from poel_host import Job, hookimpl

    class Payload(BaseModel):
        n: int

    @hookimpl
    def register_jobs():
        {body}
    """
    eps = [make_plugin("bad", source), good(make_plugin, "alpha", "a.job")]
    plugins = load_plugins(entry_points=eps)
    assert names(plugins) == ["alpha"]
    [failed] = plugins.failed
    assert failed.name == "bad"
    assert expected in failed.error


def test_bad_register_migrations_is_reported(make_plugin):
    source = """
    from poel_host import hookimpl

    @hookimpl
    def register_migrations():
        return ["CREATE TABLE t ()"]
    """
    [failed] = load_plugins(entry_points=[make_plugin("mig", source)]).failed
    assert "register_migrations() returned 'CREATE TABLE t ()', not a Migration" in failed.error


def test_same_job_type_in_two_plugins_is_an_error(make_plugin):
    eps = [good(make_plugin, "alpha", "shared.job"), good(make_plugin, "beta", "shared.job")]
    with pytest.raises(PluginError) as info:
        load_plugins(entry_points=eps)
    message = str(info.value)
    assert "'shared.job'" in message
    assert "alpha" in message and "beta" in message
    assert "POEL_DISABLED_PLUGINS" in message
    # disabling one of them resolves it
    assert names(load_plugins(None, ["beta"], entry_points=eps)) == ["alpha"]


def test_failed_plugin_message_names_the_distribution():
    failed = FailedPlugin("poel-x", "poel-x-dist", "1.2.3", "import failed: ImportError: nope")
    assert failed.message() == (
        "plugin 'poel-x' (distribution poel-x-dist 1.2.3) failed to load: "
        "import failed: ImportError: nope"
    )


class Payload(BaseModel):
    n: int


class Tick(BaseModel):
    """A scheduled job's payload: the host enqueues it with {}."""

    slot: str | None = None


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def startup(self, settings):
        self.calls.append(("startup", settings))


class Exploding:
    @hookimpl
    def startup(self):
        raise RuntimeError("sentry DSN missing")

    @hookimpl
    def shutdown(self, settings):
        raise ValueError("flush failed")


class FakeLog:
    def __init__(self):
        self.errors = []

    def error(self, msg, **kw):
        self.errors.append((msg, kw))


def test_lifecycle_hook_errors_are_contained():
    recorder = Recorder()
    plugins = load_plugins([], extra=[("exploding", Exploding()), ("recorder", recorder)])
    log = FakeLog()
    plugins.call("startup", log, settings="S")
    plugins.call("shutdown", log, settings="S")
    plugins.call("startup", None, settings="S")  # no logger: still contained
    assert recorder.calls == [("startup", "S"), ("startup", "S")]
    assert log.errors == [
        (
            "plugin hook failed",
            {"plugin": "exploding", "hook": "startup", "error": "RuntimeError: sentry DSN missing"},
        ),
        (
            "plugin hook failed",
            {"plugin": "exploding", "hook": "shutdown", "error": "ValueError: flush failed"},
        ),
    ]


def noop(payload, ctx):
    pass


class Scheduled:
    @hookimpl
    def register_jobs(self):
        return [
            Job(type="every.minute", schema=Tick, handler=noop, schedule="* * * * *"),
            Job(
                type="slow.one",
                schema=Payload,
                handler=noop,
                queue="slow",
                timeout=2.5,
                max_attempts=7,
                priority=5,
            ),
        ]


def test_describe_shape(make_plugin):
    broken = make_plugin("broken", "import poel_no_such_module_xyz\n")
    plugins = load_plugins(
        entry_points=[broken],
        extra=[("scheduled", Scheduled()), ("disabled", Scheduled())],
        disabled=["disabled"],
    )
    description = plugins.describe()
    json.dumps(description)  # the /plugins answer as is
    assert set(description) == {"plugins", "failed"}
    [plugin] = description["plugins"]
    assert plugin["name"] == "scheduled"
    assert plugin["version"] is None
    assert plugin["hooks"] == ["register_jobs"]
    minute, slow = plugin["jobs"]
    assert minute["type"] == "every.minute"
    assert minute["schedule"] == "* * * * *"
    assert minute["next_run"].endswith("+00:00")
    assert minute["schema"] == Tick.model_json_schema()
    assert (minute["queue"], minute["max_attempts"], minute["timeout"]) == ("default", 3, None)
    assert slow == {
        "type": "slow.one",
        "queue": "slow",
        "max_attempts": 7,
        "timeout": 2.5,
        "priority": 5,
        "executor": "greenlet",
        "max_snoozes": 100,
        "schedule": None,
        "next_run": None,
        "schema": Payload.model_json_schema(),
    }
    [failed] = description["failed"]
    assert failed["name"] == "broken"
    assert failed["error"].startswith("import failed: ModuleNotFoundError")
    assert set(failed) == {"name", "distribution", "version", "error"}


def test_installed_distribution_is_found_through_its_entry_point():
    plugins = load_plugins(["poel-testjobs"])
    [plugin] = plugins.loaded
    assert plugin.name == "poel-testjobs"
    assert plugin.distribution == "poel-testjobs"
    assert plugin.version == md.version("poel-testjobs")
    assert {"test.noop", "test.record", "test.flaky"} <= set(plugins.jobs)
    assert [m.name for m in plugin.migrations] == ["test_runs"]
    assert plugin.hooks == ["register_jobs", "register_migrations"]
    [entry] = plugins.describe()["plugins"]
    assert entry["version"] == md.version("poel-testjobs")


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """``make_distribution(dist, version, plugin, source)``: a distribution "installed" as
    metadata on sys.path (a ``.dist-info`` folder with its entry point), as pip leaves it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def make(dist: str, version: str, plugin: str, source: str) -> None:
        module = f"poel_fake_{uuid.uuid4().hex[:10]}"
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\n{plugin} = {module}\n", encoding="utf-8"
        )
        importlib.invalidate_caches()
        modules.append(module)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def test_failures_name_the_plugin_and_its_distribution(make_distribution):
    make_distribution("poel-broken-dist", "2.0.1", "poel-broken", "import poel_no_such_xyz\n")
    make_distribution("poel-good-dist", "1.0.0", "poel-good", GOOD.format(job_type="good.job"))
    plugins = load_plugins(["poel-broken", "poel-good"])
    [good_plugin] = plugins.loaded
    assert (good_plugin.name, good_plugin.distribution, good_plugin.version) == (
        "poel-good",
        "poel-good-dist",
        "1.0.0",
    )
    [failed] = plugins.failed
    assert (failed.distribution, failed.version) == ("poel-broken-dist", "2.0.1")
    assert failed.message().startswith(
        "plugin 'poel-broken' (distribution poel-broken-dist 2.0.1) failed to load: "
        "import failed: ModuleNotFoundError"
    )
    [described] = plugins.describe()["failed"]
    assert (described["distribution"], described["version"]) == ("poel-broken-dist", "2.0.1")


def test_duplicate_job_type_names_both_distributions(make_distribution):
    make_distribution("poel-one-dist", "1.0", "poel-one", GOOD.format(job_type="same.job"))
    make_distribution("poel-two-dist", "1.0", "poel-two", GOOD.format(job_type="same.job"))
    with pytest.raises(PluginError) as info:
        load_plugins(["poel-one", "poel-two"])
    message = str(info.value)
    assert "poel-one (distribution poel-one-dist)" in message
    assert "poel-two (distribution poel-two-dist)" in message


# Job's own checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"type": "has space"}, "type 'has space' must be 1-200 characters"),
        ({"type": ""}, "type '' must be"),
        ({"type": "x" * 201}, "must be 1-200 characters"),
        ({"schema": dict}, "schema must be a pydantic BaseModel subclass"),
        ({"schema": Payload(n=1)}, "schema must be a pydantic BaseModel subclass"),
        ({"handler": "not callable"}, "handler must be callable"),
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1, got 0"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer >= 1"),
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"timeout": 0}, "timeout must be a positive number of seconds"),
        ({"backoff": -1}, "backoff must be seconds >= 0"),
        ({"schedule": "every monday"}, "schedule 'every monday' is not a valid cron expression"),
        ({"schedule": "61 * * * *"}, "is not a valid cron expression"),
        ({"schedule": "* * * * *"}, "a scheduled job's payload model must accept {}"),
    ],
)
def test_job_validation(kwargs, expected):
    arguments = {"type": "ok.job", "schema": Payload, "handler": noop, **kwargs}
    with pytest.raises(ValueError, match="invalid Job") as info:
        Job(**arguments)
    assert expected in str(info.value)


def test_job_validation_lists_every_problem():
    with pytest.raises(ValueError) as info:
        Job(type="ok.job", schema=dict, handler=noop, max_attempts=0, schedule="nope")
    message = str(info.value)
    assert "schema" in message and "max_attempts" in message and "schedule" in message


def test_valid_job():
    job = Job(
        type="mail:send-v2.x",
        schema=Tick,
        handler=noop,
        timeout=1,
        backoff=lambda a: a,
        schedule="*/5 * * * *",
    )
    assert job.timeout_seconds(300_000) == 1
    assert Job(type="j", schema=Payload, handler=noop).timeout_seconds(1500) == 1.5


def test_serve_selects_plugins_from_settings(make_plugin, monkeypatch, tmp_path):
    """POEL_LOAD_PLUGINS / POEL_DISABLED_PLUGINS reach the plugin manager as written."""
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("POEL_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("POEL_DISABLED_PLUGINS", raising=False)
    from poel_host import plugins as plugin_module
    from poel_host.serve import load_selected_plugins
    from poel_host.settings import Settings

    eps = [good(make_plugin, "alpha", "a.job"), good(make_plugin, "beta", "b.job")]
    monkeypatch.setattr(plugin_module, "discover", lambda: eps)

    def selected(**env):
        return names(load_selected_plugins(Settings(**env), FakeLog()))

    assert selected() == ["alpha", "beta"]
    assert selected(POEL_LOAD_PLUGINS="") == []
    assert selected(POEL_LOAD_PLUGINS=" beta ") == ["beta"]
    assert selected(POEL_DISABLED_PLUGINS="alpha,beta") == []
    with pytest.raises(PluginError, match="gamma"):
        selected(POEL_LOAD_PLUGINS="alpha,gamma")


def test_an_unknown_executor_fails_its_plugin_naming_it():
    class Gpu:
        @hookimpl
        def register_jobs(self):
            return [Job(type="on.gpu", schema=Payload, handler=lambda p, c: None, executor="gpu")]

    plugins = load_plugins([], extra=[("gpu-plugin", Gpu())])
    assert plugins.jobs == {}
    [failed] = plugins.failed
    assert failed.name == "gpu-plugin"
    assert "executor 'gpu' is not one of greenlet, thread, process" in failed.message()
