"""Watch streams: ADDED/MODIFIED/DELETED from a resourceVersion, BOOKMARKs, timeouts, and
the `410 Expired` ERROR event when the version is older than the retained history. `Watches`
holds what the open streams of one server share."""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from metal3.apiserver import table as tables
from metal3.apiserver.core import Core
from metal3.apiserver.errors import ApiError, bad_request
from metal3.apiserver.registry import ResourceType
from metal3.apiserver.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from metal3.apiserver.store import Change, ExpiredError, Obj
from metal3.asgi import Receive, Send

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
MAX_PENDING = 100_000
FLUSH_BYTES = 256 * 1024


@dataclass
class WatchParams:
    rt: ResourceType
    version: str
    namespace: str | None
    label_selector: str
    field_selector: str
    resource_version: str
    bookmarks: bool
    send_initial_events: bool
    timeout: float
    bookmark_interval: float
    table: tuple[str, str] | None  # (meta.k8s.io version, includeObject)
    metadata_only: str | None = None  # meta.k8s.io version of PartialObjectMetadata events


class _Subscription:
    """Buffers matching changes between the store's callback and the streaming task."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.pending: deque[Change] = deque()
        self.wakeup = anyio.Event()
        self.overflow = False
        self.closed = False

    def close(self) -> None:
        """End the watch after what is pending (server shutdown)."""
        self.closed = True
        self.wakeup.set()

    def __call__(self, change: Change) -> None:
        if change.key != self.key:
            return
        if len(self.pending) >= MAX_PENDING:
            self.overflow = True
        else:
            self.pending.append(change)
        self.wakeup.set()


class Watches:
    """The open watch streams of one server and what they share: each event line encoded
    once per (resourceVersion, type, apiVersion) for all its watchers, and the set of open
    streams, so that shutdown can end them."""

    ENCODED_LIMIT = 4096

    def __init__(self, core: Core) -> None:
        self.core = core
        self.encoded: dict[tuple[int, str, str], bytes] = {}
        self.open: set[_Subscription] = set()

    def close_all(self) -> None:
        """End every open watch after what is pending (server shutdown)."""
        for subscription in list(self.open):
            subscription.close()

    async def stream(self, params: WatchParams, receive: Receive, send: Send) -> None:
        """Serve one watch request until its timeout, the client leaving or shutdown."""
        rt = params.rt
        labels = parse_label_selector(params.label_selector) if params.label_selector else []
        fields = (
            parse_field_selector(params.field_selector, rt.field_selectors)
            if params.field_selector
            else []
        )
        namespace = params.namespace if rt.namespaced else None

        def matches(obj: Obj | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and obj["metadata"].get("namespace") != namespace:
                return False
            return (not labels or labels_match(labels, obj)) and (
                not fields or fields_match(fields, obj)
            )

        store = self.core.store
        subscription = _Subscription(rt.key)
        initial: list[Obj] = []
        replay: list[Change] = []
        expired: ApiError | None = None
        rv_text = params.resource_version
        snapshot_rv = store.rv  # what the initial events show; later changes arrive as events
        if rv_text in ("", "0") or params.send_initial_events:
            initial = [obj for obj in store.items(rt.key, namespace) if matches(obj)]
        else:
            try:
                start = int(rv_text)
            except ValueError as exc:
                raise bad_request(f"invalid resourceVersion {rv_text!r}") from exc
            try:
                replay = [c for c in store.since(start) if c.key == rt.key]
            except ExpiredError:
                expired = ApiError(
                    410, f"too old resource version: {start} ({store.horizon})", "Expired"
                )
        store.subscribe(subscription)
        self.open.add(subscription)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-cache, private"),
                    ],
                }
            )
            writer = _Writer(self, params, send)
            if expired is not None:
                writer.raw("ERROR", expired.status())
                await writer.flush()
                return
            for obj in initial:
                writer.event("ADDED", obj)
                if len(writer.buffer) >= FLUSH_BYTES:
                    await writer.flush()
            if params.send_initial_events and params.bookmarks:
                writer.bookmark(str(snapshot_rv), initial_end=True)
            for change in replay:
                _deliver(writer, change, matches)
                if len(writer.buffer) >= FLUSH_BYTES:
                    await writer.flush()
            await writer.flush()
            async with anyio.create_task_group() as group:
                group.start_soon(_watch_disconnect, receive, group.cancel_scope)
                await _pump(writer, subscription, matches, params, store_rv=lambda: store.rv)
                group.cancel_scope.cancel()
        finally:
            store.unsubscribe(subscription)
            self.open.discard(subscription)
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _pump(
    writer: _Writer,
    subscription: _Subscription,
    matches: Callable[[Obj | None], bool],
    params: WatchParams,
    store_rv: Callable[[], int],
) -> None:
    deadline = anyio.current_time() + params.timeout
    next_bookmark = anyio.current_time() + params.bookmark_interval
    while True:
        # Everything pending goes out in one write: a burst costs one syscall per watcher.
        while subscription.pending:
            _deliver(writer, subscription.pending.popleft(), matches)
            if len(writer.buffer) >= FLUSH_BYTES:
                await writer.flush()
        await writer.flush()
        if subscription.overflow or subscription.closed:
            return
        now = anyio.current_time()
        if now >= deadline:
            return
        if params.bookmarks and now >= next_bookmark:
            writer.bookmark(str(store_rv()))
            await writer.flush()
            next_bookmark = now + params.bookmark_interval
        wait = deadline - now
        if params.bookmarks:
            wait = min(wait, max(0.0, next_bookmark - now))
        subscription.wakeup = anyio.Event()
        if subscription.pending:
            continue
        with anyio.move_on_after(wait if math.isfinite(wait) else None):
            await subscription.wakeup.wait()


def _deliver(writer: _Writer, change: Change, matches: Callable[[Obj | None], bool]) -> None:
    """Queue the event this change means for a watcher with this filter, if any."""
    now_match = matches(change.obj)
    if change.type in ("ADDED", "DELETED"):
        if now_match:
            writer.event(change.type, change.obj, change.rv)
        return
    was_match = matches(change.old)
    if now_match and was_match:
        writer.event("MODIFIED", change.obj, change.rv)
    elif now_match:
        writer.event("ADDED", change.obj, change.rv)
    elif was_match:
        writer.event("DELETED", change.obj, change.rv)


class _Writer:
    def __init__(self, watches: Watches, params: WatchParams, send: Send) -> None:
        self.watches = watches
        self.core = watches.core
        self.params = params
        self.send = send
        self.columns_sent = False
        self.buffer = bytearray()

    def raw(self, kind: str, obj: Obj) -> None:
        self.buffer += orjson.dumps({"type": kind, "object": obj})
        self.buffer += b"\n"

    async def flush(self) -> None:
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def event(self, kind: str, obj: Obj, rv: int | None = None) -> None:
        params = self.params
        if params.metadata_only is not None:
            out = self.core.output(params.rt, params.version, obj)
            self.raw(kind, tables.partial_metadata(out, params.metadata_only))
            return
        if params.table is None and rv is not None:
            key = (rv, kind, params.rt.api_version(params.version))
            encoded = self.watches.encoded
            line = encoded.get(key)
            if line is None:
                if len(encoded) >= Watches.ENCODED_LIMIT:
                    encoded.clear()
                out = self.core.output(params.rt, params.version, obj)
                line = orjson.dumps({"type": kind, "object": out}) + b"\n"
                encoded[key] = line
            self.buffer += line
            return
        out = self.core.output(params.rt, params.version, obj)
        if params.table is not None:
            table_version, include = params.table
            out = tables.table(
                params.rt,
                params.version,
                [out],
                table_version,
                include,
                {"resourceVersion": out["metadata"].get("resourceVersion", "")},
                with_columns=not self.columns_sent,
            )
            self.columns_sent = True
        self.raw(kind, out)

    def bookmark(self, rv: str, initial_end: bool = False) -> None:
        rt = self.params.rt
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if initial_end:
            metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
        self.raw(
            "BOOKMARK",
            {
                "kind": rt.kind,
                "apiVersion": rt.api_version(self.params.version),
                "metadata": metadata,
            },
        )
