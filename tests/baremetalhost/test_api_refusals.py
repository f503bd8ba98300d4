"""A write the API server refuses for good (422 and other permanent errors) is retried with the
work queue's growing per-key backoff and reported as a Warning Event, never retried in a hot loop.

The refusal is real: the status annotation carries an ``operationalStatus`` the CRD's schema does
not allow, the reconciler copies it into the status, and the API server's validation answers the
status write with 422 Invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client import REGISTRY

from baremetalhost.kit import cluster, host, running_operator, state
from metal3.api.constants import STATUS_ANNOTATION
from metal3.kube.client import KubeClient
from metal3.kube.resources import EVENTS

pytestmark = pytest.mark.anyio

# A status the schema refuses: operationalStatus is an enum without this value.
INVALID_STATUS = {
    "operationalStatus": "not-a-status",
    "errorMessage": "",
    "errorCount": 0,
    "provisioningFailCount": 0,
    "poweredOn": False,
    "provisioning": {"state": "available", "ID": "x"},
}
WINDOW = 3.0  # seconds of counting reconciles
# With the queue's backoff (5 ms, doubling per failure) at most ~9 retries fit in 3 s, however
# fast the machine; retried at once (the bug) it was thousands.
MAX_RECONCILES_IN_WINDOW = 12


def reconciles(namespace: str, name: str) -> float:
    value = REGISTRY.get_sample_value(
        "metal3_reconcile_total", {"namespace": namespace, "host": name}
    )
    return value or 0.0


async def warning_events(client: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    items, _ = await client.list(EVENTS, namespace)
    return [
        e
        for e in items
        if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") == name
    ]


async def test_refused_status_write_backs_off_and_is_recorded(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {STATUS_ANNOTATION: orjson.dumps(INVALID_STATUS).decode()}
        await c.apply_host(host("v1", namespace, annotations=annotations))
        with anyio.fail_after(20):  # the finalizer, then the first refused status writes
            while reconciles(namespace, "v1") < 3:
                await anyio.sleep(0.01)
        before = reconciles(namespace, "v1")
        await anyio.sleep(WINDOW)
        during = reconciles(namespace, "v1") - before
        assert 1 <= during <= MAX_RECONCILES_IN_WINDOW, f"{during} reconciles in {WINDOW}s"

        events = await warning_events(c.client, namespace, "v1")
        assert {e["reason"] for e in events} == {"APIRequestRefused"}
        message = events[0]["message"]
        assert "422" in message and "operationalStatus" in message, message
        obj = await c.get("v1")
        assert obj is not None and "status" not in obj  # nothing invalid was written

        # Fixing the annotation is a change: the host is reconciled at once, backoff or not.
        await c.patch("v1", {"metadata": {"annotations": {STATUS_ANNOTATION: None}}})
        obj = await c.wait_state("v1", "available")
        assert state(obj) == "available"
