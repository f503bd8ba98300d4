"""The pure parts of the API server: patch formats, selectors, table JSONPath, durations."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from metal3.apiserver.errors import ApiError
from metal3.apiserver.objects import human_duration
from metal3.apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from metal3.apiserver.protobuf import decode
from metal3.apiserver.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from metal3.apiserver.store import ExpiredError, Store
from metal3.apiserver.table import json_path


def test_merge_patch_rfc7386_examples() -> None:
    # The examples table of RFC 7386, section 3.
    cases: list[tuple[Any, Any, Any]] = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected


def test_json_patch_rfc6902() -> None:
    doc = {"foo": ["bar", "baz"], "x": {"y": 1}}
    result = json_patch(
        doc,
        [
            {"op": "add", "path": "/foo/1", "value": "qux"},
            {"op": "add", "path": "/foo/-", "value": "end"},
            {"op": "remove", "path": "/x/y"},
            {"op": "copy", "from": "/foo/0", "path": "/x/z"},
            {"op": "move", "from": "/x/z", "path": "/moved"},
            {"op": "replace", "path": "/foo/0", "value": "first"},
            {"op": "test", "path": "/moved", "value": "bar"},
            {"op": "add", "path": "/a~1b", "value": 1},
        ],
    )
    assert result == {"foo": ["first", "qux", "baz", "end"], "x": {}, "moved": "bar", "a/b": 1}
    assert doc == {"foo": ["bar", "baz"], "x": {"y": 1}}  # the input is left alone
    with pytest.raises(ApiError) as failed:
        json_patch(doc, [{"op": "test", "path": "/x/y", "value": "1"}])
    assert failed.value.code == 422
    with pytest.raises(ApiError) as missing:
        json_patch(doc, [{"op": "replace", "path": "/nope", "value": 1}])
    assert missing.value.code == 422
    with pytest.raises(ApiError) as malformed:
        json_patch(doc, {"op": "add"})
    assert malformed.value.code == 400


def test_strategic_merge_patch_directives() -> None:
    target = {"data": {"a": "1", "b": "2"}, "list": [1, 2]}
    patch = {"data": {"b": None, "c": "3"}, "list": [3], "$setElementOrder/list": [3]}
    assert strategic_merge_patch(target, patch) == {"data": {"a": "1", "c": "3"}, "list": [3]}
    assert strategic_merge_patch(target, {"data": {"$patch": "replace", "z": "9"}}) == {
        "data": {"z": "9"},
        "list": [1, 2],
    }


def test_label_selectors() -> None:
    obj = {"metadata": {"labels": {"app": "web", "tier": "front"}}}
    assert labels_match(parse_label_selector("app=web,tier in (front,back)"), obj)
    assert labels_match(parse_label_selector("app,!missing,env notin (prod)"), obj)
    assert not labels_match(parse_label_selector("app!=web"), obj)
    assert not labels_match(parse_label_selector("missing"), obj)
    assert not labels_match(parse_label_selector("tier notin (front)"), obj)
    for bad in ("app in (a", "-bad=1", "a=b c"):
        with pytest.raises(ApiError) as info:
            parse_label_selector(bad)
        assert info.value.code == 400


def test_field_selectors() -> None:
    allowed = frozenset({"metadata.name", "involvedObject.kind"})
    obj = {"metadata": {"name": "x"}, "involvedObject": {"kind": "BareMetalHost"}}
    assert fields_match(parse_field_selector("metadata.name=x", allowed), obj)
    assert fields_match(parse_field_selector("involvedObject.kind==BareMetalHost", allowed), obj)
    assert not fields_match(parse_field_selector("metadata.name!=x", allowed), obj)
    with pytest.raises(ApiError):
        parse_field_selector("spec.x=1", allowed)


def test_printer_column_paths() -> None:
    obj = {
        "spec": {"online": True, "list": [{"a": 1}, {"a": 2}]},
        "status": {"conditions": [{"type": "A", "status": "x"}, {"type": "Ready", "status": "y"}]},
    }
    assert json_path(obj, ".spec.online") is True
    assert json_path(obj, ".spec.list[1].a") == 2
    assert json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == "y"
    assert json_path(obj, ".spec.list[*].a") == [1, 2]
    assert json_path(obj, ".spec.missing.deeper") is None


def test_human_durations_match_kubectl() -> None:
    cases = {
        0: "0s",
        59: "59s",
        119: "119s",
        125: "2m5s",
        600: "10m",
        3 * 3600: "3h",
        5 * 3600 + 600: "5h10m",
        30 * 3600: "30h",
        3 * 86400 + 4 * 3600: "3d4h",
        40 * 86400: "40d",
        800 * 86400: "2y70d",
    }
    for seconds, text in cases.items():
        assert human_duration(seconds) == text


def test_protobuf_configmap_envelope() -> None:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([(number << 3) | 2, len(payload)]) + payload

    meta = field(1, b"cm") + field(3, b"ns") + field(11, field(1, b"k") + field(2, b"v"))
    raw = field(1, meta) + field(2, field(1, b"a") + field(2, b"b"))
    body = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"ConfigMap")) + field(2, raw)
    assert decode(body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "ns", "labels": {"k": "v"}},
        "data": {"a": "b"},
    }


def test_store_history_and_persistence(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", history=3)
    for i in range(5):
        store.put("g/things", {"metadata": {"name": f"t{i}", "namespace": "n"}}, None)
    assert store.rv == 5
    assert [c.rv for c in store.since(2)] == [3, 4, 5]
    with pytest.raises(ExpiredError):
        store.since(1)
    store.remove("g/things", store.get("g/things", "n", "t0") or {})
    store.close()
    reopened = Store(tmp_path / "db", history=3)
    assert reopened.rv == 6
    assert [o["metadata"]["name"] for o in reopened.items("g/things")] == ["t1", "t2", "t3", "t4"]
    replay = reopened.since(3)  # the change log survived the restart
    assert [(c.rv, c.type) for c in replay] == [(4, "ADDED"), (5, "ADDED"), (6, "DELETED")]
    assert replay[-1].obj["metadata"]["name"] == "t0"
    assert replay[-1].obj["metadata"]["resourceVersion"] == "6"
    with pytest.raises(ExpiredError):
        reopened.since(2)
    reopened.close()


def test_a_second_store_on_one_database_is_refused_until_the_first_is_closed(
    tmp_path: Path,
) -> None:
    """Two servers on one directory would both number and write changes: the second store
    waits for the first's lock, then is refused with a clear error; closing frees it."""
    first = Store(tmp_path / "db")
    first.put("g/things", {"metadata": {"name": "t", "namespace": "n"}}, None)
    with pytest.raises(OSError, match=r"another API server is using .*db") as refused:
        Store(tmp_path / "db", lock_wait=0.2)
    assert refused.value.errno == errno.EBUSY
    first.close()
    second = Store(tmp_path / "db", lock_wait=0.2)
    assert [o["metadata"]["name"] for o in second.items("g/things")] == ["t"]
    second.close()


def test_a_write_after_the_store_closed_is_a_503_not_an_sqlite_error(tmp_path: Path) -> None:
    """A request still unwinding when the server shut down wrote to the closed database:
    sqlite3's "Cannot operate on a closed database" traceback. It is a 503 now, and the
    resourceVersion is not used up."""
    store = Store(tmp_path / "db")
    kept = store.put("g/things", {"metadata": {"name": "t", "namespace": "n"}}, None)
    store.close()
    for write in (
        lambda: store.put("g/things", {"metadata": {"name": "u", "namespace": "n"}}, None),
        lambda: store.remove("g/things", kept),
    ):
        with pytest.raises(ApiError) as refused:
            write()
        assert (refused.value.code, refused.value.reason) == (503, "ServiceUnavailable")
        assert store.rv == 1
    reopened = Store(tmp_path / "db")
    assert [o["metadata"]["name"] for o in reopened.items("g/things")] == ["t"]
    reopened.close()


def test_cli_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metal3",
            "apiserver",
            "--data-dir",
            str(tmp_path),
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "only allowed on a loopback address" in done.stderr
    assert not (tmp_path / "kubeconfig").exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "metal3",
            "apiserver",
            "--data-dir",
            str(tmp_path),
            "--listen",
            "nonsense",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
