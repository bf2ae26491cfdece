"""RBAC is least privilege: no wildcard anywhere, no Secrets at all, namespaced mode without cluster-wide
controller rights, and the rules still cover every resource the controllers' client touches."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from loraops.api.kinds import KINDS_BY_NAME
from loraops.kube import client as kube_client

from .support import Obj, of_kind, render

pytestmark = pytest.mark.chart

NAMESPACED = {"rbac.namespaced": True, "watchNamespaces": ["team-a", "team-b"]}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha": {"operator.replicas": 2},
    "namespaced": NAMESPACED,
    "namespaced-ha": {**NAMESPACED, "operator.replicas": 2},
    "clusterwide-some-namespaces-ha": {"watchNamespaces": ["team-a"], "operator.replicas": 2},
}
ROLE_KINDS = ("ClusterRole", "Role")


def rules(objects: list[Obj], kinds: tuple[str, ...] = ROLE_KINDS, name_suffix: str = "") -> list[Obj]:
    return [
        rule
        for role in objects
        if role["kind"] in kinds and role["metadata"]["name"].endswith(name_suffix)
        for rule in role.get("rules") or []
    ]


def allows(rule_list: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
        for r in rule_list
    )


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_no_wildcards_and_no_secrets(helm: pathlib.Path, config: str) -> None:
    objects = render(helm, CONFIGS[config])
    all_rules = rules(objects)
    assert all_rules
    for rule in all_rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field) or []), (config, rule)
        assert "secrets" not in rule.get("resources", []), (config, rule)
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), (config, rule)
    # A Role binding to a ClusterRole by mistake would re-open what the Roles keep closed.
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"


def test_namespaced_mode_grants_controller_rights_only_in_watched_namespaces(helm: pathlib.Path) -> None:
    objects = render(helm, NAMESPACED)
    roles = of_kind(objects, "Role")
    assert sorted({r["metadata"]["namespace"] for r in roles}) == ["team-a", "team-b"]
    cluster_rules = rules(objects, ("ClusterRole",))
    # What remains cluster-wide is kopf's read-only discovery (CRDs, namespaces); nothing else.
    assert {g for r in cluster_rules for g in r["apiGroups"]} == {"apiextensions.k8s.io", ""}
    assert {v for r in cluster_rules for v in r["verbs"]} == {"get", "list", "watch"}
    assert {res for r in cluster_rules for res in r["resources"]} == {"customresourcedefinitions", "namespaces"}
    bare = render(helm, {**NAMESPACED, "rbac.clusterDiscovery": False})
    assert not of_kind(bare, "ClusterRole") and not of_kind(bare, "ClusterRoleBinding")


def _client_resources() -> list[kube_client.Resource]:
    return [value for value in vars(kube_client).values() if isinstance(value, kube_client.Resource)]


@pytest.mark.parametrize("config", ["default", "namespaced"])
def test_rules_cover_what_the_controllers_use(helm: pathlib.Path, config: str) -> None:
    """Every Resource the controllers' client defines is readable (Secrets excepted: never granted), events can
    be created, pod logs read, and the three kinds with their status and finalizers are writable."""
    operator_rules = rules(render(helm, CONFIGS[config]), name_suffix="-operator")
    resources = _client_resources()
    assert {r.plural for r in resources} >= {"pods", "jobs", "deployments", "endpointslices", "events"}
    for resource in resources:
        if resource.plural == "secrets":
            continue
        if resource.plural == "events":
            assert allows(operator_rules, resource.group, "events", "create")
            continue
        for verb in ("get", "list", "watch"):
            assert allows(operator_rules, resource.group, resource.plural, verb), (resource, verb)
    assert allows(operator_rules, "", "pods/log", "get")
    for verb in ("create", "patch", "delete"):  # the training controller ensures and cleans up its children
        assert allows(operator_rules, "batch", "jobs", verb)
    assert allows(operator_rules, "apps", "deployments", "patch")  # the adapter controller injects the agent
    for kind in KINDS_BY_NAME.values():
        for verb in ("get", "list", "watch", "patch"):
            assert allows(operator_rules, kind.group, kind.plural, verb), (kind.plural, verb)
        assert allows(operator_rules, kind.group, f"{kind.plural}/status", "patch")
        assert allows(operator_rules, kind.group, f"{kind.plural}/finalizers", "update")
        assert not allows(operator_rules, kind.group, kind.plural, "delete")  # users delete, not the operator


def test_peering_rights_follow_the_peering_scope(helm: pathlib.Path) -> None:
    def peering(config: dict[str, Any]) -> set[str]:
        return {res for r in rules(render(helm, config)) if "kopf.dev" in r["apiGroups"] for res in r["resources"]}

    assert peering({}) == set()
    assert peering({"operator.replicas": 2}) == {"clusterkopfpeerings"}
    assert peering({"operator.replicas": 2, **NAMESPACED}) == {"kopfpeerings"}
    assert peering({"operator.replicas": 2, "watchNamespaces": ["team-a"]}) == {"kopfpeerings"}


def test_router_reads_adapterroutes_only(helm: pathlib.Path) -> None:
    for config in (CONFIGS["default"], NAMESPACED):
        router_rules = rules(render(helm, config), name_suffix="-router")
        assert router_rules == [
            {"apiGroups": ["loraops.io"], "resources": ["adapterroutes"], "verbs": ["get", "list", "watch"]}
        ] * (1 if not config else 2)


def test_bindings_name_the_chart_service_accounts(helm: pathlib.Path) -> None:
    objects = render(helm, {"operator.serviceAccount.name": "ops", "router.serviceAccount.name": "rt"})
    accounts = {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}
    assert accounts == {"ops", "rt"}
    for binding in of_kind(objects, "ClusterRoleBinding"):
        assert {s["name"] for s in binding["subjects"]} <= accounts
    by_component = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
        for d in of_kind(objects, "Deployment")
    }
    assert by_component == {"t-loraops-operator": "ops", "t-loraops-router": "rt"}
