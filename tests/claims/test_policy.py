"""HostDeployPolicy evaluation (pure functions): which claim namespaces may bind which hosts."""

from __future__ import annotations

from typing import Any

import pytest

from metal3.claims.policy import PolicyError, allows, host_namespaces, namespace_allows


def policy(namespace: str = "infra", **constraints: Any) -> dict[str, Any]:
    spec = {} if constraints.get("absent") else {"hostClaimNamespaces": constraints}
    return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}


def test_empty_constraints_allow_every_namespace() -> None:
    assert allows(policy(), "anyone", {})


def test_policy_without_host_claim_namespaces_allows_none() -> None:
    assert not allows(policy(absent=True), "anyone", {})


def test_names() -> None:
    p = policy(names=["team-a", "team-b"])
    assert allows(p, "team-b", {})
    assert not allows(p, "team-c", {})


def test_an_empty_names_list_allows_no_namespace_as_upstream() -> None:
    """Upstream checks ``Names != nil``: a present but empty list is a constraint nobody meets
    (a policy an owner emptied must not open the hosts to everyone)."""
    assert not allows(policy(names=[]), "anyone", {})
    assert not allows(policy(names=[], nameMatches=".*"), "anyone", {})


def test_name_matches_is_a_search_as_upstream_documents() -> None:
    assert allows(policy(nameMatches="prod"), "not-prod", {})
    assert not allows(policy(nameMatches="^prod$"), "not-prod", {})
    assert allows(policy(nameMatches="^prod$"), "prod", {})


def test_has_labels_with_and_without_value() -> None:
    p = policy(hasLabels=[{"name": "tenant"}, {"name": "tier", "value": "gold"}])
    assert allows(p, "x", {"tenant": "a", "tier": "gold"})
    assert not allows(p, "x", {"tenant": "a", "tier": "silver"})
    assert not allows(p, "x", {"tier": "gold"})


def test_every_constraint_given_must_hold() -> None:
    p = policy(names=["team-a"], hasLabels=[{"name": "tenant"}])
    assert not allows(p, "team-a", {})
    assert allows(p, "team-a", {"tenant": "a"})


def test_invalid_regex_is_an_error_and_allows_nothing() -> None:
    with pytest.raises(PolicyError, match="not a regular expression"):
        allows(policy(nameMatches="(unclosed"), "x", {})
    assert not namespace_allows([policy(nameMatches="(unclosed")], "infra", "x", {})


def test_own_namespace_always_and_no_policy_means_only_own() -> None:
    assert namespace_allows([], "infra", "infra", {})
    assert not namespace_allows([], "infra", "tenant", {})


def test_any_one_policy_allowing_is_enough() -> None:
    policies = [policy(names=["a"]), policy(names=["b"])]
    assert namespace_allows(policies, "infra", "b", {})


def test_host_namespaces() -> None:
    policies = {
        "infra": [policy("infra", names=["tenant"])],
        "closed": [policy("closed", names=["other"])],
    }
    assert host_namespaces(policies, "tenant", {}) == ["infra", "tenant"]
    assert host_namespaces(policies, "stranger", {}) == ["stranger"]
    assert host_namespaces(policies, "tenant", {}, in_namespace="infra") == ["infra"]
    assert host_namespaces(policies, "tenant", {}, in_namespace="closed") == []
