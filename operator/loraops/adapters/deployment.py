"""The vLLM Deployment patch (pure): what a Deployment needs so that its pods can hold runtime LoRA adapters.

Given the Deployment as stored and what the adapters targeting it need, `plan_deployment` returns the merge
patch that makes it so — or None when nothing must change, because every change to the pod template rolls
the pods. Rules:

- only *ensure*: a flag already good enough stays as the user wrote it (a user's `--max-lora-rank 64` is
  kept when 16 is needed); values only grow, so removing an adapter never rolls the pods;
- fields the user owns are copied unchanged (a merge patch replaces whole lists, so the container and
  volume lists are sent whole, with only our entries added or changed);
- what the operator manages is recorded in the annotation `loraops.io/managed-fields`;
- a user setting the operator cannot satisfy without overriding it (e.g. `VLLM_ALLOW_RUNTIME_LORA_UPDATING`
  set to false, flags hidden in a shell string) is reported as a conflict, never overwritten.
"""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from loraops.config import OperatorConfig
from loraops.kube.objects import bounded_name, restricted_security_context

Obj = dict[str, Any]

AGENT_CONTAINER = "loraops-agent"
AGENT_LABEL = "loraops.io/agent"
"""On the pod template: lets the operator watch only pods that carry an agent."""
MANAGED_ANNOTATION = "loraops.io/managed-fields"
ADAPTERS_VOLUME = "loraops-adapters"
ADAPTERS_DIR = "/var/lib/loraops/adapters"
"""Mounted at the same path in both containers, so a folder the agent installs is the path vLLM loads."""
CREDENTIALS_DIR = "/var/run/loraops/credentials"
TOKEN_VOLUME = "loraops-agent-token"
TOKEN_DIR = "/var/run/loraops/agent-token"
RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
AGENT_UID = 65532
VLLM_DEFAULT_PORT = 8000
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_DEFAULT_MAX_LORAS = 1
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for `--max-lora-rank` (vLLM's `MaxLoRARanks`)."""
TRUE_VALUES = {"1", "true"}


@dataclass(frozen=True)
class Needs:
    """What the adapters targeting one Deployment need from it."""

    max_rank: int | None = None
    """Highest declared rank among them (None: none declared a rank)."""
    adapters: int = 0
    credentials: frozenset[str] = frozenset()
    """Secrets the agent must read s3:// credentials from (mounted under CREDENTIALS_DIR/<name>)."""


@dataclass(frozen=True)
class LoraLimits:
    """The runtime-LoRA settings of the vLLM container (after the patch, when there is one)."""

    enabled: bool
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    runtime_updates: bool


@dataclass
class DeploymentPlan:
    patch: Obj | None
    """Merge patch for the Deployment; None when it already satisfies the needs."""
    limits: LoraLimits | None
    """The settings the pods run with once the patch (if any) is rolled out."""
    changes: list[str] = field(default_factory=list)
    """What the patch changes, in words (for the Event and the condition)."""
    conflicts: list[str] = field(default_factory=list)
    """User settings that stop adapters from loading and that the operator does not override."""
    served_models: list[str] = field(default_factory=list)
    container: str | None = None
    vllm_port: int = VLLM_DEFAULT_PORT


# ---- reading the vLLM container ----


def vllm_container(deployment: Obj, name: str | None) -> Obj | None:
    containers = _pod_spec(deployment).get("containers") or []
    if name:
        return next((c for c in containers if c.get("name") == name), None)
    return next((c for c in containers if c.get("name") != AGENT_CONTAINER), None)


def _pod_spec(deployment: Obj) -> Obj:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}


def _norm(token: str) -> str | None:
    """`--max_lora-rank=8` → `max-lora-rank`; None for a token that is not a long flag."""
    if not token.startswith("--") or len(token) == 2:
        return None
    return token[2:].split("=", 1)[0].replace("_", "-")


def argv(container: Obj) -> list[str]:
    """command + args, with a shell string (`sh -c "vllm serve …"`) split as the shell would."""
    tokens = [str(t) for t in [*(container.get("command") or []), *(container.get("args") or [])]]
    out: list[str] = []
    for token in tokens:
        out.extend(shlex.split(token) if _is_shell_string(token) else [token])
    return out


def _is_shell_string(token: str) -> bool:
    return " " in token.strip() and "--" in token


def shell_form(container: Obj) -> bool:
    """Flags inside one shell string cannot be edited safely: the user must pass them as list items."""
    return any(_is_shell_string(str(t)) for t in [*(container.get("command") or []), *(container.get("args") or [])])


def flag_values(tokens: list[str], flag: str) -> list[str] | None:
    """Values of the last `--flag` (several for `--served-model-name a b`); [] for a bare flag; None if absent."""
    found: list[str] | None = None
    for i, token in enumerate(tokens):
        if _norm(token) != flag:
            continue
        if "=" in token:
            found = [token.split("=", 1)[1]]
            continue
        values = []
        for value in tokens[i + 1 :]:
            if value.startswith("-"):
                break
            values.append(value)
        found = values
    return found


def _int_flag(tokens: list[str], flag: str) -> int | None:
    values = flag_values(tokens, flag)
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


def served_models(container: Obj) -> list[str]:
    """The names vLLM answers to: `--served-model-name` values, else the model (`--model` or `serve MODEL`)."""
    tokens = argv(container)
    names = flag_values(tokens, "served-model-name")
    if names:
        return names
    model = flag_values(tokens, "model")
    if model:
        return model[:1]
    for i, token in enumerate(tokens[:-1]):
        if token == "serve" and not tokens[i + 1].startswith("-"):
            return [tokens[i + 1]]
    return []


def vllm_port(container: Obj) -> int:
    return _int_flag(argv(container), "port") or VLLM_DEFAULT_PORT


def _env_value(container: Obj, name: str) -> tuple[bool, str | None]:
    """(present, literal value); a `valueFrom` entry is present with value None."""
    for item in container.get("env") or []:
        if item.get("name") == name:
            return True, item.get("value") if "value" in item else None
    return False, None


def current_limits(container: Obj) -> LoraLimits:
    tokens = argv(container)
    max_loras = _int_flag(tokens, "max-loras") or VLLM_DEFAULT_MAX_LORAS
    present, value = _env_value(container, RUNTIME_ENV)
    return LoraLimits(
        enabled=flag_values(tokens, "enable-lora") is not None,
        max_lora_rank=_int_flag(tokens, "max-lora-rank") or VLLM_DEFAULT_MAX_LORA_RANK,
        max_loras=max_loras,
        max_cpu_loras=_int_flag(tokens, "max-cpu-loras") or max_loras,
        runtime_updates=present and str(value).strip().lower() in TRUE_VALUES,
    )


# ---- sizing ----


def _pow2_at_least(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def rank_setting(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank` (None: over vLLM's maximum)."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def rank_limit(config: OperatorConfig) -> int:
    """The highest rank the operator will serve: the configured bound, rounded down to a vLLM value."""
    return max((r for r in VLLM_LORA_RANKS if r <= config.max_lora_rank_limit), default=1)


def desired_limits(current: LoraLimits, needs: Needs, config: OperatorConfig) -> LoraLimits:
    """Grow-only: each setting is kept when it already suffices, otherwise raised within the config bounds."""
    rank = current.max_lora_rank
    if needs.max_rank is not None and needs.max_rank > rank and needs.max_rank <= rank_limit(config):
        rank = rank_setting(needs.max_rank) or rank
    max_loras = current.max_loras
    wanted_loras = min(needs.adapters, config.max_loras_limit)
    if wanted_loras > max_loras:
        max_loras = min(_pow2_at_least(wanted_loras), config.max_loras_limit)
    cpu = current.max_cpu_loras
    wanted_cpu = min(needs.adapters, config.max_cpu_loras_limit)
    if wanted_cpu > cpu:
        cpu = min(max(config.min_cpu_loras, _pow2_at_least(wanted_cpu)), config.max_cpu_loras_limit)
    cpu = max(cpu, max_loras)  # vLLM refuses max_cpu_loras < max_loras
    return LoraLimits(True, rank, max_loras, cpu, True)


# ---- editing ----


def _set_flag(container: Obj, flag: str, value: str | None) -> None:
    """Set `--flag value` (or the bare `--flag` when value is None) where the user wrote it, else append to args."""
    for key in ("args", "command"):
        tokens = container.get(key)
        if not tokens:
            continue
        for i in range(len(tokens) - 1, -1, -1):
            token = str(tokens[i])
            if _norm(token) != flag:
                continue
            if value is None:
                return
            if "=" in token:
                tokens[i] = f"{token.split('=', 1)[0]}={value}"
            elif i + 1 < len(tokens) and not str(tokens[i + 1]).startswith("-"):
                tokens[i + 1] = value
            else:
                tokens.insert(i + 1, value)
            return
    container.setdefault("args", [])
    container["args"] += [f"--{flag}"] + ([value] if value is not None else [])


def _subset(wanted: Any, actual: Any) -> bool:
    """`wanted` is contained in `actual`: the API server adds defaults (imagePullPolicy, terminationMessage…),
    so comparing whole objects would see a change on every reconcile and roll the pods forever."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(_subset(v, actual.get(k)) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)


def _ensure_named(items: list[Obj], wanted: Obj) -> bool:
    """Add or replace the entry named like `wanted` (an entry the operator owns); True when it changed."""
    for i, item in enumerate(items):
        if item.get("name") == wanted["name"]:
            if _subset(wanted, item):
                return False
            items[i] = copy.deepcopy(wanted)
            return True
    items.append(copy.deepcopy(wanted))
    return True


def credentials_volume(secret: str) -> str:
    return bounded_name("loraops-cred", secret, limit=63)


def agent_container(config: OperatorConfig, vllm_port_: int, credentials: frozenset[str]) -> Obj:
    args = [
        "agent",
        "--adapters-dir",
        ADAPTERS_DIR,
        "--vllm-url",
        f"http://127.0.0.1:{vllm_port_}",
        "--port",
        str(config.agent_port),
        "--credentials-dir",
        CREDENTIALS_DIR,
    ]
    mounts: list[Obj] = [{"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_DIR}]
    if config.agent_token_secret:
        args += ["--token-file", f"{TOKEN_DIR}/token"]
        mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    for secret in sorted(credentials):
        mounts.append(
            {"name": credentials_volume(secret), "mountPath": f"{CREDENTIALS_DIR}/{secret}", "readOnly": True}
        )
    probe: Obj = {"httpGet": {"port": config.agent_port}, "periodSeconds": 5}
    return {
        "name": AGENT_CONTAINER,
        "image": config.agent_image,
        "command": ["loraops"],
        "args": args,
        "ports": [{"name": "agent", "containerPort": config.agent_port}],
        "volumeMounts": mounts,
        "livenessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/healthz"}},
        # 503 while held adapters await a reload after a vLLM restart: the pod takes no traffic meanwhile.
        "readinessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/readyz"}},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": restricted_security_context(AGENT_UID),
    }


def plan_deployment(
    deployment: Obj, container_name: str | None, needs: Needs, config: OperatorConfig
) -> DeploymentPlan:
    original = vllm_container(deployment, container_name)
    if original is None:
        which = f"container {container_name!r}" if container_name else "a vLLM container"
        return DeploymentPlan(None, None, conflicts=[f"the Deployment has no {which}"])
    plan = DeploymentPlan(
        None,
        None,
        served_models=served_models(original),
        container=original.get("name"),
        vllm_port=vllm_port(original),
    )
    if shell_form(original):
        plan.conflicts.append(
            "vLLM flags are inside a shell string: pass them as separate command/args items so the operator "
            "can ensure --enable-lora and the LoRA limits"
        )
        return plan
    current = current_limits(original)
    present, value = _env_value(original, RUNTIME_ENV)
    if present and not current.runtime_updates:
        shown = "from a reference" if value is None else repr(value)
        plan.conflicts.append(f"{RUNTIME_ENV} is set {shown} by the user; runtime adapter loading needs True")
        plan.limits = current
        return plan  # rolling the pods would not make adapters loadable
    target = desired_limits(current, needs, config)
    plan.limits = target

    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    pod_spec = template.setdefault("spec", {})
    containers: list[Obj] = pod_spec.setdefault("containers", [])
    vllm = next(c for c in containers if c.get("name") == original.get("name"))
    managed_flags: list[str] = []
    if not current.enabled:
        _set_flag(vllm, "enable-lora", None)
        plan.changes.append("--enable-lora")
    for flag, before, after in (
        ("max-lora-rank", current.max_lora_rank, target.max_lora_rank),
        ("max-loras", current.max_loras, target.max_loras),
        ("max-cpu-loras", current.max_cpu_loras, target.max_cpu_loras),
    ):
        if after != before:
            _set_flag(vllm, flag, str(after))
            plan.changes.append(f"--{flag} {before}→{after}")
            managed_flags.append(f"--{flag}")
    if not present:
        vllm.setdefault("env", []).append({"name": RUNTIME_ENV, "value": "True"})
        plan.changes.append(f"env {RUNTIME_ENV}=True")
    mounts: list[Obj] = vllm.setdefault("volumeMounts", [])
    # vLLM only reads adapters; the agent alone writes them.
    if _ensure_named(mounts, {"name": ADAPTERS_VOLUME, "mountPath": ADAPTERS_DIR, "readOnly": True}):
        plan.changes.append(f"adapters volume in {vllm.get('name')}")
    if _ensure_named(containers, agent_container(config, plan.vllm_port, needs.credentials)):
        plan.changes.append("agent sidecar")
    volumes: list[Obj] = pod_spec.setdefault("volumes", [])
    wanted_volumes: list[Obj] = [{"name": ADAPTERS_VOLUME, "emptyDir": {}}]
    if config.agent_token_secret:
        wanted_volumes.append({"name": TOKEN_VOLUME, "secret": {"secretName": config.agent_token_secret}})
    for secret in sorted(needs.credentials):
        # optional: credentials volumes are never removed (that would roll the pods), so one may outlive its Secret.
        wanted_volumes.append({"name": credentials_volume(secret), "secret": {"secretName": secret, "optional": True}})
    for volume in wanted_volumes:
        if _ensure_named(volumes, volume):
            plan.changes.append(f"volume {volume['name']}")
    labels: dict[str, str] = (template.setdefault("metadata", {})).setdefault("labels", {})
    if labels.get(AGENT_LABEL) != "true":
        labels[AGENT_LABEL] = "true"
        plan.changes.append(f"pod label {AGENT_LABEL}")
    if not plan.changes:
        return plan

    managed = {
        "container": vllm.get("name"),
        "flags": ["--enable-lora", *sorted(set(managed_flags) | _previously_managed(deployment))],
        "env": [RUNTIME_ENV],
        "containers": [AGENT_CONTAINER],
        "volumes": sorted(v["name"] for v in wanted_volumes),
        "labels": [AGENT_LABEL],
    }
    old_template = (deployment.get("spec") or {}).get("template") or {}
    spec_patch: Obj = {}
    if template.get("metadata", {}).get("labels") != (old_template.get("metadata") or {}).get("labels"):
        spec_patch["metadata"] = {"labels": {AGENT_LABEL: "true"}}
    pod_patch: Obj = {"containers": containers}
    if volumes != (old_template.get("spec") or {}).get("volumes"):
        pod_patch["volumes"] = volumes
    spec_patch["spec"] = pod_patch
    metadata: Obj = {"annotations": {MANAGED_ANNOTATION: json.dumps(managed, sort_keys=True)}}
    if rv := (deployment.get("metadata") or {}).get("resourceVersion"):
        # Lists are sent whole: a concurrent edit of the Deployment must make this patch fail (409), not vanish.
        metadata["resourceVersion"] = rv
    plan.patch = {"metadata": metadata, "spec": {"template": spec_patch}}
    return plan


def _previously_managed(deployment: Obj) -> set[str]:
    raw = ((deployment.get("metadata") or {}).get("annotations") or {}).get(MANAGED_ANNOTATION)
    try:
        return {str(f) for f in json.loads(raw).get("flags", []) if f != "--enable-lora"} if raw else set()
    except (ValueError, AttributeError):
        return set()
