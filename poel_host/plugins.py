"""Finding, loading and describing plugins.

Plugins are installed distributions with an entry point in the group ``poel.jobs``. The
rule for errors: a plugin that is broken on its own (fails to import, implements a hook
that does not exist, returns an invalid Job) is *not loaded*; it is reported at start-up
naming the plugin and its distribution, listed under ``failed`` by ``/plugins`` and
``poel-host plugins``, and its jobs stay queued for a worker that can run them. A conflict
between plugins (two registering one job type) or a selection that names a plugin that is
not installed stops start-up: no worker should guess which handler is meant.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from poel_host import hookspecs
from poel_host.errors import PluginError, error_text
from poel_host.jobs import Job
from poel_host.sqlfiles import Migration

ENTRY_POINT_GROUP = "poel.jobs"


@dataclass
class LoadedPlugin:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    jobs: list[Job] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)
    module: str | None = None  # importable name: how a child process loads it again


@dataclass
class FailedPlugin:
    name: str
    distribution: str | None
    version: str | None
    error: str

    def message(self) -> str:
        where = f" (distribution {self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{where} failed to load: {self.error}"


@dataclass
class Plugins:
    """The loaded plugins, their job types, and those that failed."""

    manager: pluggy.PluginManager
    loaded: list[LoadedPlugin]
    failed: list[FailedPlugin]

    @property
    def jobs(self) -> dict[str, Job]:
        return {job.type: job for plugin in self.loaded for job in plugin.jobs}

    def owner_of(self, job_type: str) -> LoadedPlugin | None:
        for plugin in self.loaded:
            if any(job.type == job_type for job in plugin.jobs):
                return plugin
        return None

    def migrations(self) -> list[tuple[str, Migration]]:
        return [(p.name, m) for p in self.loaded for m in p.migrations]

    def call(self, hook: str, log: Any = None, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; an error in one is logged and contained."""
        caller = getattr(self.manager.hook, hook)
        for impl in caller.get_hookimpls():
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            # SystemExit and KeyboardInterrupt too: a hook runs on a job's path, and one that
            # escaped would leave that job running forever, its lease renewed.
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001
                if log is not None:
                    log.error(
                        "plugin hook failed",
                        plugin=impl.plugin_name,
                        hook=hook,
                        error=error_text(exc),  # never str(exc) itself: it may raise
                    )

    def describe(self) -> dict[str, Any]:
        """The single description used by ``GET /plugins`` and ``poel-host plugins``."""
        from poel_host.schedules import next_slot

        now = dt.datetime.now(dt.timezone.utc)
        return {
            "plugins": [
                {
                    "name": p.name,
                    "distribution": p.distribution,
                    "version": p.version,
                    "hooks": p.hooks,
                    "jobs": [
                        {
                            "type": job.type,
                            "queue": job.queue,
                            "max_attempts": job.max_attempts,
                            "timeout": job.timeout,
                            "priority": job.priority,
                            "executor": job.executor,
                            "max_snoozes": job.max_snoozes,
                            "schedule": job.schedule,
                            "next_run": next_slot(job.schedule, now).isoformat()
                            if job.schedule
                            else None,
                            "schema": job.json_schema(),
                        }
                        for job in p.jobs
                    ],
                }
                for p in self.loaded
            ],
            "failed": [
                {
                    "name": f.name,
                    "distribution": f.distribution,
                    "version": f.version,
                    "error": f.error,
                }
                for f in self.failed
            ],
        }


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def discover() -> list[md.EntryPoint]:
    """Installed entry points of the group, one per name (first distribution wins)."""
    seen: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def load_plugins(
    load: Sequence[str] | None = None,
    disabled: Iterable[str] = (),
    *,
    extra: Iterable[tuple[str, object]] = (),
    entry_points: Iterable[md.EntryPoint] | None = None,
) -> Plugins:
    """Load the selected installed plugins, plus ``extra`` (name, module-or-object) pairs.

    ``load=None`` selects every installed plugin, ``[]`` none. Raises PluginError for a
    selection naming an uninstalled plugin and for a job type registered twice.
    """
    manager = new_manager()
    available = list(discover() if entry_points is None else entry_points)
    names = {ep.name for ep in available}
    disabled = set(disabled)
    if load is not None:
        missing = [name for name in load if name not in names]
        if missing:
            raise PluginError(
                f"POEL_LOAD_PLUGINS names plugins that are not installed: {', '.join(missing)}"
                f" (installed: {', '.join(sorted(names)) or 'none'})"
            )
    selected = [
        ep for ep in available if (load is None or ep.name in load) and ep.name not in disabled
    ]
    loaded: list[LoadedPlugin] = []
    failed: list[FailedPlugin] = []
    for ep in selected:
        dist_name, version = _dist(ep)
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import error makes the plugin fail to load
            failed.append(
                FailedPlugin(ep.name, dist_name, version, f"import failed: {error_text(exc)}")
            )
            continue
        _add(manager, ep.name, module, dist_name, version, loaded, failed)
    for name, obj in extra:
        if name not in disabled:
            _add(manager, name, obj, None, None, loaded, failed)
    _check_duplicates(loaded)
    return Plugins(manager, loaded, failed)


def _add(
    manager: pluggy.PluginManager,
    name: str,
    obj: object,
    dist_name: str | None,
    version: str | None,
    loaded: list[LoadedPlugin],
    failed: list[FailedPlugin],
) -> None:
    try:
        manager.register(obj, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        failed.append(FailedPlugin(name, dist_name, version, error_text(exc)))
        return
    try:
        hooks = _check_hooks(manager, name, obj)
        jobs = _collect(manager, obj, "register_jobs", Job)
        migrations = _collect(manager, obj, "register_migrations", Migration)
    except PluginError as exc:
        manager.unregister(obj)
        failed.append(FailedPlugin(name, dist_name, version, str(exc)))
        return
    module = obj.__name__ if isinstance(obj, types.ModuleType) else None
    loaded.append(LoadedPlugin(name, dist_name, version, hooks, jobs, migrations, module))


def _check_hooks(manager: pluggy.PluginManager, name: str, obj: object) -> list[str]:
    hooks = []
    for caller in manager.get_hookcallers(obj) or []:
        if not caller.has_spec():
            raise PluginError(
                f"implements unknown hook {caller.name!r} "
                f"(known hooks: {', '.join(sorted(_spec_names()))})"
            )
        hooks.append(caller.name)
    return sorted(hooks)


def _spec_names() -> list[str]:
    return [n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "poel_spec", None)]


def _collect(manager: pluggy.PluginManager, obj: object, hook: str, kind: type) -> list[Any]:
    caller = getattr(manager.hook, hook)
    items: list[Any] = []
    for impl in caller.get_hookimpls():
        if impl.plugin is not obj:
            continue
        try:
            result = impl.function()
        except Exception as exc:  # noqa: BLE001 - reported as this plugin failing to load
            raise PluginError(f"{hook}() raised {error_text(exc)}") from None
        for item in result or []:
            if not isinstance(item, kind):
                raise PluginError(f"{hook}() returned {item!r}, not a {kind.__name__}")
            items.append(item)
    return items


def _check_duplicates(loaded: list[LoadedPlugin]) -> None:
    owners: dict[str, str] = {}
    for plugin in loaded:
        for job in plugin.jobs:
            label = plugin.name + (
                f" (distribution {plugin.distribution})" if plugin.distribution else ""
            )
            if job.type in owners:
                raise PluginError(
                    f"job type {job.type!r} is registered by two plugins: {owners[job.type]} "
                    f"and {label}; disable one with POEL_DISABLED_PLUGINS"
                )
            owners[job.type] = label


def _dist(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = ep.dist
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version
