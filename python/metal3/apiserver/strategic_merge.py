"""Kubernetes strategic merge patch, applied as kube-apiserver applies it (apimachinery's
strategicpatch with its server-side options): maps merge and `null` deletes; lists whose field
metadata says `merge` are merged (scalars as a set, objects by their merge key), every other
list is replaced. Directives:

- `$patch: replace` in a map replaces it; as an item of a merged list, replaces the list.
- `$patch: delete` in a map empties it; as an item of a merged list, deletes the items whose
  merge key matches.
- `$retainKeys: [...]` drops the map's keys not listed (a patch key outside it is an error).
- `$deleteFromPrimitiveList/<field>: [...]` removes those values from a list of scalars.
- `$setElementOrder/<field>: [...]` orders the resulting list: listed items in that order,
  items only the server has kept near their old neighbours.

Without `$setElementOrder`, items of a merged list that the patch names come first in patch
order, interleaved with the server's other items where the server's own order relates them.
Directive keys left where upstream keeps them verbatim are dropped from the result, as the
typed decode of a built-in object drops them there. A malformed patch is a 400 Bad Request
(kube-apiserver answers most of these with a 500).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from metal3.apiserver.errors import ApiError, bad_request
from metal3.apiserver.patch_meta import PLAIN, FieldMeta, Fields

PATCH = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_FROM_LIST = "$deleteFromPrimitiveList"
SET_ORDER = "$setElementOrder"

Json = dict[str, Any]


def apply(original: Json, patch: Json, fields: Fields) -> Json:
    """`original` patched by `patch`; neither argument is changed."""
    merged = _merge_map(copy.deepcopy(original), copy.deepcopy(patch), fields)
    result: Json = _drop_directive_keys(merged)
    return result


# -- maps ------------------------------------------------------------------------------------


def _merge_map(original: Json, patch: Json, fields: Fields) -> Json:
    if PATCH in patch:
        return _map_directive(patch)
    _retain_keys(original, patch)
    _apply_element_orders(original, patch, fields)
    deletions = [key for key in patch if key.startswith(DELETE_FROM_LIST)]
    for key in [key for key in patch if not key.startswith(DELETE_FROM_LIST)] + deletions:
        value = patch[key]
        delete_list = key in deletions
        name = _directive_target(key, DELETE_FROM_LIST) if delete_list else key
        if value is None:
            original.pop(name, None)
            continue
        current = original.get(name)
        if name not in original or type(current) is not type(value):
            if not delete_list:
                _set_verbatim(original, name, _without_nulls(value))
            continue
        meta = fields.get(name, PLAIN)
        if isinstance(current, dict) and isinstance(value, dict):
            original[name] = _merge_map(current, value, meta.fields)
        elif isinstance(current, list) and isinstance(value, list):
            original[name] = _merge_list_field(current, value, meta, delete_list)
        else:
            _set_verbatim(original, name, value)
    return original


def _map_directive(patch: Json) -> Json:
    directive = patch[PATCH]
    if directive == "replace":
        return {key: value for key, value in patch.items() if key != PATCH}
    if directive == "delete":
        return {}
    raise bad_request(f"unknown patch type: {directive} in map: {_show(patch)}")


def _retain_keys(original: Json, patch: Json) -> None:
    if RETAIN_KEYS not in patch:
        return
    keep = patch.pop(RETAIN_KEYS)
    if not isinstance(keep, list):
        raise bad_request("invalid patch format of retainKeys")
    allowed = {_hashable(key) for key in keep}
    for key, value in patch.items():
        if value is None or key.startswith((DELETE_FROM_LIST, SET_ORDER)):
            continue
        if _hashable(key) not in allowed:
            raise bad_request("invalid patch format of retainKeys")
    for key in [key for key in original if _hashable(key) not in allowed]:
        del original[key]


def _set_verbatim(original: Json, name: str, value: Any) -> None:
    """A value the server has nothing to merge with, minus maps that carry `$patch`."""
    kept, keep = _without_patch_maps(value)
    if keep:
        original[name] = kept
    else:
        original.pop(name, None)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _without_patch_maps(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        if PATCH in value:
            return None, False
        kept_map: Json = {}
        for key, item in value.items():
            kept, keep = _without_patch_maps(item)
            if keep:
                kept_map[key] = kept
        return kept_map, True
    if isinstance(value, list):
        kept_list = []
        for item in value:
            kept, keep = _without_patch_maps(item)
            if keep:
                kept_list.append(kept)
        return kept_list, True
    return value, True


def _drop_directive_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _drop_directive_keys(item)
            for key, item in value.items()
            if key not in (PATCH, RETAIN_KEYS) and not key.startswith((DELETE_FROM_LIST, SET_ORDER))
        }
    if isinstance(value, list):
        return [_drop_directive_keys(item) for item in value]
    return value


def _directive_target(key: str, prefix: str) -> str:
    head, slash, target = key.partition("/")
    if not slash or head != prefix:
        if prefix == DELETE_FROM_LIST:
            raise bad_request("invalid patch format of primitive list")
        raise bad_request("invalid patch format of setElementOrder list")
    return target


# -- lists -----------------------------------------------------------------------------------


def _merge_list_field(current: list[Any], patch: list[Any], meta: FieldMeta, delete: bool) -> Any:
    if meta.merge or delete:
        return _merge_list(current, patch, meta, delete)[0]
    return patch


def _merge_list(
    original: list[Any], patch: list[Any], meta: FieldMeta, delete: bool
) -> tuple[list[Any], list[Any]]:
    """The merged list, and the order reference that a `$setElementOrder` on the same field
    uses afterwards (see `_LiveStorage`)."""
    if not original and not patch:
        return original, original
    kind = _element_kind(original, patch)
    if kind is not dict:
        if delete:
            doomed = {_hashable(item) for item in patch}
            return [item for item in original if _hashable(item) not in doomed], original
        merged = _unique(original + patch)
        patch_items, server_only = _partition(merged, patch, "")
        return _order(patch_items, server_only, patch, original, "", kind), original
    key = meta.merge_key
    if not key:
        raise bad_request("cannot merge lists without merge key")
    live = _LiveStorage(original)
    additions: list[Any] = []
    replace = False
    for item in patch:
        directive = item.get(PATCH)
        if PATCH not in item:
            additions.append(item)
        elif directive == "delete":
            if key not in item:
                raise _no_merge_key(item, key)
            live.delete_matching(key, item[key])
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise bad_request("merging lists cannot yet be specified in the patch")
        else:
            raise bad_request(f"unknown patch type: {directive} in map: {_show(item)}")
    if replace:
        merged, patch_order, server_order = additions, [], additions
    else:
        server_order = list(live.items)
        for item in additions:
            if key not in item:
                raise _no_merge_key(item, key)
            index = _find(live.items, key, item[key])
            if index is None:
                live.append(item)
            else:
                live.items[index] = _merge_map(live.items[index], item, meta.fields)
        merged, patch_order = live.items, additions
    patch_items, server_only = _partition(merged, patch_order, key)
    return _order(patch_items, server_only, patch_order, server_order, key, dict), live.view


class _LiveStorage:
    """The live list as Go's merge edits it in place. Deletions shift the items left inside
    the live list's storage and appends write after them while there is room, so when a
    `$setElementOrder` then consults "the live list" it sees that storage: the items left
    after deletions, the first appended ones in the freed slots, nothing past the live list's
    length. kube-apiserver's results depend on this, so it is reproduced here."""

    def __init__(self, original: list[Any]) -> None:
        self.items = list(original)
        self.view = list(original)

    def delete_matching(self, key: str, value: Any) -> None:
        while (index := _find(self.items, key, value)) is not None:
            length = len(self.items)
            self.view[index : length - 1] = self.view[index + 1 : length]
            del self.items[index]

    def append(self, item: Any) -> None:
        if len(self.items) < len(self.view):
            self.view[len(self.items)] = item
        self.items.append(item)


def _apply_element_orders(original: Json, patch: Json, fields: Fields) -> None:
    for directive in [key for key in patch if key.startswith(SET_ORDER)]:
        order = patch.pop(directive)
        if not isinstance(order, list):
            raise bad_request(f"expected a list, but received {_type_name(order)}")
        name = _directive_target(directive, SET_ORDER)
        live = _list_or_none(original, name)
        changes = _list_or_none(patch, name)
        meta = fields.get(name, PLAIN)
        _check_order(changes or [], order, meta.merge_key)
        if live is not None and changes is not None:
            merged, reference = _merge_list_field_with_reference(live, changes, meta)
        elif live is not None:
            merged, reference = live, live
        elif changes is not None:
            merged, reference = _without_patch_maps(changes)[0], []
        else:
            continue
        patch.pop(name, None)
        if not merged and not reference and not changes:
            original[name] = merged
            continue
        kind = _element_kind(reference, changes or [])
        listed, server_only = _partition(merged, order, meta.merge_key)
        original[name] = _order(listed, server_only, order, reference, meta.merge_key, kind)


def _list_or_none(holder: Json, name: str) -> list[Any] | None:
    """The list under `name`, None when there is no such key; any other value is an error."""
    if name not in holder:
        return None
    value = holder[name]
    if not isinstance(value, list):
        raise bad_request(f"expected a list, but received {_type_name(value)}")
    return value


def _merge_list_field_with_reference(
    live: list[Any], changes: list[Any], meta: FieldMeta
) -> tuple[list[Any], list[Any]]:
    if meta.merge:
        return _merge_list(live, changes, meta, False)
    return changes, live


def _check_order(changes: list[Any], order: list[Any], key: str) -> None:
    """The patch's items (deletions aside) must all be named by `$setElementOrder`, in the
    same relative order."""
    if not order or not changes:
        return
    pending = changes
    if key:
        for item in changes:
            if not isinstance(item, dict):
                raise bad_request(f"expected a map, but received {_type_name(item)}")
        pending = [item for item in changes if item.get(PATCH) != "delete"]
    at, wanted = 0, 0
    while at < len(pending) and wanted < len(order):
        if isinstance(pending[at], dict) and PATCH in pending[at]:
            at += 1
            continue
        if _same_key(pending[at], order[wanted], key):
            at += 1
        wanted += 1
    if at < len(pending) and wanted >= len(order):
        raise bad_request(
            f"the order in patch list:\n{_show(changes)}\n doesn't match {SET_ORDER} list:\n"
            f"{_show(order)}"
        )


# -- ordering --------------------------------------------------------------------------------


def _partition(merged: list[Any], by: list[Any], key: str) -> tuple[list[Any], list[Any]]:
    """(items of `merged` that `by` names, the others), each in `merged` order."""
    if key:
        for item in by:
            if not isinstance(item, dict):
                raise bad_request(f"expected a map, but received {_type_name(item)}")
        named = {_hashable(item[key]) for item in by if key in item}
        inside: list[Any] = []
        outside: list[Any] = []
        for item in merged:
            if not isinstance(item, dict):
                raise bad_request(f"expected a map, but received {_type_name(item)}")
            if key not in item:
                raise _no_merge_key(item, key)
            (inside if _hashable(item[key]) in named else outside).append(item)
        return inside, outside
    listed = {_hashable(item) for item in by}
    inside = [item for item in merged if _hashable(item) in listed]
    outside = [item for item in merged if _hashable(item) not in listed]
    return inside, outside


def _order(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    key: str,
    kind: type,
) -> list[Any]:
    """Patch items sorted by the patch's order and server-only items by the server's, then
    interleaved: a server-only item goes before a patch item when the server's order puts it
    first, and patch items the server's order does not know go as early as they can."""
    patch_items = _sort_by(patch_items, patch_order, key, kind)
    server_only = _sort_by(server_only, server_order, key, kind)
    position = _positions(server_order, key, kind)
    merged: list[Any] = []
    left, right = 0, 0
    while left < len(server_only) or right < len(patch_items):
        if right >= len(patch_items):
            merged.append(server_only[left])
            left += 1
        elif left >= len(server_only):
            merged.append(patch_items[right])
            right += 1
        else:
            mine = position(server_only[left])
            theirs = position(patch_items[right])
            if mine is not None and theirs is not None and mine < theirs:
                merged.append(server_only[left])
                left += 1
            else:
                merged.append(patch_items[right])
                right += 1
    return merged


def _sort_by(items: list[Any], order: list[Any], key: str, kind: type) -> list[Any]:
    deleted: list[Any] = []
    if kind is dict:
        for item in items + order:
            if not isinstance(item, dict):
                raise bad_request(f"expected a map, but received {_type_name(item)}")
            if key not in item:
                raise _no_merge_key(item, key)
        deleted = [item for item in items if item.get(PATCH) == "delete"]
        items = [item for item in items if item.get(PATCH) != "delete"]
    position = _positions(order, key, kind)
    places = [position(item) for item in items]
    if all(place is not None for place in places):
        ranked = sorted(range(len(items)), key=lambda i: places[i] or 0)
        return [items[i] for i in ranked] + deleted
    return _insertion_sort(items, position) + deleted


def _insertion_sort(items: list[Any], position: Callable[[Any], int | None]) -> list[Any]:
    """Go's stable sort of up to 20 items with upstream's comparison, which calls an item the
    order does not name "less" than any other."""
    result = list(items)
    for i in range(1, len(result)):
        j = i
        while j > 0:
            mine, theirs = position(result[j]), position(result[j - 1])
            if mine is not None and theirs is not None and mine >= theirs:
                break
            result[j], result[j - 1] = result[j - 1], result[j]
            j -= 1
    return result


def _positions(order: list[Any], key: str, kind: type) -> Callable[[Any], int | None]:
    """Where an item first appears in `order` (by merge key for objects), or None."""
    first: dict[Hashable, int] = {}
    for index, item in enumerate(order):
        first.setdefault(_hashable(_identity(item, key, kind)), index)

    def position(item: Any) -> int | None:
        return first.get(_hashable(_identity(item, key, kind)))

    return position


def _identity(item: Any, key: str, kind: type) -> Any:
    if kind is dict:
        return item.get(key) if isinstance(item, dict) else None
    return item


# -- values ----------------------------------------------------------------------------------


def _element_kind(*lists: list[Any]) -> type:
    """The one type all items share (maps count as one type); upstream refuses the rest."""
    kinds = {type(item) for items in lists for item in items}
    if not kinds:
        raise bad_request("no elements in any of the given slices")
    if list in kinds:
        raise ApiError(422, "lists of lists are not supported", "Invalid")
    if len(kinds) > 1 or type(None) in kinds:
        raise bad_request(f"list element types are not identical: {_show(list(lists))}")
    return kinds.pop()


def _unique(items: Iterable[Any]) -> list[Any]:
    seen: set[Hashable] = set()
    result = []
    for item in items:
        marker = _hashable(item)
        if marker not in seen:
            seen.add(marker)
            result.append(item)
    return result


def _find(items: list[Any], key: str, value: Any) -> int | None:
    wanted = _hashable(value)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"value for key {index} is not a map")
        if key in item and _hashable(item[key]) == wanted:
            return index
    return None


def _same_key(left: Any, right: Any, key: str) -> bool:
    if not key:
        return _hashable(left) == _hashable(right)
    for item in (left, right):
        if not isinstance(item, dict):
            raise bad_request(f"expected a map, but received {_type_name(item)}")
        if key not in item:
            raise _no_merge_key(item, key)
    return _hashable(left[key]) == _hashable(right[key])


def _hashable(value: Any) -> Hashable:
    """A set key that compares as Go compares JSON scalars: same type and value (so 1, 1.0 and
    true differ). Objects and lists cannot be compared that way; upstream fails on them too."""
    if isinstance(value, dict | list):
        raise bad_request(f"a list item or merge key must be a scalar, not {_show(value)}")
    return (type(value), value)


def _no_merge_key(item: Any, key: str) -> ApiError:
    return bad_request(f"map: {_show(item)} does not contain declared merge key: {key}")


def _type_name(value: Any) -> str:
    names = {dict: "a map", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
