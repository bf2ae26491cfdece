"""The Deployment patch planner: ensure what runtime LoRA needs, change nothing else, never roll for nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraops.adapters.deployment import (
    ADAPTERS_DIR,
    AGENT_CONTAINER,
    AGENT_LABEL,
    MANAGED_ANNOTATION,
    RUNTIME_ENV,
    Needs,
    current_limits,
    flag_values,
    plan_deployment,
    served_models,
    vllm_port,
)
from loraops.config import OperatorConfig

pytestmark = pytest.mark.adapters

CONFIG = OperatorConfig(agent_image="registry.example/loraops:1.0")
BASE = "meta-llama/Llama-3.1-8B-Instruct"


def vllm_deployment(args: list[str] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llama-8b", "namespace": "team-a", "resourceVersion": "41", "annotations": {"team": "x"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "llama-8b"}},
            "template": {
                "metadata": {"labels": {"app": "llama-8b"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "nodeSelector": {"gpu": "h100"},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.32.0",
                            "args": args if args is not None else ["--model", BASE, "--port", "8000"],
                            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                            **container,
                        },
                        {"name": "log-shipper", "image": "fluent-bit:3"},
                    ],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
                },
            },
        },
    }


def apply(deployment: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386), as the API server applies it; plus what the API server defaults."""

    def merge(target: Any, change: Any) -> Any:
        if not isinstance(change, dict):
            return copy.deepcopy(change)
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in change.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = merge(result.get(key), value)
        return result

    out = merge(deployment, patch or {})
    out["metadata"].pop("resourceVersion", None)
    for container in out["spec"]["template"]["spec"]["containers"]:
        container.setdefault("imagePullPolicy", "IfNotPresent")  # server-side defaulting
        container.setdefault("terminationMessagePath", "/dev/termination-log")
    return out


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == name)


def test_a_plain_vllm_deployment_gets_everything_runtime_lora_needs() -> None:
    deployment = vllm_deployment()
    plan = plan_deployment(deployment, None, Needs(max_rank=8, adapters=3), CONFIG)
    assert plan.patch is not None and not plan.conflicts
    patched = apply(deployment, plan.patch)
    vllm = container(patched, "vllm")
    assert flag_values(vllm["args"], "enable-lora") == []
    limits = current_limits(vllm)
    assert limits.enabled and limits.runtime_updates
    assert limits.max_lora_rank == 16  # vLLM's default already holds rank 8: not written
    assert limits.max_loras == 4 and limits.max_cpu_loras == 16  # 3 adapters → next power of two; cpu floor
    assert {"name": RUNTIME_ENV, "value": "True"} in vllm["env"]
    assert {"name": "loraops-adapters", "mountPath": ADAPTERS_DIR, "readOnly": True} in vllm["volumeMounts"]
    agent = container(patched, AGENT_CONTAINER)
    assert agent["image"] == "registry.example/loraops:1.0"
    assert agent["args"][:3] == ["agent", "--adapters-dir", ADAPTERS_DIR]
    assert "http://127.0.0.1:8000" in agent["args"]
    security = agent["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert {"name": "loraops-adapters", "emptyDir": {}} in pod_spec(patched)["volumes"]
    assert patched["spec"]["template"]["metadata"]["labels"][AGENT_LABEL] == "true"
    managed = json.loads(patched["metadata"]["annotations"][MANAGED_ANNOTATION])
    assert managed["containers"] == [AGENT_CONTAINER] and managed["env"] == [RUNTIME_ENV]
    assert "--max-loras" in managed["flags"] and "--enable-lora" in managed["flags"]


def test_user_owned_fields_are_untouched() -> None:
    deployment = vllm_deployment()
    before = copy.deepcopy(deployment)
    patched = apply(deployment, plan_deployment(deployment, None, Needs(max_rank=16, adapters=2), CONFIG).patch)
    assert deployment == before, "the planner does not edit its input"
    assert patched["spec"]["replicas"] == 3 and patched["spec"]["selector"] == before["spec"]["selector"]
    assert patched["metadata"]["annotations"]["team"] == "x"
    template = patched["spec"]["template"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert template["metadata"]["labels"]["app"] == "llama-8b"
    assert template["spec"]["nodeSelector"] == {"gpu": "h100"}
    vllm, old = container(patched, "vllm"), container(before, "vllm")
    assert vllm["image"] == old["image"] and vllm["resources"] == old["resources"]
    assert vllm["args"][: len(old["args"])] == old["args"], "the user's flags stay, in their order"
    assert old["env"][0] in vllm["env"] and old["volumeMounts"][0] in vllm["volumeMounts"]
    assert container(patched, "log-shipper") == {**container(before, "log-shipper"), **_defaults()}
    assert before["spec"]["template"]["spec"]["volumes"][0] in pod_spec(patched)["volumes"]
    names = [c["name"] for c in pod_spec(patched)["containers"]]
    assert names == ["vllm", "log-shipper", AGENT_CONTAINER]


def _defaults() -> dict[str, str]:
    return {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log"}


def test_satisfied_deployment_is_a_no_op_even_with_server_defaults() -> None:
    deployment = vllm_deployment()
    needs = Needs(max_rank=16, adapters=5, credentials=frozenset({"s3-reader"}))
    patched = apply(deployment, plan_deployment(deployment, None, needs, CONFIG).patch)
    again = plan_deployment(patched, None, needs, CONFIG)
    assert again.patch is None and again.changes == []
    # the same needs planned twice from the same input give the same patch (deterministic)
    assert (
        plan_deployment(deployment, None, needs, CONFIG).patch == plan_deployment(deployment, None, needs, CONFIG).patch
    )


def test_fewer_adapters_or_lower_ranks_never_shrink_anything() -> None:
    deployment = vllm_deployment()
    patched = apply(deployment, plan_deployment(deployment, None, Needs(max_rank=64, adapters=40), CONFIG).patch)
    assert plan_deployment(patched, None, Needs(max_rank=8, adapters=1), CONFIG).patch is None


def test_rank_is_raised_to_the_next_value_vllm_accepts_in_place() -> None:
    deployment = vllm_deployment(["--model", BASE, "--enable-lora", "--max-lora-rank=16", "--max-loras", "8"])
    plan = plan_deployment(deployment, None, Needs(max_rank=40, adapters=2), CONFIG)
    args = container(apply(deployment, plan.patch), "vllm")["args"]
    assert "--max-lora-rank=64" in args and args.count("--max-loras") == 1
    assert not any(a.startswith("--max-lora-rank") and a != "--max-lora-rank=64" for a in args)
    assert "--max-lora-rank 16→64" in plan.changes


def test_rank_over_the_operator_bound_raises_nothing() -> None:
    deployment = vllm_deployment(["--model", BASE, "--enable-lora"])
    patched = apply(deployment, plan_deployment(deployment, None, Needs(max_rank=256, adapters=1), CONFIG).patch)
    assert current_limits(container(patched, "vllm")).max_lora_rank == 16


def test_a_user_value_higher_than_needed_is_kept() -> None:
    deployment = vllm_deployment(["--model", BASE, "--enable-lora", "--max-lora-rank", "128", "--max-cpu-loras", "500"])
    patched = apply(deployment, plan_deployment(deployment, None, Needs(max_rank=8, adapters=60), CONFIG).patch)
    limits = current_limits(container(patched, "vllm"))
    assert limits.max_lora_rank == 128 and limits.max_cpu_loras == 500


def test_limits_are_bounded_by_the_operator_config() -> None:
    deployment = vllm_deployment()
    config = CONFIG.model_copy(update={"max_loras_limit": 4, "max_cpu_loras_limit": 48})
    plan = plan_deployment(deployment, None, Needs(max_rank=8, adapters=200), config)
    assert plan.limits is not None and (plan.limits.max_loras, plan.limits.max_cpu_loras) == (4, 48)


def test_flags_in_command_are_edited_where_they_are() -> None:
    command = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", BASE, "--max-loras", "2"]
    deployment = vllm_deployment(args=[], command=command)
    vllm = container(apply(deployment, plan_deployment(deployment, None, Needs(adapters=3), CONFIG).patch), "vllm")
    assert vllm["command"][-2:] == ["--max-loras", "4"]
    assert "--max-loras" not in vllm["args"] and "--enable-lora" in vllm["args"]


def test_served_names_and_port_are_read_in_every_form() -> None:
    assert served_models({"args": ["--served-model-name", "a", "b", "--port=9000"]}) == ["a", "b"]
    assert served_models({"command": ["vllm", "serve", BASE, "--dtype", "auto"]}) == [BASE]
    assert served_models({"args": ["--model=/models/llama"]}) == ["/models/llama"]
    assert vllm_port({"args": ["--port=9000"]}) == 9000 and vllm_port({"args": []}) == 8000


def test_runtime_updating_turned_off_by_the_user_is_a_conflict_not_an_override() -> None:
    deployment = vllm_deployment(env=[{"name": RUNTIME_ENV, "value": "False"}])
    plan = plan_deployment(deployment, None, Needs(adapters=1), CONFIG)
    assert plan.conflicts and RUNTIME_ENV in plan.conflicts[0] and "'False'" in plan.conflicts[0]
    assert plan.patch is None, "no roll: the pods could not load adapters anyway"


def test_flags_hidden_in_a_shell_string_are_a_conflict() -> None:
    deployment = vllm_deployment(args=[], command=["/bin/sh", "-c", f"vllm serve {BASE} --served-model-name base"])
    plan = plan_deployment(deployment, None, Needs(adapters=1), CONFIG)
    assert plan.patch is None and "shell string" in plan.conflicts[0]
    assert plan.served_models == ["base"]


def test_named_container_and_missing_container() -> None:
    deployment = vllm_deployment()
    assert "no container 'engine'" in plan_deployment(deployment, "engine", Needs(), CONFIG).conflicts[0]
    assert plan_deployment(deployment, "vllm", Needs(), CONFIG).container == "vllm"


def test_credentials_secrets_are_mounted_read_only_in_the_agent_only() -> None:
    deployment = vllm_deployment()
    patched = apply(
        deployment, plan_deployment(deployment, None, Needs(credentials=frozenset({"s3-reader"})), CONFIG).patch
    )
    agent = container(patched, AGENT_CONTAINER)
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"].endswith("/s3-reader"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(patched)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {"secretName": "s3-reader", "optional": True}
    assert not any(m["name"] == mount["name"] for m in container(patched, "vllm")["volumeMounts"])


def test_patch_carries_the_resource_version_so_a_concurrent_edit_conflicts() -> None:
    plan = plan_deployment(vllm_deployment(), None, Needs(adapters=1), CONFIG)
    assert plan.patch is not None and plan.patch["metadata"]["resourceVersion"] == "41"


@settings(max_examples=60, deadline=None)
@given(
    rank=st.one_of(st.none(), st.integers(1, 600)),
    adapters=st.integers(0, 300),
    user_rank=st.one_of(st.none(), st.sampled_from([8, 16, 32, 64, 128])),
    user_cpu=st.one_of(st.none(), st.integers(1, 300)),
)
def test_applying_the_patch_twice_is_idempotent(
    rank: int | None, adapters: int, user_rank: int | None, user_cpu: int | None
) -> None:
    args = ["--model", BASE]
    if user_rank:
        args += ["--max-lora-rank", str(user_rank)]
    if user_cpu:
        args += [f"--max-cpu-loras={user_cpu}"]
    deployment = vllm_deployment(args)
    needs = Needs(max_rank=rank, adapters=adapters)
    once = apply(deployment, plan_deployment(deployment, None, needs, CONFIG).patch)
    second = plan_deployment(once, None, needs, CONFIG)
    assert second.patch is None, second.changes
    limits = current_limits(container(once, "vllm"))
    assert limits.max_cpu_loras >= limits.max_loras  # vLLM refuses anything else
    assert limits.max_cpu_loras >= min(adapters, CONFIG.max_cpu_loras_limit)
    if rank is not None and rank <= CONFIG.max_lora_rank_limit:
        assert limits.max_lora_rank >= rank
