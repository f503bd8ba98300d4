"""Labels of a discovered host, from its hardware details, so that claims can select on them.

All under the ``hardware.metal3.io/`` prefix: ``arch`` (cpu.arch), ``cpu-count``,
``memory-gib`` (ramMebibytes / 1024, to the nearest whole GiB), ``vendor``
(systemVendor.manufacturer) and ``product`` (systemVendor.productName). Text is made a valid
label value (letters, digits, ``-``, ``_``, ``.``; at most 63 characters; anything else as
``-``); a field the inventory lacks gives no label. ``discovery.metal3.io/discovered: "true"``
marks every host discovery made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

HARDWARE_PREFIX = "hardware.metal3.io/"
DISCOVERED_LABEL = "discovery.metal3.io/discovered"
MAX_VALUE = 63
_NOT_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGES = "-_."


def label_value(text: str) -> str:
    """``text`` as a label value ("" when nothing valid is left)."""
    value = _NOT_VALUE.sub("-", text.strip()).strip(_EDGES)
    return value[:MAX_VALUE].rstrip(_EDGES)


def hardware_labels(hardware: Mapping[str, Any]) -> dict[str, str]:
    """The labels for ``hardware`` (status.hardware JSON, camelCase)."""
    cpu = hardware.get("cpu") or {}
    vendor = hardware.get("systemVendor") or {}
    found: dict[str, str] = {}
    texts = {
        "arch": cpu.get("arch"),
        "vendor": vendor.get("manufacturer"),
        "product": vendor.get("productName"),
    }
    for key, text in texts.items():
        value = label_value(text) if isinstance(text, str) else ""
        if value:
            found[HARDWARE_PREFIX + key] = value
    count = cpu.get("count")
    if isinstance(count, int) and count > 0:
        found[HARDWARE_PREFIX + "cpu-count"] = str(count)
    memory = hardware.get("ramMebibytes")
    if isinstance(memory, int) and memory > 0:
        found[HARDWARE_PREFIX + "memory-gib"] = str((memory + 512) // 1024)
    return found
