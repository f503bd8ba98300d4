"""A kind is added by registering one resource type with its strategy: the generic create,
update and delete code then applies that kind's defaulting, validation, status rule and
deletion hook without knowing the kind. Runs the server's own `Core` on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metal3.apiserver.core import Core, WriteOptions
from metal3.apiserver.deletion import Deleter
from metal3.apiserver.errors import ApiError, Cause
from metal3.apiserver.registry import BUILTINS, Registry, ResourceType
from metal3.apiserver.store import Obj, Store
from metal3.apiserver.strategies import Strategy

CLEANUP = "example.test/labelled-configmaps"


class GizmoStrategy(Strategy):
    """Defaults spec.color, refuses a negative size and any change of color, and on deletion
    first deletes the ConfigMaps labelled with the gizmo's name."""

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        spec = obj.setdefault("spec", {})
        spec.setdefault("color", "grey")
        size = spec.get("size")
        if not isinstance(size, int) or size < 0:
            return [("spec.size", "FieldValueInvalid", "Invalid value: must be 0 or more")]
        return []

    def validate_update(self, rt: ResourceType, new: Obj, old: Obj) -> list[Cause]:
        if new["spec"].get("color") != old["spec"].get("color"):
            return [("spec.color", "FieldValueForbidden", "Forbidden: field is immutable")]
        return []

    def deletion_finalizers(self, obj: Obj) -> tuple[str, ...]:
        return (CLEANUP,)

    def finalize(self, deleter: Deleter, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        if CLEANUP not in (meta.get("finalizers") or []):
            return
        config_maps = deleter.registry.by_key("/configmaps")
        assert config_maps is not None
        for item in deleter.store.items(config_maps.key, meta["namespace"]):
            if (item["metadata"].get("labels") or {}).get("gizmo") == meta["name"]:
                deleter.delete(config_maps, meta["namespace"], item["metadata"]["name"])
        deleter.drop_finalizer(rt, obj, CLEANUP)


GIZMOS = ResourceType(
    "example.test",
    ("v1",),
    "v1",
    "gizmos",
    "gizmo",
    "Gizmo",
    "GizmoList",
    True,
    status_subresource=True,
    strategy=GizmoStrategy(),
)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    store = Store(tmp_path / "state.db")
    core = Core(store, Registry((*BUILTINS, GIZMOS)))
    namespaces = core.registry.by_key("/namespaces")
    assert namespaces is not None
    core.create(namespaces, "v1", None, {"metadata": {"name": "shop"}})
    yield core
    store.close()


def test_the_registered_kind_is_served_and_others_are_not_changed(core: Core) -> None:
    assert core.registry.lookup("example.test", "v1", "gizmos") is GIZMOS
    assert Registry().by_key(GIZMOS.key) is None
    config_maps = core.registry.lookup("", "v1", "configmaps")
    created = core.create(config_maps, "v1", "shop", {"metadata": {"name": "plain"}})
    assert "color" not in created  # the gizmo rules apply to gizmos only


def test_create_and_update_follow_the_strategy(core: Core) -> None:
    created = core.create(
        GIZMOS,
        "v1",
        "shop",
        {"metadata": {"name": "g1"}, "spec": {"size": 2}, "status": {"ready": True}},
    )
    assert created["spec"] == {"size": 2, "color": "grey"}
    assert "status" not in created  # /status owns it: the generic rule, kept by default
    assert created["apiVersion"] == "example.test/v1" and created["kind"] == "Gizmo"

    with pytest.raises(ApiError) as negative:
        core.create(GIZMOS, "v1", "shop", {"metadata": {"name": "g2"}, "spec": {"size": -1}})
    assert negative.value.code == 422
    assert negative.value.details is not None
    assert [c["field"] for c in negative.value.details["causes"]] == ["spec.size"]

    repainted = {**created, "spec": {"size": 2, "color": "red"}}
    with pytest.raises(ApiError) as immutable:
        core.update(GIZMOS, "v1", "shop", "g1", repainted)
    assert immutable.value.code == 422 and "spec.color" in immutable.value.message
    resized = core.update(GIZMOS, "v1", "shop", "g1", {**created, "spec": {"size": 5}})
    assert resized["spec"] == {"size": 5, "color": "grey"}


def test_deletion_runs_the_strategy_finalizer(core: Core) -> None:
    config_maps = core.registry.lookup("", "v1", "configmaps")
    for name, labels in (("mine", {"gizmo": "g1"}), ("other", {"gizmo": "g9"}), ("bare", {})):
        core.create(config_maps, "v1", "shop", {"metadata": {"name": name, "labels": labels}})
    core.create(GIZMOS, "v1", "shop", {"metadata": {"name": "g1"}, "spec": {"size": 1}})

    core.delete(GIZMOS, "shop", "g1")

    assert core.store.get(GIZMOS.key, "shop", "g1") is None
    left = [obj["metadata"]["name"] for obj in core.store.items(config_maps.key, "shop")]
    assert left == ["bare", "other"]
