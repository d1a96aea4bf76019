"""PluginHost: loads plugins, calls their hooks within a time budget, feeds them core events.

Calling rules (docs/writing_plugins.md explains them to plugin authors):

- Implementations are called one by one in pluggy's order (``tryfirst`` first, then the
  plugins in the order of ``[plugins] enabled``, then the defaults, ``trylast`` last), each
  with only the arguments it names and the ``api`` bound to its own plugin.
- What an implementation returns is awaited if it is awaitable, for at most
  ``plugins.plugin_timeout`` seconds. A plain function cannot be interrupted; one that held
  the event loop longer than that has its answer discarded, so the budget means the same for
  both kinds and a blocking plugin shows up in the failure count.
- An exception or a time-out is logged, counted in ``stats.plugin_errors[hook]`` and
  turns into a :class:`Failure`, which each caller replaces by the hook's safe default.
- Observer hooks never run inside the core's event pump: events are queued per plugin and a
  worker task per plugin delivers them in order. Audio levels are sampled every 200 ms in a
  task, only for rooms some plugin subscribed to; nothing runs per media packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Coroutine, Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from salon.daemon.auth import AuthError
from salon.daemon.config import Config, ConfigError
from salon.daemon.core import CoreError, SalonCore
from salon.daemon.core import events as core_events
from salon.daemon.wire.messages import ErrorCode

from . import hookspecs
from .api import SalonAPI
from .results import AudioLevel, Deny, Failure
from .settings import PluginSettings

if TYPE_CHECKING:
    from salon.daemon.pipeline import RequestPipeline
    from salon.daemon.stats import ServerStats

    from .policy import PluginAuthenticator, PluginPolicy

log = logging.getLogger("salon.hooks")
T = TypeVar("T")

ENTRY_POINT_GROUP = "salon.plugins"
"""The entry points group installed plugins register in."""

DEFAULT_PLUGINS = ("builtin_auth", "join_flood")
"""Loaded whether or not ``[plugins] enabled`` lists them: guest and ``[auth.tokens]``
authentication (``trylast``, so any other auth plugin is asked first) and the knock limit
of ``[limits] knock_rate``."""

BUNDLED = {
    "builtin_auth": "salon.plugins.builtin_auth:BuiltinAuth",
    "token_auth": "salon.plugins.token_auth:TokenAuth",
    "approval": "salon.plugins.approval:ApprovalHelper",
    "text_filter": "salon.plugins.text_filter:TextFilter",
    "join_flood": "salon.plugins.join_flood:JoinFloodLimiter",
    "topic_directory": "salon.plugins.topic_directory:TopicDirectory",
    "webhooks": "salon.plugins.webhooks:Webhooks",
    "floor_control": "salon.plugins.floor_control:FloorControl",
    "loudness_guard": "salon.plugins.loudness_guard:LoudnessGuard",
}
"""The plugins shipped with salond, by entry point name. pyproject.toml registers each one
under ``salon.plugins``; this table is the fallback when the installed metadata predates it."""

LEVEL_INTERVAL = 0.2
"""Seconds between two audio level samples for subscribed rooms."""

FAILURE_LOG_INTERVAL = 60.0
"""Seconds between two log reports of the same plugin failing in the same hook."""

clock = time.perf_counter
"""The clock that times plain (synchronous) implementations against the budget."""

OBSERVER_BACKLOG = 1000
"""Events queued for one plugin's observers before new ones are dropped (and counted)."""

OBSERVED_EVENTS: dict[type, str] = {
    core_events.RoomCreated: "room_created",
    core_events.RoomClosed: "room_closed",
    core_events.MemberJoined: "participant_joined",
    core_events.MemberLeft: "participant_left",
    core_events.RoleChanged: "role_changed",
    core_events.SpeakingChanged: "speaking_changed",
    core_events.ModerationTaken: "moderation_taken",
    core_events.KnockReceived: "knock_received",
}
"""Core event -> observer hook; the event's fields are the hook's arguments (besides api)."""


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """Entry points of the ``salon.plugins`` group, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_reference(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


class PluginHost:
    """The plugin manager of one daemon (a component: started and stopped with it)."""

    def __init__(
        self,
        config: Config,
        pipeline: RequestPipeline,
        stats: ServerStats,
        *,
        names: Iterable[str] | None = None,
    ) -> None:
        from .policy import PluginAuthenticator, PluginPolicy

        self.config = config
        self.pipeline = pipeline
        """Where plugins' actions go (as ``plugin:<name>``) and core events come from."""
        self.core: SalonCore = pipeline.core
        self.stats = stats
        """The server's counters: plugin failures and plugin-counted drops land here."""
        self.timeout = config.plugins.plugin_timeout
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.apis: dict[str, SalonAPI] = {}
        self.running = False
        self.policy: PluginPolicy = PluginPolicy(self)
        """The request policy (``pipeline.policy``)."""
        self.authenticator: PluginAuthenticator = PluginAuthenticator(self)
        """The authenticator (``pipeline.authenticator``)."""
        self._impls: dict[str, list[Any]] = {}
        self._queues: dict[str, asyncio.Queue[tuple[str, Any, dict[str, Any]]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._level_subscriptions: dict[str, set[str | None]] = {}
        self._level_task: asyncio.Task[None] | None = None
        self._level_calls: dict[str, asyncio.Task[None]] = {}
        self._failure_log: dict[tuple[str, str], tuple[float, int]] = {}
        wanted = list(DEFAULT_PLUGINS)
        for name in config.plugins.enabled if names is None else names:
            if name not in wanted:
                wanted.append(name)
        self.load(wanted)

    # ------------------------------------------------------------------ loading

    def load(self, names: list[str]) -> None:
        """Load and register plugins by entry point name; ConfigError names what is wrong."""
        entry_points = installed_plugins()
        problems = []
        objects: list[tuple[str, Any]] = []
        for name in names:
            if name in self.apis:
                continue
            try:
                if name in entry_points:
                    objects.append((name, entry_points[name].load()))
                elif name in BUNDLED:
                    objects.append((name, _load_reference(BUNDLED[name])))
                else:
                    known = sorted(set(entry_points) | set(BUNDLED))
                    problems.append(
                        f"{self._source()}: plugins.enabled: no installed plugin named {name!r}"
                        f" (installed: {', '.join(known)})"
                    )
            except Exception as exc:
                problems.append(f"{self._source()}: plugins.enabled: cannot load {name!r}: {exc}")
        if problems:
            raise ConfigError(problems)
        # pluggy calls the last registered first: register the defaults, then ``enabled``
        # backwards, so that plugins run in the order the operator listed them.
        defaults = [(n, o) for n, o in objects if n in DEFAULT_PLUGINS]
        others = [(n, o) for n, o in objects if n not in DEFAULT_PLUGINS]
        for name, plugin in defaults + others[::-1]:
            self.register(plugin, name)

    def _source(self) -> str:
        return str(self.config.source) if self.config.source else "configuration"

    def register(self, plugin: Any, name: str) -> Any:
        """Register a plugin object (a module, an instance, or a class instantiated here with
        its SalonAPI); returns the registered object. Tests and embedders use it directly."""
        if name in self.apis:
            raise ConfigError(f"{self._source()}: plugins: {name!r} is registered twice")
        settings = PluginSettings(name, self.config.plugins.settings.get(name, {}), self._source())
        api = SalonAPI(self, name, settings)
        if inspect.isclass(plugin):
            factory: Any = plugin
            try:
                plugin = factory(api)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"{self._source()}: plugins.{name}: the plugin failed to start: {exc}"
                ) from exc
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            with contextlib.suppress(Exception):
                self.pm.unregister(name=name)
            reason = "; ".join(str(exc).splitlines())
            raise ConfigError(f"{self._source()}: plugins.{name}: {reason}") from exc
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name and (impl.hookwrapper or impl.wrapper):
                    self.pm.unregister(name=name)
                    raise ConfigError(
                        f"{self._source()}: plugins.{name}: {caller.name} is a wrapper;"
                        " salon hooks take plain implementations only"
                    )
        self.apis[name] = api
        self._impls.clear()
        return plugin

    def unregister(self, name: str) -> None:
        """Remove a plugin (its queued events are dropped)."""
        self.pm.unregister(name=name)
        self.apis.pop(name, None)
        self._level_subscriptions.pop(name, None)
        worker = self._workers.pop(name, None)
        if worker is not None:
            worker.cancel()
        self._queues.pop(name, None)
        self._impls.clear()

    @property
    def names(self) -> list[str]:
        """Registered plugins, by name."""
        return list(self.apis)

    # ------------------------------------------------------------------ calling

    def implementations(self, hook: str) -> list[Any]:
        """The implementations of ``hook`` in call order (cached until plugins change)."""
        impls = self._impls.get(hook)
        if impls is None:
            caller = getattr(self.pm.hook, hook)
            impls = self._impls[hook] = list(reversed(caller.get_hookimpls()))
        return impls

    def implemented(self, hook: str) -> bool:
        return bool(self.implementations(hook))

    async def invoke(self, hook: str, impl: Any, kwargs: dict[str, Any]) -> Any:
        """Call one implementation; a refusal it raises becomes Deny, a failure Failure."""
        api = self.apis[impl.plugin_name]
        try:
            started = clock()
            value = impl.function(*[api if n == "api" else kwargs[n] for n in impl.argnames])
            if inspect.isawaitable(value):
                value = await self._within_budget(value)
            elif (blocked := clock() - started) > self.timeout:
                return self.failed(
                    hook,
                    impl.plugin_name,
                    f"blocked salond for {blocked:.2f} s (budget {self.timeout:g} s):"
                    " do slow work in an async implementation",
                )
            return value
        except asyncio.TimeoutError:
            return self.failed(hook, impl.plugin_name, f"no answer within {self.timeout:g} s")
        except AuthError as exc:
            return Deny(str(exc), ErrorCode.AUTH_FAILED)
        except CoreError as exc:
            return Deny(exc.message, exc.code)
        except Exception as exc:
            return self.failed(hook, impl.plugin_name, f"{type(exc).__name__}: {exc}", exc)

    async def _within_budget(self, awaitable: Awaitable[T]) -> T:
        if sys.version_info >= (3, 11):
            # Awaited in the caller's task: no task per call, as wait_for makes on 3.11.
            async with asyncio.timeout(self.timeout):
                return await awaitable
        return await asyncio.wait_for(awaitable, self.timeout)

    def failed(
        self, hook: str, plugin: str, error: str, exc: BaseException | None = None
    ) -> Failure:
        """Count and log a plugin failure; returns the Failure for the caller's safe default.

        A plugin failing on every call (say, every audio level sample) is logged once per
        :data:`FAILURE_LOG_INTERVAL` per hook, with the count of failures not logged.
        """
        self.stats.plugin_errors[hook] += 1
        key = (plugin, hook)
        now = time.monotonic()
        logged = self._failure_log.get(key)
        if logged is not None and now - logged[0] < FAILURE_LOG_INTERVAL:
            self._failure_log[key] = (logged[0], logged[1] + 1)
            return Failure(plugin, error)
        self._failure_log[key] = (now, 0)
        more = f" ({logged[1]} more failures since the last report)" if logged else ""
        level = logging.ERROR if exc is not None else logging.WARNING
        log.log(level, "plugin %s failed in %s: %s%s", plugin, hook, error, more, exc_info=exc)
        return Failure(plugin, error)

    async def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Every implementation's answer that is not None, in call order, as (plugin, value)."""
        answers = []
        for impl in self.implementations(hook):
            value = await self.invoke(hook, impl, kwargs)
            if value is not None:
                answers.append((impl.plugin_name, value))
        return answers

    async def first(self, hook: str, **kwargs: Any) -> tuple[str, Any] | None:
        """The first answer that is not None (a Failure counts: it stops the chain)."""
        for impl in self.implementations(hook):
            value = await self.invoke(hook, impl, kwargs)
            if value is not None:
                return impl.plugin_name, value
        return None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Run the startup hooks (one after the other, each within the time budget)."""
        self.running = True
        await self.call("startup")

    async def stop(self) -> None:
        """Let queued events reach the observers, run the shutdown hooks, cancel the rest."""
        if not self.running:
            return
        queues = [q for q in self._queues.values() if not q.empty()]
        if queues:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in queues)), self.timeout)
        self.running = False
        await self.call("shutdown")
        tasks = [
            *self._workers.values(),
            *self._tasks,
            *self._level_calls.values(),
            *([self._level_task] if self._level_task is not None else []),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()
        self._queues.clear()

    def create_task(self, plugin: str, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                exc = finished.exception()
                log.error("plugin %s: background task failed: %s", plugin, exc, exc_info=exc)
                self.stats.plugin_errors["task"] += 1

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------------ observers

    def observe(self, event: core_events.CoreEvent) -> None:
        """A ``pipeline.observers`` callback: queue the event for the plugins that watch it."""
        hook = OBSERVED_EVENTS.get(type(event))
        if hook is None or not self.running:
            return
        impls = self.implementations(hook)
        if not impls:
            return
        kwargs = dict(vars(event))
        for impl in impls:
            queue = self._queues.get(impl.plugin_name)
            if queue is None:
                queue = self._queues[impl.plugin_name] = asyncio.Queue(OBSERVER_BACKLOG)
                self._workers[impl.plugin_name] = asyncio.ensure_future(self._deliver(queue))
            try:
                queue.put_nowait((hook, impl, kwargs))
            except asyncio.QueueFull:
                self.stats.count_drop("plugin_backlog")
                self.failed(hook, impl.plugin_name, "too many events queued: event dropped")

    async def _deliver(self, queue: asyncio.Queue[tuple[str, Any, dict[str, Any]]]) -> None:
        while True:
            hook, impl, kwargs = await queue.get()
            try:
                await self.invoke(hook, impl, kwargs)
            finally:
                queue.task_done()

    def notify(self, event: core_events.CoreEvent) -> None:
        """Pass an event that did not come from the core (e.g. a plugin's auto-approval) to
        every observer of the pipeline, as if the core had emitted it."""
        self.pipeline.notify(event)

    # ------------------------------------------------------------------ audio levels

    def sample_levels(self, room: str) -> list[AudioLevel]:
        found = self.core.rooms.get(room)
        if found is None or found.state != "live":
            return []
        return [AudioLevel(m.user, m.level, m.speaking) for m in self.core.levels(room)]

    def subscribe_levels(self, plugin: str, room: str | None) -> None:
        self._level_subscriptions.setdefault(plugin, set()).add(room)
        if self._level_task is None or self._level_task.done():
            self._level_task = asyncio.ensure_future(self._sample_levels())

    def unsubscribe_levels(self, plugin: str, room: str | None) -> None:
        rooms = self._level_subscriptions.get(plugin)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._level_subscriptions[plugin]

    async def _sample_levels(self) -> None:
        while self._level_subscriptions:
            await asyncio.sleep(LEVEL_INTERVAL)
            impls = {impl.plugin_name: impl for impl in self.implementations("audio_levels")}
            for plugin, rooms in list(self._level_subscriptions.items()):
                impl = impls.get(plugin)
                busy = self._level_calls.get(plugin)
                if impl is None or (busy is not None and not busy.done()):
                    # A plugin still busy with the previous sample skips this one.
                    continue
                if None in rooms:
                    targets = [r.id for r in self.core.rooms.values() if r.state == "live"]
                else:
                    targets = [r for r in rooms if r is not None]
                samples = [(room, self.sample_levels(room)) for room in targets]
                self._level_calls[plugin] = asyncio.ensure_future(
                    self._deliver_levels(impl, samples)
                )

    async def _deliver_levels(self, impl: Any, samples: list[tuple[str, Any]]) -> None:
        for room, levels in samples:
            await self.invoke("audio_levels", impl, {"room": room, "levels": levels})
