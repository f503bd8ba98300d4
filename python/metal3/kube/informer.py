"""Informers: a local cache of one resource type, kept current by list + watch.

An :class:`Informer` lists the resource, then watches from the list's resourceVersion (with
bookmarks, so a quiet watch still advances its version), applying every event to its
:class:`Store` and telling its handlers. A 410 Gone means the version fell out of the server's
history: it lists again, and the handlers hear of every object that changed or vanished meanwhile.
Other failures reconnect with exponential backoff. Reconcilers read the store, never the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import Resource

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Handler = Callable[[str, JsonObject], None]  # (event type, object)


def object_key(obj: JsonObject) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or ""


def _version(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is later than ``current``.

    Versions are opaque to clients in general; every API server we talk to uses increasing
    integers (etcd revisions, our embedded server), and anything else is taken as newer.
    """
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


class Store:
    """The cached objects of one resource type, by (namespace, name).

    A deleted object leaves a tombstone (the version its deletion was seen at), so that a
    write's response arriving after the watch's DELETED (a reconciler caching what it wrote,
    as the last finalizer goes) cannot bring the object back into the cache.
    """

    TOMBSTONES = 4096  # the most recent deletions remembered; older ones are forgotten

    def __init__(self) -> None:
        self._items: dict[ObjectKey, JsonObject] = {}
        self._listeners: list[Callable[[JsonObject], None]] = []
        self._tombstones: dict[ObjectKey, str] = {}

    def add_listener(self, listener: Callable[[JsonObject], None]) -> None:
        """Call ``listener`` with every object stored, whoever stores it: the informer, or a
        reconciler caching its own write (whose watch event then changes nothing and reaches
        no informer handler). For watchers of objects another controller writes."""
        self._listeners.append(listener)

    def get(self, namespace: str, name: str) -> JsonObject | None:
        return self._items.get((namespace, name))

    def values(self, namespace: str | None = None) -> list[JsonObject]:
        if namespace is None:
            return list(self._items.values())
        return [obj for (ns, _), obj in self._items.items() if ns == namespace]

    def object_keys(self) -> list[ObjectKey]:
        return list(self._items)

    def put(self, obj: JsonObject) -> bool:
        """Store ``obj`` unless the cache already holds a newer version; True if stored."""
        key = object_key(obj)
        version = _version(obj)
        current = self._items.get(key)
        if current is not None and not newer(version, _version(current)):
            return False
        deleted_at = self._tombstones.get(key)
        if deleted_at is not None:
            if not newer(version, deleted_at):
                return False  # a version from before its deletion
            del self._tombstones[key]
        self._items[key] = obj
        for listener in self._listeners:
            try:
                listener(obj)
            except Exception:
                log.exception("store listener failed")
        return True

    def remove(self, key: ObjectKey, version: str = "") -> JsonObject | None:
        """Drop ``key``, seen deleted at resourceVersion ``version``: no version up to that
        one is stored again."""
        if version:
            self._tombstones.pop(key, None)
            self._tombstones[key] = version
            while len(self._tombstones) > self.TOMBSTONES:
                del self._tombstones[next(iter(self._tombstones))]
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.store = Store()
        self.synced = anyio.Event()
        self.resource_version = ""
        self._handlers: list[Handler] = []
        self.relists = 0  # how often the informer had to list again (410 or failures)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _notify(self, kind: str, obj: JsonObject) -> None:
        for handler in self._handlers:
            try:
                handler(kind, obj)
            except Exception:
                log.exception("%s informer: handler failed", self.resource.plural)

    async def _list(self) -> None:
        items, version = await self.client.list(
            self.resource, self.namespace, label_selector=self.label_selector
        )
        seen: set[ObjectKey] = set()
        for obj in items:
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
            seen.add(object_key(obj))
            if self.store.put(obj):
                self._notify("ADDED", obj)
        for key in set(self.store.object_keys()) - seen:
            gone = self.store.remove(key, version)
            if gone is not None:
                self._notify("DELETED", gone)
        self.resource_version = version
        self.synced.set()

    async def _watch(self) -> None:
        async for event in self.client.watch(
            self.resource,
            self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
        ):
            version = _version(event.object)
            if event.type == "BOOKMARK":
                self.resource_version = version or self.resource_version
                continue
            if event.type == "DELETED":
                self.store.remove(object_key(event.object), version)
                self._notify("DELETED", event.object)
            elif self.store.put(event.object):
                self._notify(event.type, event.object)
            if version:
                self.resource_version = version

    async def run(self) -> None:
        """List and watch until cancelled; run again, it resumes from its resourceVersion."""
        failures = 0
        need_list = not self.synced.is_set()
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                failures = 0  # the server ended the watch (timeoutSeconds): just watch again
            except ApiError as exc:
                if exc.gone:
                    log.info("%s informer: version expired, listing again", self.resource.plural)
                    self.relists += 1
                    need_list = True
                    continue
                failures += 1
                need_list = need_list or exc.status >= 500
                log.warning("%s informer: %s", self.resource.plural, exc)
            except Exception as exc:  # connection errors (aiohttp's and OSError), bad JSON
                failures += 1
                log.warning("%s informer: %r", self.resource.plural, exc)
            if failures:
                await anyio.sleep(min(0.2 * 2 ** min(failures, 8), 30.0))
