"""HostDeployPolicy: which namespaces' HostClaims may bind the hosts of a namespace.

The hosts' owner puts a HostDeployPolicy next to the hosts; its ``spec.hostClaimNamespaces``
says which claim namespaces it opens them to (upstream's fields):

* ``names``: the claim's namespace is one of these (``names: []``: none is, as upstream
  evaluates a present but empty list);
* ``nameMatches``: a regular expression found in the claim's namespace name (not anchored, as
  upstream documents: ``prod`` matches ``not-prod``; write ``^prod$`` for one name);
* ``hasLabels``: the claim's *namespace* carries each label (and its value, when given).

Every constraint given must hold; ``hostClaimNamespaces: {}`` opens the hosts to every
namespace, and a policy without ``hostClaimNamespaces`` opens them to none. Any one policy of the
namespace allowing the claim is enough. Claims in the hosts' own namespace may always bind them;
with no policy at all, only they may. Pure functions: the controller feeds them its caches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any


class PolicyError(ValueError):
    """A policy that cannot be evaluated (e.g. an invalid nameMatches regular expression)."""


def allows(
    policy: Mapping[str, Any], claim_namespace: str, namespace_labels: Mapping[str, str]
) -> bool:
    """Whether one HostDeployPolicy object lets claims of ``claim_namespace`` bind its hosts.

    Raises :class:`PolicyError` for an invalid ``nameMatches``.
    """
    constraints = (policy.get("spec") or {}).get("hostClaimNamespaces")
    if constraints is None:
        return False
    names = constraints.get("names")
    if names is not None and claim_namespace not in names:  # as upstream: `names: []` is none
        return False
    pattern = constraints.get("nameMatches") or ""
    if pattern:
        try:
            if re.search(pattern, claim_namespace) is None:
                return False
        except re.error as exc:
            raise PolicyError(
                f"nameMatches {pattern!r} is not a regular expression: {exc}"
            ) from exc
    for pair in constraints.get("hasLabels") or []:
        name, value = pair.get("name") or "", pair.get("value")
        if name not in namespace_labels:
            return False
        if value and namespace_labels[name] != value:
            return False
    return True


def namespace_allows(
    policies: Iterable[Mapping[str, Any]],
    hosts_namespace: str,
    claim_namespace: str,
    namespace_labels: Mapping[str, str],
) -> bool:
    """Whether claims of ``claim_namespace`` may bind hosts of ``hosts_namespace``, given the
    policies of ``hosts_namespace``. A policy that cannot be evaluated allows nothing."""
    if hosts_namespace == claim_namespace:
        return True
    for policy in policies:
        try:
            if allows(policy, claim_namespace, namespace_labels):
                return True
        except PolicyError:
            continue
    return False


def host_namespaces(
    policies_by_namespace: Mapping[str, Iterable[Mapping[str, Any]]],
    claim_namespace: str,
    namespace_labels: Mapping[str, str],
    in_namespace: str | None = None,
) -> list[str]:
    """The namespaces whose hosts a claim may bind: its own and those whose policy allows it,
    narrowed to ``in_namespace`` when the claim names one (empty if that one does not allow)."""
    if in_namespace:
        candidates = [in_namespace]
    else:
        candidates = sorted({claim_namespace, *policies_by_namespace})
    return [
        namespace
        for namespace in candidates
        if namespace_allows(
            policies_by_namespace.get(namespace, ()), namespace, claim_namespace, namespace_labels
        )
    ]
