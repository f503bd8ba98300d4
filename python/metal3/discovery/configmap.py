"""Discovery's settings from a ConfigMap (`--discovery-configmap NAMESPACE/NAME`), watched, so
discovery can be switched on and off, or its namespace and cap changed, without a restart.

Keys of ``data`` (all optional): ``enabled`` (``"true"`` or ``"false"``), ``namespace`` and
``perMinute`` (a whole number >= 1). What the ConfigMap sets wins over the `--discovery*`
flags; what it leaves out, or a ConfigMap that does not exist (or is deleted), leaves the
flags' value. A ConfigMap with a wrong value is logged and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from metal3.discovery.service import Discovery, DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.informer import Informer, JsonObject
from metal3.kube.resources import CONFIGMAPS

log = logging.getLogger(__name__)


def parse_reference(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME``; raises ValueError otherwise."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"the discovery ConfigMap is NAMESPACE/NAME, not {text!r}")
    return namespace, name


def settings_from(
    data: Mapping[str, object],
    defaults: DiscoveryOptions | None,
    watched_namespace: str | None = None,
) -> DiscoveryOptions | None:
    """The options the ConfigMap's ``data`` asks for over ``defaults`` (None: off); raises
    ValueError naming the key that is wrong."""
    enabled = data.get("enabled")
    if enabled not in (None, "true", "false"):
        raise ValueError(f"enabled must be 'true' or 'false', not {str(enabled)[:40]!r}")
    on = defaults is not None if enabled is None else enabled == "true"
    if not on:
        return None
    options = defaults or DiscoveryOptions(namespace=watched_namespace or "default")
    namespace = data.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a namespace's name")
        if watched_namespace is not None and namespace != watched_namespace:
            raise ValueError(f"namespace {namespace} is not watched (--namespace)")
        options = replace(options, namespace=namespace)
    per_minute = data.get("perMinute")
    if per_minute is not None:
        if not isinstance(per_minute, str) or not per_minute.isdigit() or int(per_minute) < 1:
            raise ValueError(f"perMinute must be a whole number >= 1, not {str(per_minute)[:40]!r}")
        options = replace(options, hosts_per_minute=int(per_minute))
    return options


class DiscoveryConfigMap:
    """Applies the ConfigMap's settings to `Discovery` as they change (`run` until cancelled)."""

    def __init__(
        self,
        client: KubeClient,
        discovery: Discovery,
        reference: str,
        defaults: DiscoveryOptions | None,
        watched_namespace: str | None = None,
    ) -> None:
        self.namespace, self.name = parse_reference(reference)
        self.discovery = discovery
        self.defaults = defaults
        self.watched_namespace = watched_namespace
        self.informer = Informer(client, CONFIGMAPS, self.namespace)
        self.informer.add_handler(self._on_configmap)

    async def run(self) -> None:
        await self.informer.run()

    def _on_configmap(self, kind: str, obj: JsonObject) -> None:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return
        where = f"{self.namespace}/{self.name}"
        if kind == "DELETED":
            log.info("discovery: ConfigMap %s deleted: back to the command line's settings", where)
            self.discovery.update(self.defaults)
            return
        try:
            options = settings_from(obj.get("data") or {}, self.defaults, self.watched_namespace)
        except ValueError as exc:
            log.error("discovery: ConfigMap %s ignored: %s", where, exc)
            return
        self.discovery.update(options)
