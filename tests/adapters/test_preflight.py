"""Source resolution and the compatibility preflight: each refusal says precisely what does not fit."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from loraops.adapters.deployment import Needs, plan_deployment
from loraops.adapters.fleet import members, needs
from loraops.adapters.preflight import Source, Verdict, preflight, resolve_source
from loraops.api.adapter import LoraAdapterSpec
from loraops.config import OperatorConfig

pytestmark = pytest.mark.adapters

CONFIG = OperatorConfig()
BASE = "meta-llama/Llama-3.1-8B-Instruct"
DIGEST = "9f" * 32


def spec(example: dict[str, Any], **changes: Any) -> LoraAdapterSpec:
    raw = copy.deepcopy(example["spec"])
    raw.update(changes)
    return LoraAdapterSpec.model_validate(raw)


def deployment(served: str = BASE, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    args = ["--model", "/models/llama", "--served-model-name", served, *extra]
    return {
        "metadata": {"name": "llama-8b"},
        "spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": args}]}}},
    }


def training(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-v2"},
        "spec": {
            "baseModel": {"name": BASE},
            "lora": {"rank": 32, "targetModules": ["q_proj", "v_proj"]},
            "output": {"uri": "s3://adapters/support/", "credentialsSecretRef": {"name": "s3-writer"}},
        },
        "status": {"phase": phase, **status},
    }


def check(adapter: LoraAdapterSpec, dep: dict[str, Any] | None = None, config: OperatorConfig = CONFIG) -> Verdict:
    source = resolve_source(adapter, None)
    assert isinstance(source, Source)
    dep = deployment() if dep is None else dep
    rank = adapter.lora.rank if adapter.lora else None
    plan = plan_deployment(dep, None, Needs(max_rank=rank, adapters=1), config)
    return preflight(adapter, source, dep, plan, config)


def test_uri_source_resolves_to_its_pinned_digest(examples: dict[str, Any]) -> None:
    source = resolve_source(spec(examples["LoraAdapter"]), None)
    assert isinstance(source, Source)
    assert source.uri == "s3://adapters/support/support-v1/" and source.credentials_secret == "s3-reader"
    assert source.rank == 16 and source.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.mark.parametrize(
    ("training_obj", "status", "reason"),
    [
        (None, "False", "TrainingNotFound"),
        (training("Running"), "Unknown", "TrainingPending"),
        (training("Succeeded"), "Unknown", "TrainingPending"),  # succeeded but no output yet
        (training("Failed", message="OOMKilled"), "False", "TrainingFailed"),
    ],
)
def test_training_ref_waits_for_a_successful_training(
    examples: dict[str, Any], training_obj: dict[str, Any] | None, status: str, reason: str
) -> None:
    adapter = spec(examples["LoraAdapter"], source={"trainingRef": {"name": "support-v2"}})
    verdict = resolve_source(adapter, training_obj)
    assert isinstance(verdict, Verdict) and (verdict.status, verdict.reason) == (status, reason)
    assert "support-v2" in verdict.message


def test_training_ref_takes_uri_digest_and_credentials_from_the_training(examples: dict[str, Any]) -> None:
    adapter = spec(examples["LoraAdapter"], source={"trainingRef": {"name": "support-v2"}}, lora=None)
    done = training("Succeeded", output={"uri": "s3://adapters/support/support-v2/", "sha256": DIGEST})
    source = resolve_source(adapter, done)
    assert source == Source("s3://adapters/support/support-v2/", DIGEST, "s3-writer", BASE, 32, ("q_proj", "v_proj"))
    on_pvc = training("Succeeded", output={"uri": "pvc://adapters/support-v2/", "sha256": DIGEST})
    resolved = resolve_source(adapter, on_pvc)
    assert isinstance(resolved, Source) and resolved.credentials_secret is None, "S3 keys only go with s3://"


def test_compatible_when_base_rank_and_modules_fit(examples: dict[str, Any]) -> None:
    verdict = check(spec(examples["LoraAdapter"]))
    assert (verdict.status, verdict.reason) == ("True", "Compatible")


def test_base_model_mismatch_names_both(examples: dict[str, Any]) -> None:
    verdict = check(spec(examples["LoraAdapter"]), deployment("Qwen/Qwen3-8B"))
    assert (verdict.status, verdict.reason) == ("False", "BaseModelMismatch")
    assert BASE in verdict.message and "Qwen/Qwen3-8B" in verdict.message


def test_training_of_another_base_is_refused(examples: dict[str, Any]) -> None:
    adapter = spec(examples["LoraAdapter"], source={"trainingRef": {"name": "t"}})
    trained = Source("s3://x/y", DIGEST, trained_base_model="mistralai/Mistral-7B", rank=8)
    plan = plan_deployment(deployment(), None, Needs(adapters=1), CONFIG)
    verdict = preflight(adapter, trained, deployment(), plan, CONFIG)
    assert verdict.reason == "TrainingBaseMismatch" and "mistralai/Mistral-7B" in verdict.message


def test_rank_within_the_bound_is_raised_not_refused(examples: dict[str, Any]) -> None:
    adapter = spec(examples["LoraAdapter"], lora={"rank": 64})
    verdict = check(adapter, deployment(extra=("--max-lora-rank", "16")))
    assert verdict.status == "True" and "--max-lora-rank 64" in verdict.message


def test_rank_over_the_operator_bound_is_refused_before_vllm_answers_500(examples: dict[str, Any]) -> None:
    verdict = check(spec(examples["LoraAdapter"], lora={"rank": 128}))
    assert (verdict.status, verdict.reason) == ("False", "RankTooHigh")
    assert "128" in verdict.message and "64" in verdict.message


def test_unsupported_target_modules_are_named(examples: dict[str, Any]) -> None:
    adapter = spec(examples["LoraAdapter"], lora={"rank": 8, "targetModules": ["q_proj", "lm_head", "embed_tokens"]})
    verdict = check(adapter)
    assert verdict.reason == "UnsupportedTargetModules"
    assert "embed_tokens, lm_head" in verdict.message and "q_proj" not in verdict.message


def test_missing_deployment_and_conflicts(examples: dict[str, Any]) -> None:
    adapter = spec(examples["LoraAdapter"])
    source = resolve_source(adapter, None)
    assert isinstance(source, Source)
    assert preflight(adapter, source, None, None, CONFIG).reason == "DeploymentNotFound"
    shell = {
        "spec": {"template": {"spec": {"containers": [{"name": "v", "command": ["sh", "-c", "vllm serve x --y"]}]}}}
    }
    plan = plan_deployment(shell, None, Needs(), CONFIG)
    assert preflight(adapter, source, shell, plan, CONFIG).reason == "DeploymentConflict"


def test_fleet_needs_ignore_over_bound_ranks_and_keep_mounted_credentials(examples: dict[str, Any]) -> None:
    def adapter(name: str, rank: int, secret: str) -> dict[str, Any]:
        body = copy.deepcopy(examples["LoraAdapter"])
        body["metadata"] = {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}
        body["spec"]["lora"] = {"rank": rank}
        body["spec"]["source"]["credentialsSecretRef"] = {"name": secret}
        return body

    group = members([adapter("a", 32, "s-a"), adapter("b", 512, "s-b")], {}, "llama-8b")
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"].append(
        {"name": "loraops-agent", "volumeMounts": [{"name": "x", "mountPath": "/var/run/loraops/credentials/old"}]}
    )
    found = needs(group, dep, CONFIG)
    assert found.max_rank == 32 and found.adapters == 2
    assert found.credentials == {"s-a", "s-b", "old"}
