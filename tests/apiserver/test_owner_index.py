"""The store's owner index (owner uid -> dependents) that garbage collection reads: written in
the same transaction as each object, following ownerReferences through create, update, patch
and delete, and surviving a SIGKILL of the server."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from apiserver_kit import GROUP, PLURAL, VERSION, ServerProcess, raw, start_server, widget
from kubernetes import client

from metal3.apiserver.store import Obj, Store


def _obj(name: str, uid: str, *owners: str) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "n", "uid": uid}
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Thing", "name": f"owner-{o}", "uid": o} for o in owners
        ]
    return {"metadata": meta}


def _dependents(store: Store, owner_uid: str) -> list[str]:
    return [obj["metadata"]["name"] for _, obj in store.dependents(owner_uid)]


def _index_rows(path: Path) -> list[tuple[str, str, str, str]]:
    """The owner index as it is on disk, read with a connection of its own."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT owner_uid, kind, namespace, name FROM owners ORDER BY owner_uid, name"
        ).fetchall()
    return [tuple(row) for row in rows]


def test_store_index_follows_every_write_and_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.put("g/owners", _obj("owner-a", "a"), None)
    store.put("g/owners", _obj("owner-b", "b"), None)
    d1 = store.put("g/deps", _obj("d1", "u1", "a"), None)
    d2 = store.put("g/deps", _obj("d2", "u2", "a", "b"), None)
    assert _dependents(store, "a") == ["d1", "d2"]
    assert _dependents(store, "b") == ["d2"]

    store.put("g/deps", _obj("d1", "u1", "b"), d1)  # an update moves d1 to owner b
    assert _dependents(store, "a") == ["d2"]
    assert _dependents(store, "b") == ["d1", "d2"]
    store.remove("g/deps", d2)
    assert _dependents(store, "a") == []
    assert _dependents(store, "b") == ["d1"]
    found = store.by_uid("u1")
    assert found is not None and found[0] == "g/deps"
    assert store.by_uid("u2") is None
    assert _index_rows(path) == [("b", "g/deps", "n", "d1")]
    store.close()

    reopened = Store(path)
    assert _dependents(reopened, "b") == ["d1"]
    assert _dependents(reopened, "a") == []
    owner = reopened.by_uid("b")
    assert owner is not None and owner[1]["metadata"]["name"] == "owner-b"
    reopened.close()


def test_store_index_write_shares_the_object_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.put("g/owners", _obj("owner-a", "a"), None)
    with sqlite3.connect(path) as db:  # make the change-log insert of one kind fail
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON changes WHEN NEW.kind = 'g/refused'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    rv = store.rv
    with pytest.raises(sqlite3.DatabaseError, match="refused by the test"):
        store.put("g/refused", _obj("r1", "r", "a"), None)
    assert store.rv == rv
    assert store.get("g/refused", "n", "r1") is None
    assert _dependents(store, "a") == []
    assert _index_rows(path) == []  # the index row went with the rolled-back object
    store.put("g/deps", _obj("d1", "u1", "a"), None)
    assert _index_rows(path) == [("a", "g/deps", "n", "d1")]
    store.close()


def test_store_builds_the_index_for_a_database_written_without_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.put("g/owners", _obj("owner-a", "a"), None)
    store.put("g/deps", _obj("d1", "u1", "a"), None)
    store.put("g/deps", _obj("d2", "u2", "a"), None)
    store.close()
    with sqlite3.connect(path) as db:  # what a server from before the index left behind
        db.execute("DROP TABLE owners")
        db.execute("DELETE FROM meta WHERE key = 'owners'")
    reopened = Store(path)
    assert _dependents(reopened, "a") == ["d1", "d2"]
    assert _index_rows(path) == [("a", "g/deps", "n", "d1"), ("a", "g/deps", "n", "d2")]
    reopened.close()


def _create_widget(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    objects = client.CustomObjectsApi(api)
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def _ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


def _config_map(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "data": {"k": "v"}}
    if owners:
        body["metadata"]["ownerReferences"] = [_ref(o) for o in owners]
    return body


def _get_config_map(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    code, body = raw(api, "GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    assert code in (200, 404), body
    return body if code == 200 else None


def _widget_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    code, body = raw(api, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}")
    assert code in (200, 404), body
    return code == 200


def _delete_widget(api: client.ApiClient, namespace: str, name: str, policy: str = "") -> None:
    query = [("propagationPolicy", policy)] if policy else []
    code, body = raw(
        api,
        "DELETE",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
        query=query,
    )
    assert code == 200, body


def test_garbage_collection_follows_changed_owner_references(
    api: client.ApiClient, namespace: str
) -> None:
    a = _create_widget(api, namespace, widget("a"))
    b = _create_widget(api, namespace, widget("b"))
    c = _create_widget(api, namespace, widget("c"))
    cm_path = f"/api/v1/namespaces/{namespace}/configmaps"
    code, created = raw(api, "POST", cm_path, _config_map("cm", a))
    assert code == 201, created

    # PUT moves the ConfigMap from owner a to owner b: deleting a leaves it alone.
    moved = {**created, "metadata": {**created["metadata"], "ownerReferences": [_ref(b)]}}
    code, body = raw(api, "PUT", f"{cm_path}/cm", moved)
    assert code == 200, body
    _delete_widget(api, namespace, "a")
    kept = _get_config_map(api, namespace, "cm")
    assert kept is not None and [r["name"] for r in kept["metadata"]["ownerReferences"]] == ["b"]

    # A merge patch adds owner c: with b gone, c still owns it, so it stays, owned by c only.
    code, body = raw(
        api,
        "PATCH",
        f"{cm_path}/cm",
        {"metadata": {"ownerReferences": [_ref(b), _ref(c)]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200, body
    _delete_widget(api, namespace, "b")
    kept = _get_config_map(api, namespace, "cm")
    assert kept is not None and [r["name"] for r in kept["metadata"]["ownerReferences"]] == ["c"]

    # A JSON patch drops the last owner reference: deleting c no longer collects it.
    code, body = raw(
        api,
        "PATCH",
        f"{cm_path}/cm",
        [{"op": "remove", "path": "/metadata/ownerReferences"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert code == 200, body
    _delete_widget(api, namespace, "c")
    assert _get_config_map(api, namespace, "cm") is not None

    # And a fresh reference is followed again: deleting the new owner collects it.
    d = _create_widget(api, namespace, widget("d"))
    code, body = raw(
        api,
        "PATCH",
        f"{cm_path}/cm",
        {"metadata": {"ownerReferences": [_ref(d)]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200, body
    _delete_widget(api, namespace, "d")
    assert _get_config_map(api, namespace, "cm") is None


def test_dependents_found_after_the_server_is_killed(tmp_path: Path) -> None:
    server: ServerProcess = start_server(tmp_path)
    try:
        api = server.api_client()
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        code, body = raw(api, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        assert code == 201, body
        background = _create_widget(api, namespace, widget("background"))
        orphaning = _create_widget(api, namespace, widget("orphaning"))
        child = widget("child")
        child["metadata"]["ownerReferences"] = [_ref(background)]
        _create_widget(api, namespace, child)
        cm_path = f"/api/v1/namespaces/{namespace}/configmaps"
        for config_map in (_config_map("owned", background), _config_map("orphan", orphaning)):
            code, created = raw(api, "POST", cm_path, config_map)
            assert code == 201, created
        api.close()

        assert server.proc is not None
        server.proc.kill()  # SIGKILL: nothing is flushed or closed on the way out
        server.proc.wait()
        server.stop()
        server.start()

        api = server.api_client()
        _delete_widget(api, namespace, "background")
        assert not _widget_exists(api, namespace, "child")
        assert _get_config_map(api, namespace, "owned") is None
        _delete_widget(api, namespace, "orphaning", policy="Orphan")
        orphan = _get_config_map(api, namespace, "orphan")
        assert orphan is not None and "ownerReferences" not in orphan["metadata"]
        api.close()
    finally:
        server.stop()
