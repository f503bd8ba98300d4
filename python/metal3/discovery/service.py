"""Discovery's side of the agent API: a discovery token for a lookup that matched no host, and
a BareMetalHost made from the inventory sent with it.

The host (in the configured namespace only: nothing an agent sends names one) is created with
the status annotation the BareMetalHost reconciler restores a status from (as upstream's
status annotation), so it never exists without its hardware: `status.hardware` from the
inventory (`metal3.inspection`'s conversion, as an inspection makes it), `operationalStatus:
discovered`, no provisioning state yet; its state machine then moves it to unmanaged. Its
spec has `online: false`, `bootMACAddress` and, when the agent saw one, `bmc.address`
(``ipmi://ADDRESS``: the agent asks the BMC over IPMI) with an empty `credentialsName`: never
credentials. Its HardwareData is
created next to it, owned by it.

No host is ever overwritten: a name already taken by another system gets a suffix, and a
system that a host already describes (a MAC in common, the same serial, or the same system
UUID recorded on a discovered host) makes no second host. Creations are serialized in the
process, and every new host is remembered at once (before the watch shows it), so concurrent
inventories of one system make one host.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from metal3.agentapi.hosts import HostIndex, normalize_mac
from metal3.agentapi.records import now_rfc3339
from metal3.api.constants import (
    API_VERSION,
    BAREMETALHOST_KIND,
    STATUS_ANNOTATION,
    OperationalStatus,
)
from metal3.discovery.admissions import MAX_MACS, Admission, Admissions, CapReachedError
from metal3.discovery.labels import DISCOVERED_LABEL, hardware_labels
from metal3.discovery.naming import fallback_name, host_name, usable_serial
from metal3.inspection import (
    InventoryError,
    hardware_data_manifest,
    hardware_details_from_inventory,
)
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.informer import ObjectKey, object_key
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

SYSTEM_UUID_ANNOTATION = "discovery.metal3.io/system-uuid"
DISCOVERED_AT_ANNOTATION = "discovery.metal3.io/discovered-at"
INVENTORY_PATH = "/v1/discovery/inventory"
MAX_SERIAL = 128
MAX_HARDWARE_BYTES = 128 * 1024
"""Largest hardware description (JSON) taken: the host carries it in its status annotation,
and the API server refuses an object whose annotations pass 256 KiB in all."""
_NO_BMC = {"0.0.0.0", "::", "::/0"}
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label


@dataclass(frozen=True)
class DiscoveryOptions:
    namespace: str = "default"  # where discovered hosts are created
    hosts_per_minute: int = 10  # new systems admitted per minute, at most
    token_ttl: float = 600.0  # seconds a discovery token (an admission) stays valid

    def __post_init__(self) -> None:
        """Refuse options every discovered host would fail on (a namespace the API server
        cannot have), here, instead of at each inventory."""
        if not _NAMESPACE_NAME.fullmatch(self.namespace):
            raise ValueError(
                f"discovery namespace {self.namespace[:70]!r} is not a namespace name "
                "(lower-case letters, digits and '-', at most 63)"
            )
        if self.hosts_per_minute < 1:
            raise ValueError("discovery admits at least 1 host per minute")
        if not self.token_ttl > 0:
            raise ValueError("a discovery token must stay valid for some time (token_ttl > 0)")


class DiscoveryRefusal(Exception):
    """A refused discovery call: the HTTP status, the message, and Retry-After seconds."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def system_uuid_of(value: object) -> str | None:
    """The lookup's system UUID in canonical form; None when absent or a placeholder (all
    zeros or all ones, as firmware leaves it); `DiscoveryRefusal` (400) when not a UUID."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DiscoveryRefusal(400, "system_uuid must be a string or null")
    try:
        parsed = uuid.UUID(value.strip())
    except ValueError:
        raise DiscoveryRefusal(400, f"system_uuid is not a UUID: {value[:40]!r}") from None
    if parsed.int in (0, (1 << 128) - 1):
        return None
    return str(parsed)


def serial_of(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_SERIAL:
        raise DiscoveryRefusal(400, f"serial_number must be a string of at most {MAX_SERIAL}")
    return usable_serial(value)


def bmc_url(inventory: Mapping[str, Any]) -> str | None:
    """``ipmi://ADDRESS`` for the BMC address the agent read (IPv4, else IPv6), if any."""
    for key, v6 in (("bmc_address", False), ("bmc_v6address", True)):
        raw = inventory.get(key)
        if not isinstance(raw, str) or raw.strip() in _NO_BMC:
            continue
        try:
            address = ipaddress.ip_interface(raw.strip()).ip
        except ValueError:
            continue
        if address.is_unspecified:
            continue
        return f"ipmi://[{address}]" if v6 else f"ipmi://{address}"
    return None


def boot_mac(hardware: Mapping[str, Any]) -> str | None:
    """The NIC the host network-booted from (``pxe``), else the first NIC's MAC."""
    nics = [n for n in hardware.get("nics") or [] if isinstance(n, dict) and n.get("mac")]
    for nic in nics:
        if nic.get("pxe"):
            return normalize_mac(str(nic["mac"]))
    return normalize_mac(str(nics[0]["mac"])) if nics else None


class Discovery:
    """One per agent API; off while its options are None (`update` switches it)."""

    def __init__(
        self, client: KubeClient, hosts: HostIndex, options: DiscoveryOptions | None
    ) -> None:
        self.client = client
        self.hosts = hosts
        self._options = options or DiscoveryOptions()
        self.enabled = options is not None
        self.admissions = Admissions(self._options.hosts_per_minute, ttl=self._options.token_ttl)
        self._lock = anyio.Lock()
        # Hosts by the system identity discovery keys on (besides MACs: the HostIndex's).
        self._by_serial: dict[str, ObjectKey] = {}
        self._by_uuid: dict[str, ObjectKey] = {}
        self._keys: dict[ObjectKey, tuple[str | None, str | None]] = {}
        self._created_macs: dict[str, ObjectKey] = {}  # until the watch shows the host
        self.created = 0
        hosts.informer.add_handler(self._on_host)

    @property
    def options(self) -> DiscoveryOptions:
        return self._options

    def update(self, options: DiscoveryOptions | None) -> None:
        """Switch discovery on (with these options) or off (None). A new cap or token
        lifetime starts afresh: admissions so far are forgotten (their tokens are void)."""
        if (options is None and not self.enabled) or (self.enabled and options == self._options):
            return  # no change
        if options is not None and (
            options.hosts_per_minute != self._options.hosts_per_minute
            or options.token_ttl != self._options.token_ttl
        ):
            self.admissions = Admissions(options.hosts_per_minute, ttl=options.token_ttl)
        if options is not None:
            self._options = options
        self.enabled = options is not None
        log.info(
            "discovery: %s",
            f"on, into namespace {self._options.namespace}, at most "
            f"{self._options.hosts_per_minute} new hosts per minute"
            if self.enabled
            else "off",
        )

    # --- the hosts that exist ----------------------------------------------------------

    def _on_host(self, kind: str, obj: JsonObject) -> None:
        key = object_key(obj)
        old_serial, old_uuid = self._keys.pop(key, (None, None))
        for index, old in ((self._by_serial, old_serial), (self._by_uuid, old_uuid)):
            if old is not None and index.get(old) == key:
                del index[old]
        if kind == "DELETED":
            for mac in [m for m, k in self._created_macs.items() if k == key]:
                del self._created_macs[mac]
            return
        vendor = ((obj.get("status") or {}).get("hardware") or {}).get("systemVendor") or {}
        serial = usable_serial(vendor.get("serialNumber"))
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        try:
            system_uuid = system_uuid_of(annotations.get(SYSTEM_UUID_ANNOTATION))
        except DiscoveryRefusal:
            system_uuid = None
        if serial is not None:
            self._by_serial[serial] = key
        if system_uuid is not None:
            self._by_uuid[system_uuid] = key
        self._keys[key] = (serial, system_uuid)

    def known_host(
        self, system_uuid: str | None, serial: str | None, macs: set[str]
    ) -> ObjectKey | None:
        """A host that already describes this system, if any."""
        found = self.hosts.find_by_macs(macs)
        if found:
            return object_key(found[0])
        for mac in macs:
            if mac in self._created_macs:
                return self._created_macs[mac]
        if serial is not None and serial in self._by_serial:
            return self._by_serial[serial]
        if system_uuid is not None and system_uuid in self._by_uuid:
            return self._by_uuid[system_uuid]
        return None

    # --- lookup ------------------------------------------------------------------------

    def lookup(self, macs: set[str], body: Mapping[str, Any]) -> JsonObject:
        """The answer to a lookup whose MACs match no host: a discovery token, or a refusal
        (409: the system is known by another identity; 429: the cap)."""
        system_uuid = system_uuid_of(body.get("system_uuid"))
        serial = serial_of(body.get("serial_number"))
        if self.known_host(system_uuid, serial, macs) is not None:
            raise DiscoveryRefusal(
                409,
                "a BareMetalHost already describes this system (same serial or system UUID) "
                "but has none of these MAC addresses",
            )
        try:
            admission, token = self.admissions.admit(system_uuid, serial, sorted(macs))
        except CapReachedError as exc:
            raise DiscoveryRefusal(
                429, "too many new hosts discovered in the last minute; retry later",
                exc.retry_after,
            ) from None  # fmt: skip
        log.info(
            "discovery: lookup by %s: admission %d (serial %s, system UUID %s)",
            ", ".join(sorted(macs)[:4]) + (" ..." if len(macs) > 4 else ""),
            admission.id,
            admission.serial or "-",
            admission.system_uuid or "-",
        )
        return {
            "host": None,
            "token": None,
            "discovery": {
                "token": token,
                "inventory_path": INVENTORY_PATH,
                "expires_in": self.options.token_ttl,
            },
        }

    # --- inventory -----------------------------------------------------------------------

    async def inventory(self, token: str | None, body: Mapping[str, Any]) -> tuple[int, JsonObject]:
        """Make the host from the inventory sent with a discovery token: (201, host) when
        made, (200, host) when this admission already made it."""
        if token is None:
            raise DiscoveryRefusal(401, "missing or malformed discovery token")
        admission = self.admissions.by_token(token)
        if admission is None:
            raise DiscoveryRefusal(403, "unknown or expired discovery token: look up again")
        inventory = body.get("inventory")
        if not isinstance(inventory, dict):
            raise DiscoveryRefusal(400, "inventory must be an object (the agent's inventory)")
        try:
            hardware = hardware_details_from_inventory(inventory)
        except InventoryError as exc:
            raise DiscoveryRefusal(400, f"the inventory cannot be used: {exc}") from None
        nics = hardware.get("nics") or []
        if len(nics) > MAX_MACS:
            raise DiscoveryRefusal(
                400, f"the inventory lists {len(nics)} interfaces; at most {MAX_MACS} are taken"
            )
        size = len(orjson.dumps(hardware))
        if size > MAX_HARDWARE_BYTES:
            raise DiscoveryRefusal(
                400,
                f"the inventory's hardware description is {size} bytes of JSON; at most "
                f"{MAX_HARDWARE_BYTES} are taken",
            )
        macs = {
            mac for nic in nics if (mac := normalize_mac(str(nic.get("mac") or ""))) is not None
        }
        mac = boot_mac(hardware)
        if mac is None or not macs:
            raise DiscoveryRefusal(400, "the inventory lists no interface with a MAC address")
        if not macs & admission.macs:
            raise DiscoveryRefusal(
                400, "the inventory's MAC addresses are not the ones the lookup was made with"
            )
        serial = usable_serial((hardware.get("systemVendor") or {}).get("serialNumber"))
        if admission.serial is not None and serial is not None and serial != admission.serial:
            raise DiscoveryRefusal(
                400, "the inventory's serial number is not the one the lookup was made with"
            )
        async with self._lock:
            if admission.host is not None:
                namespace, name, uid = admission.host
                await self._ensure_hardware_data(namespace, name, uid, hardware)
                return 200, _answer(namespace, name, created=False)
            if admission.refused:
                raise DiscoveryRefusal(409, admission.refused)
            known = self.known_host(admission.system_uuid, serial, macs | admission.macs)
            if known is not None:
                admission.refused = "a BareMetalHost already describes this system"
                log.info("discovery: admission %d is host %s/%s already", admission.id, *known)
                raise DiscoveryRefusal(409, admission.refused)
            created = await self._create(admission, inventory, hardware, serial, mac, macs)
        namespace, name, uid = created
        await self._ensure_hardware_data(namespace, name, uid, hardware)
        return 201, _answer(namespace, name, created=True)

    async def _create(
        self,
        admission: Admission,
        inventory: Mapping[str, Any],
        hardware: JsonObject,
        serial: str | None,
        mac: str,
        macs: set[str],
    ) -> tuple[str, str, str]:
        namespace = self.options.namespace
        name = host_name(serial, mac)
        identity = admission.system_uuid or serial or mac
        body = self._manifest(name, admission.system_uuid, inventory, hardware, mac)
        for attempt in (name, fallback_name(name, identity)):
            body["metadata"]["name"] = attempt
            try:
                obj = await self.client.create(BAREMETALHOSTS, body)
            except ApiError as exc:
                if exc.conflict:
                    log.info("discovery: the name %s/%s is taken", namespace, attempt)
                    continue
                raise
            uid = str(obj["metadata"].get("uid") or "")
            key = (namespace, attempt)
            admission.host = (namespace, attempt, uid)
            for each in macs | admission.macs:
                self._created_macs[each] = key
            if serial is not None:
                self._by_serial.setdefault(serial, key)
            if admission.system_uuid is not None:
                self._by_uuid.setdefault(admission.system_uuid, key)
            self.created += 1
            log.info(
                "discovery: created BareMetalHost %s/%s (boot MAC %s, serial %s)",
                namespace, attempt, mac, serial or "-",
            )  # fmt: skip
            return namespace, attempt, uid
        admission.refused = "the names for this system are taken by other BareMetalHosts"
        raise DiscoveryRefusal(409, admission.refused)

    def _manifest(
        self,
        name: str,
        system_uuid: str | None,
        inventory: Mapping[str, Any],
        hardware: JsonObject,
        mac: str,
    ) -> JsonObject:
        status = {
            "operationalStatus": OperationalStatus.DISCOVERED.value,
            "errorMessage": "",
            "errorCount": 0,
            "provisioningFailCount": 0,
            "poweredOn": True,  # it runs the agent that sent the inventory
            "hardware": hardware,
            "provisioning": {"state": "", "ID": ""},
        }
        annotations = {
            STATUS_ANNOTATION: orjson.dumps(status).decode(),
            DISCOVERED_AT_ANNOTATION: _now(),
        }
        if system_uuid is not None:
            annotations[SYSTEM_UUID_ANNOTATION] = system_uuid
        spec: JsonObject = {"online": False, "bootMACAddress": mac}
        address = bmc_url(inventory)
        if address is not None:
            # credentialsName is required by the CRD, as upstream's (empty: none yet).
            spec["bmc"] = {"address": address, "credentialsName": ""}
        return {
            "apiVersion": API_VERSION,
            "kind": BAREMETALHOST_KIND,
            "metadata": {
                "name": name,
                "namespace": self.options.namespace,
                "labels": {DISCOVERED_LABEL: "true", **hardware_labels(hardware)},
                "annotations": annotations,
            },
            "spec": spec,
        }

    async def _ensure_hardware_data(
        self, namespace: str, name: str, uid: str, hardware: JsonObject
    ) -> None:
        try:
            await self.client.create(
                HARDWAREDATA, hardware_data_manifest(namespace, name, uid, hardware)
            )
        except ApiError as exc:
            if not exc.conflict:
                raise


def _answer(namespace: str, name: str, *, created: bool) -> JsonObject:
    return {"host": {"namespace": namespace, "name": name}, "created": created}


def _now() -> str:
    return now_rfc3339()
