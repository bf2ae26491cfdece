"""LoraTraining `spec.signing` in the rendered objects: the key Secret mounted read-only (0400) and only its
path in the trainer's config; nothing of the key in args, env or the ConfigMap."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loraops.api.training import LoraTrainingSpec
from loraops.training.planner import SIGNING_DIR, render, trainer_config
from tests.training.test_planner import CONFIG, OWNER, by_kind, container_of

pytestmark = [pytest.mark.training, pytest.mark.adapters]

def signed_spec(example: dict[str, Any], signing: dict[str, Any]) -> LoraTrainingSpec:
    raw = copy.deepcopy(example["spec"])
    raw["signing"] = signing
    return LoraTrainingSpec.model_validate(raw)


def parts(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    kinds = by_kind(objects)
    return kinds["ConfigMap"], kinds["Job"]["spec"]["template"]["spec"], container_of(kinds["Job"])


def test_the_key_secret_is_a_read_only_0400_volume_and_the_config_holds_only_its_path(
    examples: dict[str, Any],
) -> None:
    spec = signed_spec(examples["LoraTraining"], {"keySecretRef": {"name": "adapter-signing", "key": "ec.pem"}})
    config_map, pod, container = parts(render(OWNER, spec, CONFIG))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["signing-key"]["secret"] == {
        "secretName": "adapter-signing",
        "items": [{"key": "ec.pem", "path": "private.pem"}],
        "defaultMode": 0o400,
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["signing-key"] == {"name": "signing-key", "mountPath": f"{SIGNING_DIR}/key", "readOnly": True}
    trainer = yaml.safe_load(config_map["data"]["trainer.yaml"])
    assert trainer["signing"] == {"keyPath": f"{SIGNING_DIR}/key/private.pem"}
    # The Secret is named only in the volume: not in args, env or the trainer's config.
    assert "adapter-signing" not in json.dumps([container["command"], container.get("args"), container["env"]])
    assert "adapter-signing" not in config_map["data"]["trainer.yaml"]


def test_a_certificate_is_mounted_beside_the_key(examples: dict[str, Any]) -> None:
    spec = signed_spec(
        examples["LoraTraining"],
        {
            "keySecretRef": {"name": "signing"},
            "certificateSecretRef": {"name": "signing-cert", "chainKey": "chain.pem"},
        },
    )
    config_map, pod, _ = parts(render(OWNER, spec, CONFIG))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["signing-certificate"]["secret"]["items"] == [
        {"key": "certificate.pem", "path": "certificate.pem"},
        {"key": "chain.pem", "path": "chain.pem"},
    ]
    assert volumes["signing-key"]["secret"]["items"] == [{"key": "private.pem", "path": "private.pem"}]
    trainer = yaml.safe_load(config_map["data"]["trainer.yaml"])
    assert trainer["signing"] == {
        "keyPath": f"{SIGNING_DIR}/key/private.pem",
        "certificatePath": f"{SIGNING_DIR}/certificate/certificate.pem",
        "certificateChainPaths": [f"{SIGNING_DIR}/certificate/chain.pem"],
    }


def test_without_signing_nothing_is_mounted_and_sigstore_mounts_nothing(examples: dict[str, Any]) -> None:
    plain = LoraTrainingSpec.model_validate(examples["LoraTraining"]["spec"])
    _, pod, _ = parts(render(OWNER, plain, CONFIG))
    assert not [v for v in pod["volumes"] if v["name"].startswith("signing")]
    assert "signing" not in trainer_config(plain, "x")
    keyless = signed_spec(examples["LoraTraining"], {"sigstore": {}})
    config_map, pod, _ = parts(render(OWNER, keyless, CONFIG))
    assert not [v for v in pod["volumes"] if v["name"].startswith("signing")]
    assert yaml.safe_load(config_map["data"]["trainer.yaml"])["signing"] == {"sigstore": True}


def test_the_trainer_accepts_the_rendered_signing_config_and_the_objects_validate(examples: dict[str, Any]) -> None:
    from loraops_trainer.config import TrainConfig

    spec = signed_spec(examples["LoraTraining"], {"keySecretRef": {"name": "adapter-signing"}})
    config = TrainConfig.model_validate(trainer_config(spec, "support-v2"))
    assert config.signing is not None and config.signing.key_path == f"{SIGNING_DIR}/key/private.pem"
    # Signing does not change what is trained: a signed and an unsigned run resume each other's checkpoints.
    unsigned = TrainConfig.model_validate(
        trainer_config(LoraTrainingSpec.model_validate(examples["LoraTraining"]["spec"]), "support-v2")
    )
    assert config.fingerprint() == unsigned.fingerprint()
    for obj in render(OWNER, spec, CONFIG):
        kubernetes_validate.validate(obj, "1.30", strict=True)


@pytest.mark.parametrize(
    "signing",
    [{}, {"keySecretRef": {"name": "k"}, "sigstore": {}}, {"certificateSecretRef": {"name": "c"}, "sigstore": {}}],
)
def test_the_api_refuses_signing_without_exactly_one_way(examples: dict[str, Any], signing: dict[str, Any]) -> None:
    from loraops.api.validation import ManifestInvalid, validate

    manifest = copy.deepcopy(examples["LoraTraining"])
    manifest["spec"]["signing"] = signing
    with pytest.raises(ManifestInvalid) as caught:
        validate(manifest)
    assert "signing" in str(caught.value.errors)


def test_the_released_adapter_carries_the_templates_signature_check(examples: dict[str, Any]) -> None:
    from loraops.api.adapter import LoraAdapterSpec
    from loraops.training.lineage import adapter_from_template

    raw = copy.deepcopy(examples["LoraTraining"]["spec"])
    raw["signing"] = {"keySecretRef": {"name": "adapter-signing"}}
    raw["adapterTemplate"]["signature"] = {"publicKey": {"configMapRef": {"name": "adapter-signers"}}}
    adapter = adapter_from_template("support-v2", "team-a", LoraTrainingSpec.model_validate(raw))
    signature = LoraAdapterSpec.model_validate(adapter["spec"]).source.signature
    assert signature is not None and signature.public_key is not None
    ref = signature.public_key.config_map_ref
    assert ref is not None and ref.name == "adapter-signers"
    assert "adapter-signing" not in json.dumps(adapter), "the private key's Secret stays with the training"
