"""Root-device selection: which disk gets the image, from a BareMetalHost's `rootDeviceHints`.

The semantics are Ironic's for the hints the bare-metal operator sends it:

- `deviceName` is an exact match on the disk's `name`, or on its `by_path` when it starts
  with /dev/disk/by-path/; a deviceName that is a symlink on this machine (such as a by-path
  or by-id link) also matches the disk it points to;
- `hctl`, `serialNumber`, `wwn`, `wwnWithExtension`, `wwnVendorExtension` are exact matches;
- `model` and `vendor` match when the hint is a substring of the disk's value;
- `minSizeGigabytes: N` matches a disk of `size / 2**30 >= N` (GiB, not rounded);
- `rotational` matches the disk's `rotational` flag.

Strings are compared as Ironic compares them: stripped, lower-cased and URL-quoted, and a
disk field that is null reads as the string "none" (an empty one matches nothing). Empty
hints (`""`, `0`, null) are left out, as the operator leaves them out. Every hint given must
match; when several disks match, the first in the order given wins (the inventory's order).
With no hints the smallest disk of at least 4 GiB wins, ties going to the smallest name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from metal3.agent.errors import AgentError

GiB = 1 << 30
DEFAULT_MIN_SIZE = 4 * GiB  # Ironic's smallest root disk when no hint is given
BY_PATH_PREFIX = "/dev/disk/by-path/"

# BareMetalHost hint -> (inventory field, how it matches)
_EXACT = "equals"
_SUBSTRING = "contains"
_AT_LEAST = "at least"
_FLAG = "is"
HINTS: dict[str, tuple[str, str]] = {
    "deviceName": ("name", _EXACT),
    "hctl": ("hctl", _EXACT),
    "model": ("model", _SUBSTRING),
    "vendor": ("vendor", _SUBSTRING),
    "serialNumber": ("serial", _EXACT),
    "minSizeGigabytes": ("size", _AT_LEAST),
    "wwn": ("wwn", _EXACT),
    "wwnWithExtension": ("wwn_with_extension", _EXACT),
    "wwnVendorExtension": ("wwn_vendor_extension", _EXACT),
    "rotational": ("rotational", _FLAG),
}
# The strings Ironic (oslo's bool_from_string, strict) reads as booleans.
_TRUE = frozenset({"1", "t", "true", "on", "y", "yes"})
_FALSE = frozenset({"0", "f", "false", "off", "n", "no"})


class InvalidHintsError(AgentError):
    """The hints are not valid BareMetalHost rootDeviceHints (unknown key, wrong type...)."""


class InvalidInventoryError(AgentError):
    """The disks given are not a list of inventory disk entries (objects)."""


class NoRootDeviceError(AgentError):
    """No disk matches the hints (or, with none, no disk is large enough); names the hints."""


@dataclass(frozen=True)
class Hint:
    """One validated hint: the BareMetalHost key, the inventory field, the test and value."""

    key: str
    field: str
    test: str
    value: str | int | bool


def parse_hints(hints: Mapping[str, Any] | None) -> list[Hint]:
    """Validate BareMetalHost-form hints; empty ones are dropped. Raises `InvalidHintsError`."""
    if hints is None:
        return []
    if not isinstance(hints, Mapping):
        raise InvalidHintsError(f"root device hints must be an object, not {type(hints).__name__}")
    unknown = sorted(str(k) for k in hints if k not in HINTS)
    if unknown:
        raise InvalidHintsError(
            f"unknown root device hint(s) {', '.join(unknown)}; valid hints are {', '.join(HINTS)}"
        )
    parsed = []
    for key, (field, test) in HINTS.items():
        value = hints.get(key)
        if value is None:
            continue
        if test == _AT_LEAST:
            checked: str | int | bool | None = _size_hint(key, value)
        elif test == _FLAG:
            checked = _flag_hint(key, value)
        else:
            checked = _string_hint(key, value)
        if checked is None:
            continue
        if key == "deviceName" and isinstance(checked, str):
            if not checked.strip().startswith("/dev/"):
                raise InvalidHintsError(
                    f"deviceName must be a /dev/ path (such as /dev/sda or "
                    f"{BY_PATH_PREFIX}...), not {checked!r}"
                )
            if checked.strip().startswith(BY_PATH_PREFIX):
                field = "by_path"
        parsed.append(Hint(key=key, field=field, test=test, value=checked))
    return parsed


def _show(value: Any) -> str:
    """A value as JSON writes it (what the user wrote), whatever its type."""
    return json.dumps(value, default=repr)


def _string_hint(key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        raise InvalidHintsError(f"{key} must be a string, not {_show(value)}")
    if value == "":
        return None
    if not value.strip():
        raise InvalidHintsError(f"{key} must not be blank")
    return value


def _size_hint(key: str, value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidHintsError(f"{key} must be a whole number of GiB, not {_show(value)}")
    if value < 0:
        raise InvalidHintsError(f"{key} must not be negative, got {value}")
    return value or None


def _flag_hint(key: str, value: Any) -> bool:
    flag = _as_bool(value)
    if flag is None:
        raise InvalidHintsError(f"{key} must be true or false, not {_show(value)}")
    return flag


def _as_bool(value: Any) -> bool | None:
    """A boolean as Ironic reads one (true/false, 1/0, "yes"/"off"...), None if it is none."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _normalized(value: Any) -> str | None:
    """A string as Ironic compares it; None (matches nothing) when it is empty."""
    text = str(value).strip().lower()
    return quote(text) if text else None


def mismatch(disk: Mapping[str, Any], hint: Hint, *, resolve_links: bool = True) -> str | None:
    """Why `disk` fails `hint`, or None when it matches."""
    actual = disk.get(hint.field)
    shown = f"{hint.field} {_show(actual)}"
    if hint.test == _AT_LEAST:
        size = _size_of(actual)
        if size is None:
            return f"{shown} is not a size in bytes"
        gib = size / GiB
        if gib >= float(hint.value):
            return None
        return f"{shown} ({gib:.2f} GiB) is below {hint.value} GiB"
    if hint.test == _FLAG:
        if _as_bool(actual) is hint.value:
            return None
        return f"{shown} is not {_show(hint.value)}"
    wanted = _normalized(hint.value)
    have = _normalized(actual)
    if have is not None and wanted is not None:
        if hint.test == _SUBSTRING and wanted in have:
            return None
        if hint.test == _EXACT and wanted == have:
            return None
    if hint.key == "deviceName" and resolve_links and _links_to(hint.value, disk.get("name")):
        return None
    verb = "does not contain" if hint.test == _SUBSTRING else "is not"
    return f"{shown} {verb} {_show(hint.value)}"


def _size_of(value: Any) -> int | None:
    """A disk's size in bytes: an integer, or a string of digits as older inventories have."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _links_to(link: Any, name: Any) -> bool:
    """Whether the path `link` resolves, on this machine, to the device `name`."""
    if not isinstance(link, str) or not isinstance(name, str) or not name:
        return False
    path: str = link.strip()
    if not os.path.islink(path):
        return False
    return os.path.realpath(path) == os.path.realpath(name)


def select_root_device(
    disks: Sequence[Mapping[str, Any]],
    hints: Mapping[str, Any] | None,
    *,
    resolve_links: bool = True,
) -> dict[str, Any]:
    """The disk (an inventory `disks` entry, copied) to write the image to.

    `hints` are BareMetalHost `rootDeviceHints` (camelCase keys); see the module docstring for
    how each matches. `resolve_links` lets a deviceName symlink on this machine match the
    disk it points to; turn it off when `disks` come from another machine's inventory.
    Raises `InvalidHintsError` for bad hints, `InvalidInventoryError` for bad disks, and
    `NoRootDeviceError`, naming the hints and why each disk failed, when nothing matches:
    never another disk instead.
    """
    if isinstance(disks, str | bytes) or not isinstance(disks, Sequence):
        raise InvalidInventoryError(f"the disks must be a list, not {type(disks).__name__}")
    for position, disk in enumerate(disks):
        if not isinstance(disk, Mapping):
            raise InvalidInventoryError(
                f"disk #{position} of the inventory is not an object: {_show(disk)[:200]}"
            )
    parsed = parse_hints(hints)
    if not parsed:
        return _default_root_device(disks)
    failures = []
    for disk in disks:
        why = next(
            (m for h in parsed if (m := mismatch(disk, h, resolve_links=resolve_links))), None
        )
        if why is None:
            return dict(disk)
        failures.append(f"{disk.get('name')}: {why}")
    given = json.dumps({h.key: h.value for h in parsed}, sort_keys=True)
    detail = "; ".join(failures) if failures else "the inventory lists no disks"
    raise NoRootDeviceError(f"no disk matches the root device hints {given} ({detail})")


def _default_root_device(disks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ironic's choice without hints: the smallest disk of at least 4 GiB (ties: by name)."""
    sized = []
    for disk in disks:
        size = _size_of(disk.get("size"))
        if size is None or size < DEFAULT_MIN_SIZE:
            continue
        sized.append((size, str(disk.get("name")), disk))
    if not sized:
        names = ", ".join(f"{d.get('name')} ({d.get('size')} bytes)" for d in disks) or "none"
        raise NoRootDeviceError(
            f"no root device hints and no disk of at least 4 GiB (disks: {names})"
        )
    return dict(min(sized, key=lambda entry: entry[:2])[2])
