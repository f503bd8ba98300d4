"""Strategic merge patch against upstream's own cases. The fixtures below are the expectations
of apimachinery's strategicpatch tests (patch_test.go: the custom cases, the raw cases and the
three-way cases' `current` + `threeWay` -> `result`), applied with the field metadata of that
test's `MergeItem` struct; the kind-level cases follow from the upstream struct tags of
ObjectMeta and Namespace."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from metal3.apiserver.errors import ApiError
from metal3.apiserver.patch import strategic_merge_patch
from metal3.apiserver.patch_meta import FieldMeta, Fields, fields_for

# Upstream's test struct: `mergingList` merges by `name` (and so do `mergeItemPtr` and
# `retainKeysMergingList`), `mergingIntList` is a merged set, the `nonMerging*` lists replace.
MERGE_ITEM: dict[str, FieldMeta] = {}
MERGE_ITEM.update(
    {
        "mergingList": FieldMeta(merge=True, merge_key="name", fields=MERGE_ITEM),
        "nonMergingList": FieldMeta(fields=MERGE_ITEM),
        "mergingIntList": FieldMeta(merge=True),
        "mergeItemPtr": FieldMeta(merge=True, merge_key="name", fields=MERGE_ITEM),
        "retainKeysMergingList": FieldMeta(merge=True, merge_key="name", fields=MERGE_ITEM),
        "retainKeysMap": FieldMeta(
            fields={
                "mergingIntList": FieldMeta(merge=True),
                "mergingList": FieldMeta(merge=True, merge_key="name", fields=MERGE_ITEM),
            }
        ),
    }
)

UPSTREAM = yaml.safe_load(
    """
- name: unique scalars when merging lists
  live: {mergingIntList: [1, 2]}
  patch: {mergingIntList: [2, 3]}
  result: {mergingIntList: [1, 2, 3]}
- name: delete map from nested map
  live: {simpleMap: {key1: 1, key2: 1}}
  patch: {simpleMap: {$patch: delete}}
  result: {simpleMap: {}}
- name: delete all items from merging list
  live: {mergingList: [{name: 1}, {name: 2}]}
  patch: {mergingList: [{$patch: replace}]}
  result: {mergingList: []}
- name: merge empty merging lists
  live: {mergingList: []}
  patch: {mergingList: []}
  result: {mergingList: []}
- name: delete all keys from map
  live: {name: 1, value: 1}
  patch: {$patch: replace}
  result: {}
- name: add key and delete all keys from map
  live: {name: 1, value: 1}
  patch: {other: a, $patch: replace}
  result: {other: a}
- name: delete all duplicate entries in a merging list
  live: {mergingList: [{name: 1}, {name: 1}, {name: 2, value: a}, {name: 3}, {name: 3}]}
  patch: {mergingList: [{name: 1, $patch: delete}, {name: 3, $patch: delete}]}
  result: {mergingList: [{name: 2, value: a}]}
- name: retainKeys list can add a field when no retainKeys directive present
  live: {retainKeysMergingList: [{name: bar}, {name: foo}]}
  patch: {retainKeysMergingList: [{name: foo, value: a}]}
  result: {retainKeysMergingList: [{name: bar}, {name: foo, value: a}]}
- name: preserve the order from the patch in a merging list
  live: {mergingList: [{name: 1}, {name: 2, value: b}, {name: 3}]}
  patch: {mergingList: [{name: 3, value: c}, {name: 1, value: a}, {name: 2, other: x}]}
  result:
    mergingList: [{name: 3, value: c}, {name: 1, value: a}, {name: 2, value: b, other: x}]
- name: preserve the order from the patch in a merging list 2
  live: {mergingList: [{name: 1}, {name: 2, value: b}, {name: 3}]}
  patch: {mergingList: [{name: 3, value: c}, {name: 1, value: a}]}
  result: {mergingList: [{name: 2, value: b}, {name: 3, value: c}, {name: 1, value: a}]}
- name: preserve the order from the patch in a merging int list
  live: {mergingIntList: [1, 2, 3]}
  patch: {mergingIntList: [3, 1, 2]}
  result: {mergingIntList: [3, 1, 2]}
- name: preserve the order from the patch in a merging int list 2
  live: {mergingIntList: [1, 2, 3]}
  patch: {mergingIntList: [3, 1]}
  result: {mergingIntList: [2, 3, 1]}
- name: $setElementOrder contains item that is not present in the list to be merged
  live: {mergingList: [{name: 1}, {name: 3}]}
  patch:
    $setElementOrder/mergingList: [{name: 3}, {name: 2}, {name: 1}]
    mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]
  result: {mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]}
- name: $setElementOrder contains item that is not present in the int list to be merged
  live: {mergingIntList: [1, 3]}
  patch: {$setElementOrder/mergingIntList: [3, 2, 1]}
  result: {mergingIntList: [3, 1]}
- name: should check if order in $setElementOrder and patch list match
  live: {mergingList: [{name: 1}, {name: 3}, {name: 2}]}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}, {name: 3}]
    mergingList: [{name: 3, value: 3}, {name: 1, value: 1}]
  error: doesn't match
- name: should check if order in $setElementOrder and patch int list match
  live: {mergingIntList: [1, 3, 2]}
  patch: {$setElementOrder/mergingIntList: [1, 2, 3], mergingIntList: [3, 1]}
  error: doesn't match
- name: missing merge key should error out
  live: {mergingList: [{name: 1, value: a}]}
  patch: {mergingList: [{value: b}]}
  error: does not contain declared merge key
- name: $deleteFromPrimitiveList of nonexistent item in primitive list should not add it
  live: {mergingIntList: [1, 2]}
  patch: {$deleteFromPrimitiveList/mergingIntList: [3]}
  result: {mergingIntList: [1, 2]}
- name: $deleteFromPrimitiveList on empty primitive list should not add the item to the list
  live: {mergingIntList: null}
  patch: {$deleteFromPrimitiveList/mergingIntList: [3]}
  result: {mergingIntList: null}
- name: $deleteFromPrimitiveList on nonexistent primitive list should not add the list
  live: {foo: [bar]}
  patch: {$deleteFromPrimitiveList/mergingIntList: [3]}
  result: {foo: [bar]}
- name: $deleteFromPrimitiveList should delete item from a list with merge patch strategy
  live: {mergingIntList: [1, 2, 3]}
  patch: {$deleteFromPrimitiveList/mergingIntList: [2]}
  result: {mergingIntList: [1, 3]}
- name: $deleteFromPrimitiveList should delete item from a list without merge patch strategy
  live: {nonMergingIntList: [1, 2, 3]}
  patch: {$deleteFromPrimitiveList/nonMergingIntList: [2]}
  result: {nonMergingIntList: [1, 3]}
- name: nil original (three-way)
  live: {name: 1, other: a}
  patch: {value: 1}
  result: {name: 1, value: 1, other: a}
- name: defined null values should propagate overwrite current fields (with conflict)
  live: {name: a, other: a}
  patch: {name: 1, value: 1, other: null}
  result: {name: 1, value: 1}
- name: replace list of scalars with conflict
  live: {nonMergingIntList: [1, 4]}
  patch: {nonMergingIntList: [2, 3]}
  result: {nonMergingIntList: [2, 3]}
- name: delete all maps from merging list with conflict
  live: {mergingList: [{name: 1, other: a}, {name: 2, other: b}]}
  patch: {mergingList: [{name: 1, $patch: delete}, {name: 2, $patch: delete}]}
  result: {mergingList: []}
- name: nested patch merge with empty list (two-way)
  live: {name: hi}
  patch: {mergingList: [{name: hello}, {$patch: delete, name: doesntexist}]}
  result: {name: hi, mergingList: [{name: hello}]}
- name: nested patch merge with empty list (three-way)
  live: {name: hi, mergingList: [{name: hello2}]}
  patch:
    $setElementOrder/mergingList: [{name: hello}, {name: doesntexist}]
    mergingList: [{name: hello}, {$patch: delete, name: doesntexist}]
  result: {name: hi, mergingList: [{name: hello}, {name: hello2}]}
- name: delete items in lists of scalars
  live: {mergingIntList: [1, 2, 3, 4]}
  patch: {$setElementOrder/mergingIntList: [1, 2], $deleteFromPrimitiveList/mergingIntList: [3]}
  result: {mergingIntList: [1, 2, 4]}
- name: delete all duplicate items in lists of scalars
  live: {mergingIntList: [1, 2, 3, 3, 4]}
  patch: {$setElementOrder/mergingIntList: [1, 2], $deleteFromPrimitiveList/mergingIntList: [3]}
  result: {mergingIntList: [1, 2, 4]}
- name: add and delete items in lists of scalars
  live: {mergingIntList: [1, 2, 3, 4]}
  patch:
    $setElementOrder/mergingIntList: [1, 2, 4]
    $deleteFromPrimitiveList/mergingIntList: [3]
  result: {mergingIntList: [1, 2, 4]}
- name: merge lists of maps
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 4}, {name: 1}, {name: 2}, {name: 3}]
    mergingList: [{name: 4, value: 4}, {name: 3, value: 3}]
  result:
    mergingList:
    - {name: 4, value: 4}
    - {name: 1, other: a}
    - {name: 2, value: 2, other: b}
    - {name: 3, value: 3}
- name: merge lists of maps with conflict
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 3, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}, {name: 3}]
    mergingList: [{name: 2, value: 2}, {name: 3, value: 3}]
  result:
    mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}, {name: 3, value: 3}]
- name: add field to map in merging list with conflict
  live: {mergingList: [{name: 1, other: a}, {name: 3, value: 2, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}]
    mergingList: [{name: 1, value: 1}, {name: 2, value: 2}]
  result:
    mergingList:
    - {name: 1, value: 1, other: a}
    - {name: 2, value: 2}
    - {name: 3, value: 2, other: b}
- name: delete map from merging list
  live: {mergingList: [{name: 1}, {name: 2, other: b}]}
  patch: {$setElementOrder/mergingList: [{name: 2}], mergingList: [{name: 1, $patch: delete}]}
  result: {mergingList: [{name: 2, other: b}]}
- name: delete missing map from merging list with conflict
  live: {mergingList: [{name: 3, other: a}]}
  patch:
    $setElementOrder/mergingList: [{name: 2}]
    mergingList: [{name: 2}, {name: 1, $patch: delete}]
  result: {mergingList: [{name: 2}, {name: 3, other: a}]}
- name: add map and delete map from merging list
  live: {mergingList: [{name: 1}, {name: 2, other: b}, {name: 4, other: c}]}
  patch:
    $setElementOrder/mergingList: [{name: 2}, {name: 3}]
    mergingList: [{name: 3}, {name: 1, $patch: delete}]
  result: {mergingList: [{name: 2, other: b}, {name: 4, other: c}, {name: 3}]}
- name: add map and delete map from merging list with conflict
  live: {mergingList: [{name: 1, other: a}, {name: 4, other: c}]}
  patch:
    $setElementOrder/mergingList: [{name: 2}, {name: 3}]
    mergingList: [{name: 2}, {name: 3}, {name: 1, $patch: delete}]
  result: {mergingList: [{name: 4, other: c}, {name: 2}, {name: 3}]}
- name: delete field from map in merging list
  live: {mergingList: [{name: 1, value: 1, other: a}, {name: 2, value: 2, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}]
    mergingList: [{name: 1, value: null}]
  result: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}]}
- name: replace non merging list nested in merging list
  live:
    mergingList:
    - {name: 1, other: a, nonMergingList: [{name: 1}, {name: 2, value: 2}]}
    - {name: 2, other: b}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}]
    mergingList: [{name: 1, nonMergingList: [{name: 1, value: 1}]}]
  result:
    mergingList:
    - {name: 1, other: a, nonMergingList: [{name: 1, value: 1}]}
    - {name: 2, other: b}
- name: add field to map in merging list nested in merging list
  live:
    mergingList:
    - {name: 1, other: a, mergingList: [{name: 1}, {name: 2, value: 2}]}
    - {name: 2, other: b}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}]
    mergingList:
    - $setElementOrder/mergingList: [{name: 1}, {name: 2}]
      name: 1
      mergingList: [{name: 1, value: 1}]
  result:
    mergingList:
    - {name: 1, other: a, mergingList: [{name: 1, value: 1}, {name: 2, value: 2}]}
    - {name: 2, other: b}
- name: add field to map in merging list nested in merging list with deletion conflict
  live:
    mergingList:
    - {name: 1, other: a, mergingList: [{name: 2, value: 2, other: d}]}
    - {name: 2, other: b}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 2}]
    mergingList:
    - $setElementOrder/mergingList: [{name: 2}, {name: 1}]
      name: 1
      mergingList: [{name: 1, value: 1}]
  result:
    mergingList:
    - {name: 1, other: a, mergingList: [{name: 2, value: 2, other: d}, {name: 1, value: 1}]}
    - {name: 2, other: b}
- name: add map to merging list by pointer
  live: {mergeItemPtr: [{name: 1, other: a}, {name: 3}]}
  patch: {$setElementOrder/mergeItemPtr: [{name: 1}, {name: 2}], mergeItemPtr: [{name: 2}]}
  result: {mergeItemPtr: [{name: 1, other: a}, {name: 2}, {name: 3}]}
- name: add map to merging list by pointer with conflict
  live: {mergeItemPtr: [{name: 3}]}
  patch:
    $setElementOrder/mergeItemPtr: [{name: 1}, {name: 2}]
    mergeItemPtr: [{name: 1}, {name: 2}]
  result: {mergeItemPtr: [{name: 1}, {name: 2}, {name: 3}]}
- name: merge lists of scalars
  live: {mergingIntList: [1, 2, 4]}
  patch: {$setElementOrder/mergingIntList: [1, 2, 3], mergingIntList: [3]}
  result: {mergingIntList: [1, 2, 3, 4]}
- name: add an item in a list of primitives and preserve order
  live: {mergingIntList: [1, 4, 2]}
  patch: {$setElementOrder/mergingIntList: [3, 1, 2], mergingIntList: [3]}
  result: {mergingIntList: [3, 1, 4, 2]}
- name: delete an item in a list of primitives and preserve order
  live: {mergingIntList: [1, 2, 3]}
  patch: {$setElementOrder/mergingIntList: [2, 1], $deleteFromPrimitiveList/mergingIntList: [3]}
  result: {mergingIntList: [2, 1]}
- name: add an item in a list and preserve order
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 3}, {name: 1}, {name: 2}]
    mergingList: [{name: 3, value: 3}]
  result:
    mergingList: [{name: 3, value: 3}, {name: 1, other: a}, {name: 2, value: 2, other: b}]
- name: add multiple items in a list and preserve order
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}]}
  patch:
    $setElementOrder/mergingList: [{name: 1}, {name: 4}, {name: 2}, {name: 3}]
    mergingList: [{name: 4, value: 4}, {name: 3, value: 3}]
  result:
    mergingList:
    - {name: 1, other: a}
    - {name: 4, value: 4}
    - {name: 2, value: 2, other: b}
    - {name: 3, value: 3}
- name: delete an item in a list and preserve order
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}, {name: 3, value: 3}]}
  patch:
    $setElementOrder/mergingList: [{name: 2}, {name: 1}]
    mergingList: [{name: 3, $patch: delete}]
  result: {mergingList: [{name: 2, value: 2, other: b}, {name: 1, other: a}]}
- name: change an item in a list and preserve order
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}, {name: 3, value: 3}]}
  patch:
    $setElementOrder/mergingList: [{name: 2}, {name: 3}, {name: 1}]
    mergingList: [{name: 3, value: x}]
  result:
    mergingList: [{name: 2, value: 2, other: b}, {name: 3, value: x}, {name: 1, other: a}]
- name: add and delete an item in a list and preserve order
  live: {mergingList: [{name: 1, other: a}, {name: 2, value: 2, other: b}, {name: 3, value: 3}]}
  patch:
    $setElementOrder/mergingList: [{name: 4}, {name: 2}, {name: 1}]
    mergingList: [{name: 4, value: 4}, {name: 3, $patch: delete}]
  result:
    mergingList: [{name: 4, value: 4}, {name: 2, value: 2, other: b}, {name: 1, other: a}]
- name: set elements order in a list with server-only items
  live: {mergingList: [{name: 1, other: a}, {name: 3}, {name: 4}, {name: 2}, {name: 9}]}
  patch: {$setElementOrder/mergingList: [{name: 4}, {name: 2}, {name: 3}, {name: 1}]}
  result: {mergingList: [{name: 4}, {name: 2}, {name: 3}, {name: 1, other: a}, {name: 9}]}
- name: set elements order in a list with server-only items 2
  live: {mergingList: [{name: 1, other: a}, {name: 2}, {name: 9}, {name: 3}, {name: 4}]}
  patch: {$setElementOrder/mergingList: [{name: 2}, {name: 1}, {name: 4}, {name: 3}]}
  result: {mergingList: [{name: 2}, {name: 1, other: a}, {name: 9}, {name: 4}, {name: 3}]}
- name: set elements order in a list with server-only items 3
  live:
    mergingList: [{name: 1}, {name: 2}, {name: 7}, {name: 9}, {name: 8}, {name: 3}, {name: 4}]
  patch: {$setElementOrder/mergingList: [{name: 2}, {name: 1}, {name: 4}, {name: 3}]}
  result:
    mergingList: [{name: 2}, {name: 1}, {name: 7}, {name: 9}, {name: 8}, {name: 4}, {name: 3}]
- name: add multiple items in a int list and preserve order
  live: {mergingIntList: [1, 2]}
  patch: {$setElementOrder/mergingIntList: [1, 4, 2, 3], mergingIntList: [4, 3]}
  result: {mergingIntList: [1, 4, 2, 3]}
- name: add and delete an item in a int list and preserve order
  live: {mergingIntList: [1, 2, 3]}
  patch:
    $setElementOrder/mergingIntList: [4, 2, 1]
    mergingIntList: [4]
    $deleteFromPrimitiveList/mergingIntList: [3]
  result: {mergingIntList: [4, 2, 1]}
- name: set elements order in a int list with server-only items
  live: {mergingIntList: [1, 3, 4, 2, 9]}
  patch: {$setElementOrder/mergingIntList: [4, 2, 3, 1]}
  result: {mergingIntList: [4, 2, 3, 1, 9]}
- name: set elements order in a int list with server-only items 3
  live: {mergingIntList: [1, 2, 7, 9, 8, 3, 4]}
  patch: {$setElementOrder/mergingIntList: [2, 1, 4, 3]}
  result: {mergingIntList: [2, 1, 7, 9, 8, 4, 3]}
- name: behavior of set element order for a merging list with duplicate
  live:
    mergingList: [{name: 1}, {name: 2, value: dup1}, {name: 3}, {name: 2, value: dup2}, {name: 4}]
  patch: {$setElementOrder/mergingList: [{name: 2}, {name: 1}, {name: 4}, {name: 3}, {name: 2}]}
  result:
    mergingList: [{name: 2, value: dup1}, {name: 2, value: dup2}, {name: 1}, {name: 4}, {name: 3}]
- name: behavior of set element order for a merging int list with duplicate
  live: {mergingIntList: [1, 2, 3, 2, 4]}
  patch: {$setElementOrder/mergingIntList: [2, 1, 4, 3, 2]}
  result: {mergingIntList: [2, 2, 1, 4, 3]}
- name: retainKeys map should clear defaulted field
  live: {retainKeysMap: {value: foo}}
  patch: {retainKeysMap: {$retainKeys: [other], other: bar}}
  result: {retainKeysMap: {other: bar}}
- name: retainKeys map should clear defaulted field with conflict (discriminated union)
  live: {retainKeysMap: {name: type1, value: foo}}
  patch: {retainKeysMap: {$retainKeys: [name, other], name: type2, other: bar}}
  result: {retainKeysMap: {name: type2, other: bar}}
- name: retainKeys map deletes a field and clears a field
  live: {retainKeysMap: {name: foo, value: bar, other: a}}
  patch: {retainKeysMap: {$retainKeys: [name], value: null}}
  result: {retainKeysMap: {name: foo}}
- name: retainKeys map adds a field in a nested map
  live: {retainKeysMap: {name: foo, value: bar, simpleMap: {key1: a, key3: c}}}
  patch: {retainKeysMap: {$retainKeys: [name, simpleMap, value], simpleMap: {key2: b}}}
  result: {retainKeysMap: {name: foo, value: bar, simpleMap: {key1: a, key2: b, key3: c}}}
"""
)


@pytest.mark.parametrize("case", UPSTREAM, ids=[case["name"] for case in UPSTREAM])
def test_upstream_cases(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(ApiError) as refused:
            strategic_merge_patch(case["live"], case["patch"], MERGE_ITEM)
        assert refused.value.code == 400
        assert case["error"] in refused.value.message
    else:
        assert strategic_merge_patch(case["live"], case["patch"], MERGE_ITEM) == case["result"]


def test_inputs_are_not_changed() -> None:
    live = {"mergingList": [{"name": 1}, {"name": 2}, {"name": 4}]}
    patch = {
        "$setElementOrder/mergingList": [{"name": 2}, {"name": 3}],
        "mergingList": [{"name": 3}, {"name": 1, "$patch": "delete"}],
    }
    before = (yaml.safe_dump(live), yaml.safe_dump(patch))
    strategic_merge_patch(live, patch, MERGE_ITEM)
    assert (yaml.safe_dump(live), yaml.safe_dump(patch)) == before


def test_malformed_directives_are_bad_requests() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"retainKeysMap": {"$retainKeys": ["name"], "value": "x"}}, "retainKeys"),
        ({"simpleMap": {"$patch": "merge"}}, "unknown patch type: merge"),
        ({"mergingList": [{"name": 1, "$patch": "merge"}]}, "cannot yet be specified"),
        ({"$setElementOrder/mergingList": {"name": 1}}, "expected a list"),
        ({"$setElementOrderX/mergingList": []}, "setElementOrder list"),
        ({"$deleteFromPrimitiveListX/mergingIntList": [1]}, "primitive list"),
        ({"mergingIntList": [[1]]}, "lists of lists"),
        ({"mergingIntList": [1, "1"]}, "not identical"),
    ]
    live = {"retainKeysMap": {"name": "a"}, "simpleMap": {"a": "b"}, "mergingList": [{"name": 1}]}
    live["mergingIntList"] = [1]
    for patch, message in cases:
        with pytest.raises(ApiError) as refused:
            strategic_merge_patch(live, patch, MERGE_ITEM)
        assert message in refused.value.message, patch
        assert refused.value.code == (422 if message == "lists of lists" else 400)


# -- the built-in kinds ------------------------------------------------------------------------


def secret(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "n", **meta},
        "data": {"a": "YQ==", "b": "Yg=="},
    }


def owner(uid: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid, **extra}


def test_finalizers_are_a_merged_set() -> None:
    live = secret(finalizers=["x/a", "x/b"])
    added = strategic_merge_patch(live, {"metadata": {"finalizers": ["x/c", "x/a"]}})
    # Patch items first in patch order; the server's other items keep their order after them.
    assert added["metadata"]["finalizers"] == ["x/c", "x/a", "x/b"]
    ordered = strategic_merge_patch(
        live,
        {"metadata": {"$setElementOrder/finalizers": ["x/a", "x/b", "x/c"], "finalizers": ["x/c"]}},
    )
    assert ordered["metadata"]["finalizers"] == ["x/a", "x/b", "x/c"]
    removed = strategic_merge_patch(
        live, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/a", "x/z"]}}
    )
    assert removed["metadata"]["finalizers"] == ["x/b"]
    assert removed["data"] == live["data"]


def test_owner_references_merge_by_uid() -> None:
    live = secret(ownerReferences=[owner("u1", "one"), owner("u2", "two")])
    changed = strategic_merge_patch(
        live, {"metadata": {"ownerReferences": [{"uid": "u2", "blockOwnerDeletion": True}]}}
    )
    assert changed["metadata"]["ownerReferences"] == [
        owner("u1", "one"),
        owner("u2", "two", blockOwnerDeletion=True),
    ]
    deleted = strategic_merge_patch(
        live, {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": "u1"}]}}
    )
    assert deleted["metadata"]["ownerReferences"] == [owner("u2", "two")]
    replaced = strategic_merge_patch(
        live, {"metadata": {"ownerReferences": [{"$patch": "replace"}, owner("u3", "three")]}}
    )
    assert replaced["metadata"]["ownerReferences"] == [owner("u3", "three")]
    with pytest.raises(ApiError) as keyless:
        strategic_merge_patch(live, {"metadata": {"ownerReferences": [{"name": "x"}]}})
    assert "does not contain declared merge key: uid" in keyless.value.message


def test_lists_without_a_patch_strategy_are_replaced() -> None:
    fields = [{"manager": "kubectl", "operation": "Update"}]
    live = secret(managedFields=[{"manager": "other", "operation": "Apply"}])
    patched = strategic_merge_patch(live, {"metadata": {"managedFields": fields}})
    assert patched["metadata"]["managedFields"] == fields
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "n", "finalizers": ["x/a"]},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active", "conditions": [{"type": "A", "status": "True"}]},
    }
    patched = strategic_merge_patch(
        namespace,
        {
            "metadata": {"finalizers": ["x/b"]},
            "spec": {"finalizers": ["x/other"]},
            "status": {"conditions": [{"type": "B", "status": "False"}]},
        },
    )
    assert patched["metadata"]["finalizers"] == ["x/b", "x/a"]
    assert patched["spec"]["finalizers"] == ["x/other"]  # NamespaceSpec: +listType=atomic
    assert patched["status"]["conditions"] == [
        {"type": "B", "status": "False"},
        {"type": "A", "status": "True"},
    ]


def test_maps_merge_and_null_deletes() -> None:
    live = secret(labels={"app": "a", "tier": "t"})
    patched = strategic_merge_patch(
        live,
        {"metadata": {"labels": {"tier": None, "team": "x"}}, "data": {"c": "Yw==", "a": None}},
    )
    assert patched["metadata"]["labels"] == {"app": "a", "team": "x"}
    assert patched["data"] == {"b": "Yg==", "c": "Yw=="}
    replaced = strategic_merge_patch(live, {"data": {"$patch": "replace", "z": "eg=="}})
    assert replaced["data"] == {"z": "eg=="}


def test_directives_never_reach_the_stored_object() -> None:
    """Where upstream keeps a patch value verbatim, the typed decode of the built-in object
    drops directive keys; so does this server."""
    live = secret(
        ownerReferences=[owner("u1", "one")], managedFields=[{"manager": "k"}], labels={"x": "y"}
    )
    patched = strategic_merge_patch(
        live,
        {
            "metadata": {
                "managedFields": [{"manager": "m", "$patch": "delete"}],
                "ownerReferences": [{"uid": "u2", "name": "two", "$retainKeys": ["uid"]}],
                "labels": {"$patch": "replace", "a": "b"},
            }
        },
    )
    assert patched["metadata"]["managedFields"] == [{"manager": "m"}]
    assert patched["metadata"]["ownerReferences"] == [
        {"uid": "u2", "name": "two"},
        owner("u1", "one"),
    ]
    assert patched["metadata"]["labels"] == {"a": "b"}
    # With nothing live to merge into, a map carrying `$patch` is dropped whole.
    fresh = strategic_merge_patch(secret(), {"metadata": {"labels": {"$patch": "replace"}}})
    assert "labels" not in fresh["metadata"]


def test_kinds_are_looked_up_from_the_object() -> None:
    assert fields_for("v1", "Namespace")["status"].fields["conditions"].merge_key == "type"
    meta: Fields = fields_for("coordination.k8s.io/v1", "Lease")["metadata"].fields
    assert meta["ownerReferences"].merge_key == "uid" and meta["finalizers"].merge
    assert "status" not in fields_for("v1", "Secret")
    assert "status" not in fields_for("test.metal3.io/v1", "Namespace")
