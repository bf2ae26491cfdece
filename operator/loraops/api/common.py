"""Types shared by the three kinds: references, durations, names, conditions.

Every model here is a plain pydantic value. Field names are Python snake_case; the wire (and CRD) names are
camelCase aliases, as Kubernetes API conventions ask.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "loraops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SHA256_HEX = r"^[a-f0-9]{64}$"
ARTIFACT_URI = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.*)$"
MODEL_URI = r"^(s3|pvc|file|hf)://.+$"
TENANT_ID = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"

ObjectName = Annotated[str, StringConstraints(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
"""A Kubernetes object name (DNS-1123 subdomain)."""

LabelName = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
"""A name that is also used as a label value, a DNS label or a vLLM served-model name."""

Duration = Annotated[str, StringConstraints(pattern=DURATION, max_length=32)]
"""A duration such as `30s`, `10m`, `1h30m` or `500ms`."""


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a `Duration` such as `30s`, `1h30m` or `500ms`; ValueError if it does not match `DURATION`."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 10m, 1h30m, 500ms)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


Sha256 = Annotated[str, StringConstraints(pattern=SHA256_HEX)]
"""A sha256 digest: 64 lower-case hex characters."""

ArtifactUri = Annotated[str, StringConstraints(pattern=ARTIFACT_URI, max_length=1024)]
"""Where artifacts live: `s3://bucket/prefix`, `pvc://claim/path` or `file:///path`."""

TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID)]
"""A tenant identifier as clients send it (letters, digits, `.`, `_`, `-`; at most 63 characters)."""

ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", max_length=253)]
"""A model name as vLLM serves it, e.g. `meta-llama/Llama-3.1-8B-Instruct`."""


class ApiModel(BaseModel):
    """Base of every API value: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the API: camelCase, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(ApiModel):
    """A reference to an object of a known kind in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class SecretReference(ApiModel):
    """A reference to a Secret in the same namespace. Secrets are only ever referenced, never inlined;
    the operator passes them to workloads with `secretKeyRef`/volumes and never copies their data."""

    name: ObjectName
    """Name of the Secret."""


class ConfigMapKeyReference(ApiModel):
    """A key of a ConfigMap in the same namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = "golden.jsonl"
    """Key of the ConfigMap whose value is used."""


class ServingSpec(ApiModel):
    """The vLLM Deployment an adapter is loaded into."""

    deployment: ObjectName
    """Name of the vLLM Deployment in the same namespace."""
    replicas: Annotated[int, Field(ge=1)] | None = None
    """Load into this many ready replicas (least loaded first). Default: every ready replica."""
    container: ObjectName | None = None
    """The vLLM container in the pod (default: the first container)."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """An observation of one aspect of the object's state (Kubernetes `metav1.Condition`)."""

    type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=316)]
    """Type of condition in CamelCase, e.g. `Ready`."""
    status: ConditionStatus
    """`True`, `False` or `Unknown`."""
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    """A CamelCase word saying why the condition is in this state, e.g. `OOMKilled`."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """A human-readable explanation with the details."""
    last_transition_time: datetime
    """When the condition last changed status."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` that the condition was set from."""


Conditions = Annotated[
    list[Condition],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]
"""Conditions keyed by type, as Kubernetes API conventions ask."""
