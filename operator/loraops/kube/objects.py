"""Helpers for the Kubernetes objects controllers render: owner references, labels, stable short names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

MANAGED_BY = {"app.kubernetes.io/managed-by": "loraops"}


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns rendered objects."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def bounded_name(base: str, suffix: str, limit: int = 63) -> str:
    """`base-suffix`, shortened deterministically (with a hash of the full name) when over `limit`."""
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}" if suffix else f"{base[: limit - 9].rstrip('-')}-{digest}"


def restricted_security_context(uid: int) -> dict[str, Any]:
    """A container security context that meets the `restricted` Pod Security Standard: non-root, no privilege
    escalation, no capabilities, read-only root file system (writable paths are emptyDir mounts)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
