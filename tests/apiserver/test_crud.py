"""CRUD contract through the official `kubernetes` client: what a real kube-apiserver does."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from apiserver_kit import GROUP, PLURAL, VERSION, ServerProcess, raw, widget
from kubernetes import client
from kubernetes.client.rest import ApiException


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def test_create_sets_server_fields(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    created, code, _ = objects.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, namespace, PLURAL, widget("w1", size=3)
    )
    assert code == 201
    meta = created["metadata"]
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert meta["namespace"] == namespace
    assert created["spec"] == {"size": 3, "color": "red"}  # default applied

    generated = objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {**widget(""), "metadata": {"generateName": "gen-"}},
    )
    name = generated["metadata"]["name"]
    assert name.startswith("gen-") and len(name) == len("gen-") + 5
    fetched = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert fetched["metadata"]["uid"] == generated["metadata"]["uid"]
    later = objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("w2"))
    assert int(later["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


def test_errors_are_status_objects(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("dup"))
    with pytest.raises(ApiException) as exists:
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("dup"))
    body = status_of(exists.value)
    assert exists.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "group": GROUP, "kind": PLURAL}
    assert body["message"] == f'{PLURAL}.{GROUP} "dup" already exists'

    with pytest.raises(ApiException) as missing:
        objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "nope")
    body = status_of(missing.value)
    assert missing.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == f'{PLURAL}.{GROUP} "nope" not found'

    with pytest.raises(ApiException) as no_ns:
        objects.create_namespaced_custom_object(GROUP, VERSION, "no-such-ns", PLURAL, widget("x"))
    assert no_ns.value.status == 404
    assert status_of(no_ns.value)["message"] == 'namespaces "no-such-ns" not found'

    code, not_allowed = raw(api, "POST", f"/apis/{GROUP}/{VERSION}/{PLURAL}", body=widget("x"))
    assert code == 405 and not_allowed["reason"] == "MethodNotAllowed"
    code, unknown = raw(api, "GET", f"/apis/{GROUP}/{VERSION}/gizmos")
    assert code == 404 and unknown["reason"] == "NotFound"

    with pytest.raises(ApiException) as bad_name:
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("Bad_"))
    assert bad_name.value.status == 422
    assert status_of(bad_name.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_validation_defaulting_and_pruning(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)

    def rejected(body: dict[str, Any]) -> list[dict[str, Any]]:
        with pytest.raises(ApiException) as info:
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        status = status_of(info.value)
        assert info.value.status == 422 and status["reason"] == "Invalid"
        assert status["details"]["kind"] == "Widget" and status["details"]["group"] == GROUP
        causes: list[dict[str, Any]] = status["details"]["causes"]
        return causes

    missing = rejected({**widget("v1"), "spec": {}})
    assert missing == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.size"}
    ]
    assert rejected(widget("v2", color="pink"))[0]["reason"] == "FieldValueNotSupported"
    assert rejected(widget("v3", size="big"))[0]["field"] == "spec.size"
    assert rejected(widget("v4", size=-1))[0]["field"] == "spec.size"
    assert rejected(widget("v5", mac="zz:00:00:00:00:00"))[0]["field"] == "spec.mac"
    assert rejected(widget("v6", port=1.5))[0]["field"] == "spec.port"
    assert rejected(widget("v7", note=None, tags=[1]))[0]["field"] == "spec.tags[0]"

    ok = objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        widget("v8", port="http", note=None, extra={"any": {"thing": [1]}}, unknown=5),
    )
    assert ok["spec"] == {
        "size": 1,
        "color": "red",
        "port": "http",
        "note": None,
        "extra": {"any": {"thing": [1]}},
    }
    assert "unknown" not in ok["spec"]
    int_port = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("v9", port=8080)
    )
    assert int_port["spec"]["port"] == 8080

    code, strict = raw(
        api,
        "POST",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        body=widget("v10", bogus=1),
        query=[("fieldValidation", "Strict")],
    )
    assert code == 400
    assert 'unknown field "spec.bogus"' in strict["message"]


def test_list_selectors_and_pages(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    labels = {
        "a": {"app": "web", "tier": "front"},
        "b": {"app": "web", "tier": "back"},
        "c": {"app": "db"},
        "d": {},
    }
    for name, lbls in labels.items():
        body = widget(name)
        body["metadata"]["labels"] = lbls
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def names(**kwargs: Any) -> list[str]:
        listing = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
        assert listing["kind"] == "WidgetList"
        return [item["metadata"]["name"] for item in listing["items"]]

    assert names() == ["a", "b", "c", "d"]
    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier!=front") == ["b"]
    assert names(label_selector="tier!=front") == ["b", "c", "d"]
    assert names(label_selector="app in (db, web)") == ["a", "b", "c"]
    assert names(label_selector="app notin (web)") == ["c", "d"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c", "d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c") == ["a", "b", "d"]
    assert names(field_selector=f"metadata.namespace={namespace}") == ["a", "b", "c", "d"]
    with pytest.raises(ApiException) as bad:
        names(field_selector="spec.size=1")
    assert bad.value.status == 400
    with pytest.raises(ApiException) as bad_label:
        names(label_selector="app in (web")
    assert bad_label.value.status == 400

    everywhere = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="app")
    mine = [
        i["metadata"]["name"]
        for i in everywhere["items"]
        if i["metadata"]["namespace"] == namespace
    ]
    assert mine == ["a", "b", "c"]

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = objects.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, limit=3, _continue=token
        )
        pages += 1
        seen += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == 1
    assert pages == 2 and seen == ["a", "b", "c", "d"]


def test_update_conflicts_and_generation(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    first = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("u", size=1)
    )
    first["spec"]["size"] = 2
    second = objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "u", first)
    assert second["metadata"]["generation"] == 2
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["spec"]["size"] = 3  # first still carries the old resourceVersion
    with pytest.raises(ApiException) as stale:
        objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "u", first)
    body = status_of(stale.value)
    assert stale.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]

    unversioned = dict(second)
    unversioned["metadata"] = {
        k: v for k, v in second["metadata"].items() if k != "resourceVersion"
    }
    with pytest.raises(ApiException) as no_rv:
        objects.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "u", unversioned
        )
    assert no_rv.value.status == 422

    labelled = objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "u", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["generation"] == 2  # metadata only: no bump
    same = objects.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "u", labelled
    )
    assert same["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]

    core = client.CoreV1Api(api)
    cm = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"})
    )
    assert cm.metadata.generation is None
    cm.metadata.resource_version = None
    cm.data = {"a": "2"}
    replaced = core.replace_namespaced_config_map("cm", namespace, cm)  # unconditional: allowed
    assert replaced.data == {"a": "2"}


def test_patch_kinds(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("p", size=1, tags=["a", "b"])
    )
    merged = objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "p", {"spec": {"size": 5, "tags": None}}
    )
    assert merged["spec"] == {"size": 5, "color": "red"}
    assert merged["metadata"]["generation"] == 2

    json_patch = "application/json-patch+json"
    patched = objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "p",
        [
            {"op": "test", "path": "/spec/size", "value": 5},
            {"op": "replace", "path": "/spec/size", "value": 6},
            {"op": "add", "path": "/spec/tags", "value": ["z"]},
        ],
        _content_type=json_patch,
    )
    assert patched["spec"]["size"] == 6 and patched["spec"]["tags"] == ["z"]
    with pytest.raises(ApiException) as failed:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "p",
            [
                {"op": "test", "path": "/spec/size", "value": 99},
                {"op": "replace", "path": "/spec/size", "value": 7},
            ],
            _content_type=json_patch,
        )
    assert failed.value.status == 422
    after = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "p")
    assert after["spec"]["size"] == 6

    with pytest.raises(ApiException) as invalid:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "p", {"spec": {"size": "six"}}
        )
    assert invalid.value.status == 422

    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="s"), data={"a": "1"})
    )
    strategic = core.patch_namespaced_config_map(
        "s",
        namespace,
        {"data": {"b": "2"}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert strategic.data == {"a": "1", "b": "2"}
    code, unsupported = raw(
        api,
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/p",
        body={"spec": {"size": 1}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert code == 415 and unsupported["reason"] == "UnsupportedMediaType"


def test_status_subresource_isolation(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, {**widget("s"), "status": {"phase": "ignored"}}
    )
    assert "status" not in created
    status = objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "s",
        {"spec": {"size": 42}, "status": {"phase": "Ready", "count": 1}},
    )
    assert status["status"] == {"phase": "Ready", "count": 1}
    assert status["spec"]["size"] == 1  # spec change through /status ignored
    assert status["metadata"]["generation"] == 1  # status changes do not bump generation

    status["spec"]["size"] = 9
    status["status"]["phase"] = "Overwritten"
    main = objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "s", status)
    assert main["spec"]["size"] == 9
    assert main["status"]["phase"] == "Ready"  # status change through the main resource ignored
    assert main["metadata"]["generation"] == 2

    main["status"] = {"phase": "Done"}
    put_status = objects.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "s", main
    )
    assert put_status["status"] == {"phase": "Done"}
    with pytest.raises(ApiException) as invalid:
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "s", {"status": {"count": "many"}}
        )
    assert invalid.value.status == 422
    fetched = objects.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "s")
    assert fetched["status"] == {"phase": "Done"}


def test_finalizers_and_graceful_deletion(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    body = widget("f")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    deleting = objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")
    assert deleting["metadata"]["deletionTimestamp"]
    still = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")
    assert still["metadata"]["finalizers"] == ["example.com/hold"]
    assert still["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as more:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "f",
            {"metadata": {"finalizers": ["example.com/hold", "example.com/other"]}},
        )
    assert more.value.status == 422
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "f", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "f")
    assert gone.value.status == 404

    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("pre"))
    with pytest.raises(ApiException) as precondition:
        objects.delete_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "pre",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="other")),
        )
    assert precondition.value.status == 409


def _owned(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    body = widget(name)
    body["metadata"]["ownerReferences"] = [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
        }
    ]
    return body


def test_owner_reference_garbage_collection(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)

    def create(body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return result

    def exists(name: str) -> bool:
        code, _ = raw(api, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}")
        assert code in (200, 404)
        return code == 200

    owner = create(widget("owner"))
    create(_owned("child", owner))
    cm_owned = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(
            name="owned-cm",
            owner_references=[
                client.V1OwnerReference(
                    api_version=f"{GROUP}/{VERSION}",
                    kind="Widget",
                    name="owner",
                    uid=owner["metadata"]["uid"],
                )
            ],
        )
    )
    core.create_namespaced_config_map(namespace, cm_owned)
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner")
    assert not exists("owner") and not exists("child")
    assert (
        core.list_namespaced_config_map(namespace, field_selector="metadata.name=owned-cm").items
        == []
    )

    owner2 = create(widget("owner2"))
    create(_owned("orphan", owner2))
    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "owner2", propagation_policy="Orphan"
    )
    assert not exists("owner2")
    orphan = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orphan")
    assert "ownerReferences" not in orphan["metadata"]

    owner3 = create(widget("owner3"))
    held = _owned("held", owner3)
    held["metadata"]["finalizers"] = ["example.com/hold"]
    create(held)
    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "owner3", propagation_policy="Foreground"
    )
    waiting = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner3")
    assert "foregroundDeletion" in waiting["metadata"]["finalizers"]
    assert waiting["metadata"]["deletionTimestamp"]
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "held", {"metadata": {"finalizers": None}}
    )
    assert not exists("held") and not exists("owner3")


def test_builtin_kinds(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    secret = core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"user": "admin"}),
    )
    assert secret.data == {"user": "YWRtaW4="} and secret.type == "Opaque"
    with pytest.raises(ApiException) as bad:
        core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="b"), data={"k": "!!"})
        )
    assert bad.value.status == 422

    leases = client.CoordinationV1Api(api)
    lease = leases.create_namespaced_lease(
        namespace,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="leader"),
            spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
        ),
    )
    lease.spec.holder_identity = "b"
    renewed = leases.replace_namespaced_lease("leader", namespace, lease)
    assert renewed.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"  # stale: the lease changed hands meanwhile
    with pytest.raises(ApiException) as stale:
        leases.replace_namespaced_lease("leader", namespace, lease)
    assert stale.value.status == 409

    event = core.create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="e1"),
            involved_object=client.V1ObjectReference(kind="Widget", name="w", namespace=namespace),
            reason="Tested",
            message="hello",
            type="Normal",
        ),
    )
    assert event.reason == "Tested"
    found = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=w,involvedObject.kind=Widget"
    )
    assert [e.metadata.name for e in found.items] == ["e1"]
    events = client.EventsV1Api(api)
    new_event = events.create_namespaced_event(
        namespace,
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="e2"),
            event_time="2026-01-01T00:00:00.000000Z",
            reporting_controller="metal3.io/test",
            reporting_instance="t",
            action="Test",
            reason="Tested",
            type="Normal",
            note="hi",
        ),
    )
    assert new_event.note == "hi"


def test_namespace_deletion_removes_contents(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    objects = client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doomed")))
    objects.create_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, widget("w"))
    held = widget("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    objects.create_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, held)
    core.delete_namespace("doomed")
    ns = core.read_namespace("doomed")
    assert ns.status.phase == "Terminating"
    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(GROUP, VERSION, "doomed", PLURAL, widget("late"))
    assert refused.value.status == 403
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, "doomed", PLURAL, "held", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        core.read_namespace("doomed")
    assert gone.value.status == 404


def test_crd_served_without_restart(api: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api)
    objects = client.CustomObjectsApi(api)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.later.metal3.io"},
        "spec": {
            "group": "later.metal3.io",
            "scope": "Cluster",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"n": {"type": "integer"}}}
                            },
                        }
                    },
                }
            ],
        },
    }
    created = ext.create_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    gadget = objects.create_cluster_custom_object(
        "later.metal3.io",
        "v1beta1",
        "gadgets",
        {
            "apiVersion": "later.metal3.io/v1beta1",
            "kind": "Gadget",
            "metadata": {"name": "g"},
            "spec": {"n": 1},
        },
    )
    assert "namespace" not in gadget["metadata"] and "status" not in gadget
    _, discovery = raw(api, "GET", "/apis/later.metal3.io/v1beta1")
    assert [r["name"] for r in discovery["resources"]] == ["gadgets"]
    ext.delete_custom_resource_definition("gadgets.later.metal3.io")
    with pytest.raises(ApiException) as gone:
        objects.get_cluster_custom_object("later.metal3.io", "v1beta1", "gadgets", "g")
    assert gone.value.status == 404


def test_dry_run_changes_nothing(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    dry = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("dry"), dry_run="All"
    )
    assert dry["metadata"]["name"] == "dry"
    listing = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert listing["items"] == []


def test_authentication_and_tls(server: ServerProcess) -> None:
    import ssl
    import urllib.error
    import urllib.request

    for secret_file in ("token", "kubeconfig", "apiserver.key", "state.db"):
        assert (server.data_dir / secret_file).stat().st_mode & 0o077 == 0, secret_file
    assert server.data_dir.stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    request = urllib.request.Request(f"{server.url}/api/v1/namespaces")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert anonymous.value.code == 401
    assert json.loads(anonymous.value.read())["reason"] == "Unauthorized"
    request.add_header("Authorization", "Bearer wrong")
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert wrong.value.code == 401
    good = urllib.request.Request(f"{server.url}/api/v1/namespaces/default")
    good.add_header("Authorization", f"Bearer {server.token}")
    with urllib.request.urlopen(good, context=context, timeout=10) as response:
        assert json.loads(response.read())["metadata"]["name"] == "default"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(good, context=ssl.create_default_context(), timeout=10)


def test_concurrent_writers_conflict(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("c", 0))
    writers, increments = 4, 15
    conflicts = [0] * writers
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            done = 0
            while done < increments:
                current = objects.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, "c", _request_timeout=10
                )
                current["spec"]["size"] += 1
                try:
                    objects.replace_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, "c", current, _request_timeout=10
                    )
                    done += 1
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    conflicts[index] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    final = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c")
    assert final["spec"]["size"] == writers * increments  # no lost update
    assert final["metadata"]["generation"] == 1 + writers * increments
    assert sum(conflicts) > 0


def test_table_output(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("t", size=7, color="blue")
    )
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "t",
        {"status": {"phase": "Up", "conditions": [{"type": "Ready", "status": "True"}]}},
    )
    _, table = raw(
        api,
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", 0),
        ("Size", 0),
        ("Phase", 0),
        ("Ready", 0),
        ("Color", 1),
        ("Age", 0),
    ]
    (row,) = table["rows"]
    assert row["cells"][:5] == ["t", 7, "Up", "True", "blue"]
    assert row["cells"][5].endswith("s")
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "t"


def test_labels_immutability_and_delete_collection(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    bad = widget("bad-label")
    bad["metadata"]["labels"] = {"app": "not valid!"}
    with pytest.raises(ApiException) as invalid:
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, bad)
    assert invalid.value.status == 422
    assert status_of(invalid.value)["details"]["causes"][0]["field"] == "metadata.labels"

    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="frozen"), data={"a": "1"}, immutable=True
        ),
    )
    with pytest.raises(ApiException) as frozen:
        core.patch_namespaced_config_map("frozen", namespace, {"data": {"a": "2"}})
    assert frozen.value.status == 422
    with pytest.raises(ApiException) as bad_key:
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="k"), data={"a b": "1"}),
        )
    assert bad_key.value.status == 422
    assert status_of(bad_key.value)["details"]["causes"][0]["field"] == "data[a b]"
    relabelled = core.patch_namespaced_config_map(
        "frozen", namespace, {"metadata": {"labels": {"ok": "yes"}}}
    )
    assert relabelled.metadata.labels == {"ok": "yes"} and relabelled.data == {"a": "1"}

    for name, group in (("d1", "x"), ("d2", "x"), ("d3", "y")):
        body = widget(name)
        body["metadata"]["labels"] = {"group": group}
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    objects.delete_collection_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, label_selector="group=x"
    )
    left = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert [item["metadata"]["name"] for item in left["items"]] == ["d3"]
    code, watched = raw(
        api,
        "GET",
        f"/apis/{GROUP}/{VERSION}/watch/namespaces/{namespace}/{PLURAL}",
        query=[("timeoutSeconds", "1")],
    )
    assert (
        code == 200 and watched["type"] == "ADDED" and watched["object"]["metadata"]["name"] == "d3"
    )


def test_discovery_and_openapi_documents(api: client.ApiClient) -> None:
    _, versions = raw(api, "GET", "/api")
    assert versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    _, core = raw(api, "GET", "/api/v1")
    names = {r["name"]: r for r in core["resources"]}
    assert set(names) == {"configmaps", "events", "namespaces", "secrets"}
    assert names["namespaces"]["namespaced"] is False and names["secrets"]["namespaced"] is True
    _, groups = raw(api, "GET", "/apis")
    by_name = {g["name"]: g for g in groups["groups"]}
    for group in (
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        GROUP,
        "metal3.io",
    ):
        assert group in by_name
    assert by_name[GROUP]["preferredVersion"] == {"groupVersion": f"{GROUP}/v1", "version": "v1"}
    _, group_doc = raw(api, "GET", f"/apis/{GROUP}")
    assert group_doc["kind"] == "APIGroup" and group_doc["name"] == GROUP
    _, resources = raw(api, "GET", f"/apis/{GROUP}/{VERSION}")
    assert resources["groupVersion"] == f"{GROUP}/{VERSION}"
    widgets = {r["name"]: r for r in resources["resources"]}
    assert widgets["widgets"]["kind"] == "Widget" and widgets["widgets"]["shortNames"] == ["wd"]
    assert "watch" in widgets["widgets"]["verbs"]
    assert widgets["widgets/status"]["verbs"] == ["get", "patch", "update"]
    _, version = raw(api, "GET", "/version")
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")

    _, v2 = raw(api, "GET", "/openapi/v2")
    definition = v2["definitions"]["io.metal3.test.v1.Widget"]
    assert definition["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "kind": "Widget", "version": "v1"}
    ]
    spec = definition["properties"]["spec"]["properties"]
    assert spec["size"]["type"] == "integer"
    assert "properties" not in spec["extra"]  # preserve-unknown-fields: nothing to check in v2
    assert "type" not in spec["note"]  # nullable: v2 cannot say it, so the type goes
    _, root = raw(api, "GET", "/openapi/v3")
    url = root["paths"][f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]
    path, _, digest = url.partition("?hash=")
    _, v3 = raw(api, "GET", path, query=[("hash", digest)])
    schema = v3["components"]["schemas"]["io.metal3.test.v1.Widget"]
    assert schema["properties"]["spec"]["properties"]["note"]["nullable"] is True
    patch_params = {
        p["name"]
        for item in v3["paths"].values()
        if "patch" in item
        for p in item["patch"]["parameters"]
    }
    assert "fieldValidation" in patch_params


def test_table_versions_and_full_objects(api: client.ApiClient, namespace: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("tv")
    )
    _, old = raw(
        api,
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/tv",
        headers={"Accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"},
        query=[("includeObject", "Object")],
    )
    assert old["apiVersion"] == "meta.k8s.io/v1beta1"
    assert old["rows"][0]["object"]["spec"]["size"] == 1
    _, bare = raw(
        api,
        "GET",
        "/api/v1/namespaces",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        query=[("includeObject", "None"), ("fieldSelector", f"metadata.name={namespace}")],
    )
    assert [c["name"] for c in bare["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert bare["rows"][0]["cells"][:2] == [namespace, "Active"]
    assert "object" not in bare["rows"][0]


def test_partial_object_metadata(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    body = widget("meta-only", size=4)
    body["metadata"]["labels"] = {"k": "v"}
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    accept = (
        "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
    )
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    _, listing = raw(api, "GET", base, headers={"Accept": accept})
    assert listing["kind"] == "PartialObjectMetadataList"
    assert listing["apiVersion"] == "meta.k8s.io/v1"
    (item,) = listing["items"]
    assert item["kind"] == "PartialObjectMetadata" and "spec" not in item
    assert item["metadata"]["labels"] == {"k": "v"}
    _, single = raw(
        api,
        "GET",
        f"{base}/meta-only",
        headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
    )
    assert single["kind"] == "PartialObjectMetadata"
    assert single["metadata"]["uid"] == item["metadata"]["uid"]
    code, watched = raw(
        api,
        "GET",
        base,
        headers={"Accept": accept},
        query=[("watch", "1"), ("timeoutSeconds", "1")],
    )
    assert code == 200 and watched["type"] == "ADDED"
    assert watched["object"]["kind"] == "PartialObjectMetadata"
