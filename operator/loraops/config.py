"""The operator's own configuration (flags, or the chart's values)."""

from __future__ import annotations

from pydantic import BaseModel, Field

FINALIZER = "loraops.io/finalizer"
ANNOTATION_PREFIX = "loraops.io"


class OperatorConfig(BaseModel):
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to serve; empty with `clusterwide` unset means the operator's own namespace only."""
    clusterwide: bool = False
    resync_seconds: float = 300.0
    """Status is recomputed at least this often, so a lost status write heals itself."""
    progress_seconds: float = 15.0
    """How often a running training's log is read for progress."""
    retry_seconds: float = 5.0
    """Backoff before a failed handler runs again."""
    liveness_port: int | None = 8080
    metrics_port: int | None = 9090
    server: str | None = None
    """Kubernetes API URL; set only for dev mode and tests (otherwise in-cluster or kubeconfig)."""
    insecure: bool = False
    standalone: bool = True
    """No peering (single replica). HA deployments run peering with `standalone: false`."""
    post_events: bool = True
    trainer_image: str = "ghcr.io/loraops/trainer:0.1.0"
    """Image of LoraTraining Jobs when the spec names none."""
