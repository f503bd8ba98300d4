"""Deleting objects, independent of HTTP: graceful deletion held by finalizers, garbage
collection of dependents through their ownerReferences (Background, Foreground and Orphan
propagation) and the finalizers the server runs itself, which each kind's strategy supplies.

Dependents are found through the store's owner index and owners through its uid map, so
deleting one object costs the same whatever the number of other objects stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from metal3.apiserver import errors
from metal3.apiserver.objects import deep_copy, now
from metal3.apiserver.registry import Registry, ResourceType
from metal3.apiserver.store import Obj, Store

ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
POLICIES = (None, "Orphan", "Background", "Foreground")


@dataclass
class DeleteOptions:
    propagation_policy: str | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False


class Deleter:
    """Every deletion path; like `Core`, each method runs without awaiting, so it is atomic."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: DeleteOptions | None = None,
    ) -> Obj:
        """DELETE of one object: removed at once, or marked with a deletionTimestamp while
        finalizers (its own, the propagation policy's, its kind's) hold it."""
        options = options or DeleteOptions()
        obj = self.store.get(rt.key, namespace or "", name)
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        meta = obj["metadata"]
        if options.precondition_uid and options.precondition_uid != meta["uid"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{options.precondition_rv}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        policy = options.propagation_policy
        if policy not in POLICIES:
            raise errors.invalid(
                "DeleteOptions",
                "",
                "",
                [
                    (
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{policy}": supported values: "Foreground", '
                        '"Background", "Orphan", "nil"',
                    )
                ],
            )
        if options.dry_run:
            return obj
        strategy = rt.strategy
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Orphan" and ORPHAN not in finalizers:
            finalizers.append(ORPHAN)
        if policy == "Foreground" and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        for finalizer in strategy.deletion_finalizers(obj):
            if finalizer not in finalizers:
                finalizers.append(finalizer)
        if meta.get("deletionTimestamp"):
            if finalizers == list(meta.get("finalizers") or []):
                return obj
            updated = deep_copy(obj)
            updated["metadata"]["finalizers"] = finalizers
            obj = self.store.put(rt.key, updated, obj)
        elif finalizers or strategy.held(obj):
            updated = deep_copy(obj)
            umeta = updated["metadata"]
            if finalizers:
                umeta["finalizers"] = finalizers
            umeta["deletionTimestamp"] = now()
            umeta["deletionGracePeriodSeconds"] = 0
            if rt.has_generation:
                umeta["generation"] = umeta.get("generation", 1) + 1
            strategy.prepare_for_delete(updated)
            obj = self.store.put(rt.key, updated, obj)
        else:
            return self.remove(rt, obj)
        self._run_system_finalizers(rt, obj)
        current = self.store.get(rt.key, meta.get("namespace", ""), name)
        if current is None:
            return {**obj, "metadata": {**obj["metadata"], "finalizers": []}}
        return current

    def expire(self, ttl: float) -> int:
        """Delete the objects of expiring kinds (Events) not written for `ttl` seconds
        (kube-apiserver's --event-ttl); returns how many went."""
        limit = datetime.now(UTC) - timedelta(seconds=ttl)
        expired = 0
        for rt in self.registry.types():
            if not rt.strategy.expires:
                continue
            for obj in self.store.items(rt.key):
                written = rt.strategy.last_write(obj)
                if written is not None and written < limit:
                    meta = obj["metadata"]
                    self.delete(rt, meta.get("namespace"), meta["name"])
                    expired += 1
        return expired

    def held(self, rt: ResourceType, obj: Obj) -> bool:
        """Whether something still keeps a deleted object: finalizers, or its kind's rule."""
        return bool(obj["metadata"].get("finalizers")) or rt.strategy.held(obj)

    def remove(self, rt: ResourceType, obj: Obj) -> Obj:
        """Removes an object from the store, then collects what depended on it and lets
        whatever waited for it proceed."""
        gone = self.store.remove(rt.key, obj)
        rt.strategy.after_write(rt, self.store, self.registry)
        self._after_removal(rt, gone)
        return gone

    def drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str) -> None:
        """Removes one finalizer from the stored object; removes the object if that was the
        last thing holding it."""
        current = self.store.get(
            rt.key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
        )
        if current is None or finalizer not in (current["metadata"].get("finalizers") or []):
            return
        updated = deep_copy(current)
        updated["metadata"]["finalizers"] = [
            f for f in updated["metadata"]["finalizers"] if f != finalizer
        ]
        if not updated["metadata"]["finalizers"]:
            updated["metadata"].pop("finalizers")
        if not self.held(rt, updated):
            self.remove(rt, updated)
        else:
            self.store.put(rt.key, updated, current)

    # -- garbage collection ------------------------------------------------------------------

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        """Served objects whose ownerReferences name `uid` (each checked against the object
        itself, so nothing is ever collected on the index's word alone)."""
        found: list[tuple[ResourceType, Obj]] = []
        for key, obj in self.store.dependents(uid):
            rt = self.registry.by_key(key)
            refs = obj["metadata"].get("ownerReferences") or []
            if rt is not None and any(ref.get("uid") == uid for ref in refs):
                found.append((rt, obj))
        return found

    def _run_system_finalizers(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if ORPHAN in finalizers:
            for dep_rt, dep in self._dependents(meta["uid"]):
                updated = deep_copy(dep)
                refs = [
                    r for r in updated["metadata"]["ownerReferences"] if r.get("uid") != meta["uid"]
                ]
                if refs:
                    updated["metadata"]["ownerReferences"] = refs
                else:
                    updated["metadata"].pop("ownerReferences")
                self.store.put(dep_rt.key, updated, dep)
            self.drop_finalizer(rt, obj, ORPHAN)
        if FOREGROUND in finalizers:
            for dep_rt, dep in self._dependents(meta["uid"]):
                self._collect(dep_rt, dep, meta["uid"], "Foreground")
            self._check_foreground(rt, obj)
        rt.strategy.finalize(self, rt, obj)

    def _collect(self, rt: ResourceType, dep: Obj, owner_uid: str, policy: str | None) -> None:
        """Garbage-collect one dependent whose owner `owner_uid` is going away: it loses that
        reference if another owner still exists, else it is deleted."""
        refs = dep["metadata"].get("ownerReferences") or []
        others = [
            r
            for r in refs
            if r.get("uid") != owner_uid and self.store.by_uid(str(r.get("uid"))) is not None
        ]
        meta = dep["metadata"]
        if others:
            updated = deep_copy(dep)
            updated["metadata"]["ownerReferences"] = others
            self.store.put(rt.key, updated, dep)
            return
        if self.store.get(rt.key, meta.get("namespace", ""), meta["name"]) is None:
            return
        self.delete(
            rt, meta.get("namespace"), meta["name"], DeleteOptions(propagation_policy=policy)
        )

    def _check_foreground(self, rt: ResourceType, obj: Obj) -> None:
        if not self._dependents(obj["metadata"]["uid"]):
            self.drop_finalizer(rt, obj, FOREGROUND)

    def _after_removal(self, rt: ResourceType, gone: Obj) -> None:
        meta = gone["metadata"]
        for dep_rt, dep in self._dependents(meta["uid"]):
            self._collect(dep_rt, dep, meta["uid"], None)
        for owner in meta.get("ownerReferences") or []:
            found = self.store.by_uid(str(owner.get("uid")))
            if found is None:
                continue
            key, candidate = found
            if FOREGROUND in (candidate["metadata"].get("finalizers") or []):
                owner_rt = self.registry.by_key(key)
                if owner_rt is not None:
                    self._check_foreground(owner_rt, candidate)
        for holder_key, holder_name in rt.strategy.holders(rt, gone):
            holder_rt = self.registry.by_key(holder_key)
            if holder_rt is not None:
                holder_rt.strategy.release(self, holder_rt, holder_name)
