"""Kubernetes Events about objects, sent in the background.

Recording an event never slows or fails a reconcile: events go into a bounded buffer that one
task drains; when the API is slow and the buffer is full, new events are dropped (and counted),
as client-go's recorder does.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import Counter

from metal3.kube.client import KubeClient
from metal3.kube.resources import EVENTS

log = logging.getLogger(__name__)

DROPPED = Counter("metal3_events_dropped_total", "Events dropped because the buffer was full")


@dataclass(frozen=True)
class EventSource:
    component: str  # e.g. metal3-baremetal-controller
    reporting_controller: str  # e.g. metal3.io/baremetal-controller
    instance: str


class EventRecorder:
    def __init__(self, client: KubeClient, source: EventSource, *, buffer: int = 1000) -> None:
        self.client = client
        self.source = source
        self._send: MemoryObjectSendStream[dict[str, Any]]
        self._receive: MemoryObjectReceiveStream[dict[str, Any]]
        self._send, self._receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        self.sent = 0
        # Event names: <object>.<hex time><process-unique suffix>, as unique as uuid4 but cheap.
        self._suffix = f"{os.getpid():x}"
        self._counter = itertools.count()

    def record(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        metadata = involved.get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata.get('name')}.{time.time_ns():x}{self._suffix}"
                f"{next(self._counter):x}",
                "namespace": metadata.get("namespace") or "default",
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": self.source.component},
            "reportingComponent": self.source.reporting_controller,
            "reportingInstance": self.source.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            DROPPED.inc()

    async def run(self) -> None:
        """Send buffered events until cancelled."""
        async for event in self._receive:
            try:
                await self.client.create(EVENTS, event)
                self.sent += 1
            except Exception as exc:
                log.debug("event not recorded: %r", exc)
