"""The chart lints, renders with default values and with every optional part on, and every rendered object is
valid: built-in kinds against Kubernetes' own schemas (kubernetes-validate, strict), custom kinds by shape."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import kubernetes_validate
import pytest

from loraops.cli import build_parser

from .support import CHART, NAMESPACE, Obj, named, of_kind, render, run_helm, set_args

pytestmark = pytest.mark.chart

ALL_ON: dict[str, Any] = {
    "operator.replicas": 2,
    "monitoring.enabled": True,
    "router.autoscaling.enabled": True,
    "router.podDisruptionBudget.enabled": True,
    "router.apiKeysSecret": "router-api-keys",
    "operator.verbose": True,
    "router.verbose": True,
    "image.digest": "sha256:" + "ab" * 32,
}
NAMESPACED: dict[str, Any] = {"rbac.namespaced": True, "watchNamespaces": ["team-a", "team-b"]}
CONFIGS = {
    "default": {},
    "all-on": ALL_ON,
    "namespaced-all-on": {**ALL_ON, **NAMESPACED},
    "router-off": {"router.enabled": False, "monitoring.enabled": True},
}
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}
# Kubernetes versions the chart claims (Chart.yaml kubeVersion >= 1.29) and the newest kubernetes-validate knows.
VALIDATE_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


@pytest.mark.parametrize("values", [{}, ALL_ON, {**ALL_ON, **NAMESPACED}], ids=["default", "all-on", "namespaced"])
def test_lint_strict(helm: pathlib.Path, values: dict[str, Any]) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *set_args(values), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_object_validates(helm: pathlib.Path, config: str) -> None:
    objects = render(helm, CONFIGS[config], crds=True)
    assert objects
    for obj in objects:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "kopf.dev/v1"), label
            continue
        for version in VALIDATE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{config}: {label} invalid for Kubernetes {version}: {err}")
            except kubernetes_validate.SchemaNotFoundError as err:
                pytest.fail(f"{config}: {label} has no schema in Kubernetes {version}: {err}")


def test_strict_validation_catches_a_misspelled_field(helm: pathlib.Path) -> None:
    """The validation above is not vacuous: a typo in a rendered Deployment fails it."""
    deployment = named(render(helm), "Deployment", "-operator")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VALIDATE_VERSIONS[0], strict=True)


def test_default_render_has_the_core_and_nothing_optional(helm: pathlib.Path) -> None:
    kinds = sorted({o["kind"] for o in render(helm)})
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
    ]  # fmt: skip
    all_on = {o["kind"] for o in render(helm, ALL_ON)}
    assert {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    } <= all_on
    assert {"ConfigMap", "ClusterKopfPeering"} <= all_on


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _parse(args: list[str]) -> Any:
    parser, _ = build_parser()
    return parser.parse_args(args)


def test_operator_args_are_flags_the_operator_has(helm: pathlib.Path) -> None:
    """The chart's args go through the real `loraops` argument parser: an invented flag fails here."""
    default = _parse(_container(named(render(helm), "Deployment", "-operator"))["args"])
    assert default.command == "operator" and default.all_namespaces and not default.peering
    assert (default.liveness_port, default.metrics_port, default.resync_seconds) == (8080, 9090, 300.0)

    ha = _parse(_container(named(render(helm, {**ALL_ON, **NAMESPACED}), "Deployment", "-operator"))["args"])
    assert ha.peering and ha.verbose
    assert ha.namespace == ["team-a", "team-b"] and not ha.all_namespaces

    forced = render(helm, {"operator.peering.enabled": True})
    assert _parse(_container(named(forced, "Deployment", "-operator"))["args"]).peering


def test_router_args_are_flags_the_router_has(helm: pathlib.Path) -> None:
    router = _container(named(render(helm, {**ALL_ON, **NAMESPACED}), "Deployment", "-router"))
    args = _parse(router["args"])
    assert args.command == "router" and args.kube and args.namespace == ["team-a", "team-b"]
    assert args.api_keys == "/etc/loraops/api-keys/api-keys.yaml"
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    assert "/etc/loraops/api-keys" in mounts
    assert args.port == router["ports"][0]["containerPort"] == 8080
    assert _parse(_container(named(render(helm), "Deployment", "-router"))["args"]).namespace is None


def test_peering_only_with_several_replicas_and_the_peering_objects_exist(helm: pathlib.Path) -> None:
    single = render(helm)
    assert named(single, "Deployment", "-operator")["spec"]["strategy"]["type"] == "Recreate"
    assert not of_kind(single, "ClusterKopfPeering") and not of_kind(single, "KopfPeering")
    clusterwide = render(helm, {"operator.replicas": 2})
    assert [o["metadata"]["name"] for o in of_kind(clusterwide, "ClusterKopfPeering")] == ["default"]
    namespaced = render(helm, {"operator.replicas": 3, **NAMESPACED})
    assert sorted(o["metadata"]["namespace"] for o in of_kind(namespaced, "KopfPeering")) == ["team-a", "team-b"]


def test_pods_run_non_root_with_a_read_only_root(helm: pathlib.Path) -> None:
    for deployment in of_kind(render(helm, ALL_ON), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts  # writable scratch despite the read-only root


def test_probes_hit_the_ports_the_processes_listen_on(helm: pathlib.Path) -> None:
    objects = render(helm, {"operator.livenessPort": 8181, "operator.metricsPort": 9191})
    operator = _container(named(objects, "Deployment", "-operator"))
    args = _parse(operator["args"])
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"healthz": args.liveness_port, "metrics": args.metrics_port} == {"healthz": 8181, "metrics": 9191}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    router = _container(named(objects, "Deployment", "-router"))
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_services_select_their_pods_and_name_real_ports(helm: pathlib.Path) -> None:
    objects = render(helm, ALL_ON)
    deployments = of_kind(objects, "Deployment")
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        targets = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, service["metadata"]["name"]
        port_names = {p["name"] for p in _container(targets[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for deployment in deployments:
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_hpa_and_pdb_target_the_router(helm: pathlib.Path) -> None:
    objects = render(helm, ALL_ON)
    router = named(objects, "Deployment", "-router")
    assert "replicas" not in router["spec"]  # the HPA owns the replica count
    hpa = of_kind(objects, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": router["metadata"]["name"],
    }
    pdb = of_kind(objects, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]


def test_agent_and_trainer_settings_reach_the_operator(helm: pathlib.Path) -> None:
    values = {"agent.port": 9000, "agent.image.tag": "9.9.9", "trainer.image": "registry.example/trainer:2"}
    operator = _container(named(render(helm, values), "Deployment", "-operator"))
    assert _parse(operator["args"]).trainer_image == "registry.example/trainer:2"
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["LORAOPS_AGENT_PORT"] == "9000"
    assert env["LORAOPS_AGENT_IMAGE"] == "ghcr.io/loraops/operator:9.9.9"
    assert "POD_NAMESPACE" in env
    only = _parse(
        _container(named(render(helm, {"operator.controllers": ["training"]}), "Deployment", "-operator"))["args"]
    )
    assert only.controller == ["training"]


def test_builtin_analysis_scrapes_the_router_only_when_one_url_means_one_replica(helm: pathlib.Path) -> None:
    def urls(values: dict[str, Any]) -> Any:
        return _parse(_container(named(render(helm, values), "Deployment", "-operator"))["args"]).router_metrics_url

    assert urls({"router.replicas": 1}) == ["http://t-loraops-router.loraops-system.svc:80/metrics"]
    assert urls({}) is None  # two replicas behind one Service: scrapes would hit a random replica each time
    assert urls({"router.replicas": 1, "router.autoscaling.enabled": True}) is None
    explicit = ["http://r-0.r:8080/metrics", "http://r-1.r:8080/metrics"]
    assert urls({"operator.routerMetricsUrls": explicit}) == explicit


def test_image_digest_pins_operator_and_router(helm: pathlib.Path) -> None:
    for deployment in of_kind(render(helm, ALL_ON), "Deployment"):
        assert re.fullmatch(r"ghcr\.io/loraops/operator@sha256:[0-9a-f]{64}", _container(deployment)["image"])
    for deployment in of_kind(render(helm), "Deployment"):
        assert _container(deployment)["image"] == "ghcr.io/loraops/operator:0.1.0"


def test_everything_namespaced_lands_in_the_release_or_a_watched_namespace(helm: pathlib.Path) -> None:
    for obj in render(helm, {**ALL_ON, **NAMESPACED}):
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] in (NAMESPACE, "team-a", "team-b"), obj["kind"]


def test_notes_give_first_steps(helm: pathlib.Path) -> None:
    done = run_helm(helm, "install", "t", str(CHART), "-n", NAMESPACE, "--dry-run=client")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n loraops-system rollout status deploy/t-loraops-operator" in notes
    assert "port-forward svc/t-loraops-router" in notes
    assert "monitoring.enabled=true" in notes  # off by default, and says how to turn it on
