"""Watch contract through `kubernetes.watch.Watch`: event order, bookmarks, timeouts,
selectors, resumption after a restart and `410 Expired` when history is gone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_kit import GROUP, PLURAL, VERSION, ServerProcess, start_server, widget
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


def events(api: client.ApiClient, namespace: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Every event of a watch that ends by its own timeoutSeconds."""
    objects = client.CustomObjectsApi(api)
    stream = watch.Watch().stream(
        objects.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        _request_timeout=30,
        **kwargs,
    )
    return [(event["type"], event["object"]) for event in stream]


def test_replay_from_resource_version_and_timeout(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    start = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    rv = start["metadata"]["resourceVersion"]
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("a"))
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "a", {"spec": {"size": 2}}
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a")
    began = time.monotonic()
    seen = events(api, namespace, resource_version=rv, timeout_seconds=1)
    elapsed = time.monotonic() - began
    assert [kind for kind, _ in seen] == ["ADDED", "MODIFIED", "DELETED"]
    assert [obj["spec"]["size"] for _, obj in seen] == [1, 2, 2]
    versions = [int(obj["metadata"]["resourceVersion"]) for _, obj in seen]
    assert versions == sorted(versions) and versions[0] > int(rv)
    assert 0.9 <= elapsed < 10  # the server ends the watch after timeoutSeconds


def test_initial_state_and_live_events(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("old"))
    received: list[tuple[str, str]] = []
    ready = threading.Event()

    def consume() -> None:
        w = watch.Watch()
        for event in w.stream(
            objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            timeout_seconds=20,
            _request_timeout=30,
        ):
            received.append((event["type"], event["object"]["metadata"]["name"]))
            ready.set()
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    assert ready.wait(10)  # the synthetic ADDED for the existing object arrived
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("new"))
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "new")
    thread.join(30)
    assert not thread.is_alive()
    assert received == [("ADDED", "old"), ("ADDED", "new"), ("DELETED", "new")]


def test_bookmarks(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    listing = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    seen = events(
        api,
        namespace,
        resource_version=listing["metadata"]["resourceVersion"],
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    bookmarks = [obj for kind, obj in seen if kind == "BOOKMARK"]
    assert bookmarks, "the server sends a BOOKMARK every 0.3 s in this module"
    assert all(obj["kind"] == "Widget" for obj in bookmarks)
    assert int(bookmarks[-1]["metadata"]["resourceVersion"]) >= int(
        listing["metadata"]["resourceVersion"]
    )
    without = events(
        api,
        namespace,
        resource_version=listing["metadata"]["resourceVersion"],
        timeout_seconds=1,
    )
    assert without == []


def test_selector_transitions(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    rv = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"][
        "resourceVersion"
    ]
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("x"))
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("y"))
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "x", {"metadata": {"labels": {"pick": "me"}}}
    )
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "x", {"spec": {"size": 5}}
    )
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "x", {"metadata": {"labels": None}}
    )
    seen = events(api, namespace, resource_version=rv, label_selector="pick=me", timeout_seconds=1)
    assert [(kind, obj["metadata"]["name"]) for kind, obj in seen] == [
        ("ADDED", "x"),
        ("MODIFIED", "x"),
        ("DELETED", "x"),
    ]
    by_name = events(
        api, namespace, resource_version=rv, field_selector="metadata.name=y", timeout_seconds=1
    )
    assert [(kind, obj["metadata"]["name"]) for kind, obj in by_name] == [("ADDED", "y")]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that keeps only 5 changes of history (in memory and on disk) and expires
    Events one second after their last write."""
    proc = start_server(
        tmp_path_factory.mktemp("small"), "--watch-history", "5", "--event-ttl", "1"
    )
    yield proc
    proc.stop()


def _make_namespace(api: client.ApiClient, name: str) -> None:
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )


def test_expired_then_relist(small: ServerProcess) -> None:
    api = small.api_client()
    try:
        _make_namespace(api, "expiry")
        objects = client.CustomObjectsApi(api)
        old = objects.list_namespaced_custom_object(GROUP, VERSION, "expiry", PLURAL)
        old_rv = old["metadata"]["resourceVersion"]
        for i in range(8):
            objects.create_namespaced_custom_object(
                GROUP, VERSION, "expiry", PLURAL, widget(f"w{i}")
            )
        page = objects.list_namespaced_custom_object(GROUP, VERSION, "expiry", PLURAL, limit=2)
        with pytest.raises(ApiException) as gone:
            events(api, "expiry", resource_version=old_rv, timeout_seconds=1)
        assert gone.value.status == 410
        for i in range(8, 14):  # the list's version falls out of the history as well
            objects.create_namespaced_custom_object(
                GROUP, VERSION, "expiry", PLURAL, widget(f"x{i}")
            )
        with pytest.raises(ApiException) as stale_page:
            objects.list_namespaced_custom_object(
                GROUP, VERSION, "expiry", PLURAL, limit=2, _continue=page["metadata"]["continue"]
            )
        assert stale_page.value.status == 410
        assert json.loads(stale_page.value.body)["reason"] == "Expired"
        fresh = objects.list_namespaced_custom_object(GROUP, VERSION, "expiry", PLURAL)
        assert len(fresh["items"]) == 14
        objects.create_namespaced_custom_object(GROUP, VERSION, "expiry", PLURAL, widget("w8"))
        seen = events(
            api, "expiry", resource_version=fresh["metadata"]["resourceVersion"], timeout_seconds=1
        )
        assert [(k, o["metadata"]["name"]) for k, o in seen] == [("ADDED", "w8")]
    finally:
        api.close()


def test_durable_and_resumable_across_restart(small: ServerProcess) -> None:
    api = small.api_client()
    try:
        _make_namespace(api, "restart")
        objects = client.CustomObjectsApi(api)
        created = objects.create_namespaced_custom_object(
            GROUP, VERSION, "restart", PLURAL, widget("keep", size=3)
        )
        before = created["metadata"]["resourceVersion"]
        last = objects.list_namespaced_custom_object(GROUP, VERSION, "restart", PLURAL)
        last_rv = last["metadata"]["resourceVersion"]
    finally:
        api.close()
    small.restart()
    api = small.api_client()
    try:
        objects = client.CustomObjectsApi(api)
        kept = objects.get_namespaced_custom_object(GROUP, VERSION, "restart", PLURAL, "keep")
        assert kept["metadata"]["uid"] == created["metadata"]["uid"]
        assert kept["metadata"]["resourceVersion"] == before
        after = objects.create_namespaced_custom_object(
            GROUP, VERSION, "restart", PLURAL, widget("next")
        )
        assert int(after["metadata"]["resourceVersion"]) > int(last_rv)
        resumed = events(api, "restart", resource_version=last_rv, timeout_seconds=1)
        assert [(k, o["metadata"]["name"]) for k, o in resumed] == [("ADDED", "next")]
        # The change log is persisted: a watch from before the restart replays what it missed.
        replayed = events(api, "restart", resource_version=str(int(before) - 1), timeout_seconds=1)
        assert [(k, o["metadata"]["name"]) for k, o in replayed] == [
            ("ADDED", "keep"),
            ("ADDED", "next"),
        ]
        for i in range(6):  # push the pre-restart changes out of the 5-change history
            objects.create_namespaced_custom_object(
                GROUP, VERSION, "restart", PLURAL, widget(f"more{i}")
            )
    finally:
        api.close()
    small.restart()
    api = small.api_client()
    try:
        with pytest.raises(ApiException) as gone:
            events(api, "restart", resource_version=str(int(before) - 1), timeout_seconds=1)
        assert gone.value.status == 410
    finally:
        api.close()


def test_send_initial_events_ends_with_bookmark(api: client.ApiClient, namespace: str) -> None:
    import json

    objects = client.CustomObjectsApi(api)
    for name in ("i1", "i2"):
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget(name))
    method, url, headers, _, _ = api.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        query_params=[
            ("watch", "1"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", "1"),
        ],
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=30)
    response.read()
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in lines[:3]] == [
        ("ADDED", "i1"),
        ("ADDED", "i2"),
        ("BOOKMARK", None),
    ]
    marker = lines[2]["object"]["metadata"]
    assert marker["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(marker["resourceVersion"]) >= max(
        int(e["object"]["metadata"]["resourceVersion"]) for e in lines[:2]
    )


def test_events_expire_after_ttl(small: ServerProcess) -> None:
    api = small.api_client()
    try:
        _make_namespace(api, "events")
        core = client.CoreV1Api(api)
        core.create_namespaced_event(
            "events",
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(name="short-lived"),
                involved_object=client.V1ObjectReference(kind="Widget", name="w"),
                reason="Test",
                message="expires",
                type="Normal",
            ),
        )
        kept = core.create_namespaced_config_map(
            "events", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="stays"))
        )
        deadline = time.monotonic() + 20
        while core.list_namespaced_event("events").items:
            assert time.monotonic() < deadline, "the Event did not expire"
            time.sleep(0.2)
        assert core.read_namespaced_config_map("stays", "events").metadata.uid == kept.metadata.uid
    finally:
        api.close()
