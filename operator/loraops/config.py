"""The operator's own configuration (flags, or the chart's values)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

FINALIZER = "loraops.io/finalizer"
ANNOTATION_PREFIX = "loraops.io"
AGENT_URL_ANNOTATION = "loraops.io/agent-url"
"""On a vLLM pod, in dev mode: where its agent listens (a local process instead of the pod IP)."""
VLLM_URL_ANNOTATION = "loraops.io/vllm-url"
"""On a vLLM pod, in dev mode: where its vLLM answers (the router's endpoints)."""
SERVICE_URL_ANNOTATION = "loraops.io/url"
"""On a Service, in dev mode: its URL (a local process instead of the cluster DNS name)."""


class OperatorConfig(BaseModel):
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to serve; empty with `clusterwide` unset means the operator's own namespace only."""
    clusterwide: bool = False
    controllers: list[str] = Field(default_factory=lambda: ["training", "adapters", "routing"])
    """Which controllers this process runs (all by default)."""
    resync_seconds: float = 300.0
    """Status is recomputed at least this often, so a lost status write heals itself."""
    progress_seconds: float = 15.0
    """How often a running training's log is read for progress."""
    rollout_tick_seconds: float = 2.0
    """How often a route that is rolling out (or degraded) re-reads adapters and router metrics."""
    router_metrics_urls: list[str] = Field(default_factory=list)
    """/metrics URLs of the router replicas, for the built-in analysis provider."""
    service_url_template: str = "http://{service}.{namespace}.svc:{port}"
    """How a route's base Service becomes the router's upstream URL."""
    vllm_port: int = 8000
    """Port of vLLM in its pods (endpoints of pods that hold an adapter)."""
    retry_seconds: float = 5.0
    """Backoff before a failed handler runs again."""
    liveness_port: int | None = 8080
    metrics_port: int | None = 9090
    server: str | None = None
    """Kubernetes API URL; set only for dev mode and tests (otherwise in-cluster or kubeconfig)."""
    insecure: bool = False
    standalone: bool = True
    """No peering (single replica). HA deployments run peering with `standalone: false`."""
    priority: int | None = None
    """Peering priority; the highest-priority replica is active. None with peering: a random one."""
    post_events: bool = True
    trainer_image: str = "ghcr.io/loraops/trainer:0.1.0"
    """Image of LoraTraining Jobs when the spec names none."""

    # --- LoraAdapter controller: the vLLM Deployment patch and the agents ---
    agent_image: str = "ghcr.io/loraops/operator:0.1.0"
    """Image of the agent sidecar (it runs `loraops agent`)."""
    agent_port: int = 8090
    """Port the agent sidecar listens on; the operator calls `http://<pod IP>:<agent_port>`."""
    agent_token_secret: str | None = None
    """Secret (key `token`, in the Deployment's namespace) mounted into the sidecar for `--token-file`."""
    agent_token_file: str | None = None
    """File holding the same token on the operator's side (never the token itself in config)."""
    agent_url_annotation: bool = False
    """Dev mode and tests only: a pod's `loraops.io/agent-url` and a Service's `loraops.io/url` annotations
    override the computed URLs. Off in clusters: whoever may annotate a pod could redirect the operator."""
    agent_timeout_seconds: float = 600.0
    """One PUT answers once the adapter is downloaded, verified and loaded: large adapters take a while."""
    max_lora_rank_limit: int = 64
    """The highest `--max-lora-rank` the operator raises a Deployment to (higher ranks are refused)."""
    max_loras_limit: int = 8
    """The highest `--max-loras` (adapters in one batch; each slot costs GPU memory) the patch sets."""
    max_cpu_loras_limit: int = 128
    """The highest `--max-cpu-loras` the patch sets: also each pod's capacity in adapters for placement."""
    min_cpu_loras: int = 16
    """`--max-cpu-loras` grows in powers of two from here, so adding adapters rarely rolls the pods."""
    api_threads: int = 32
    """Threads for blocking Kubernetes API calls (the operator's event loop never waits on one)."""
    require_signed_adapters: list[str] = Field(default_factory=list)
    """Namespaces whose LoraAdapters must carry `source.signature` (verified by the agents before every load);
    `["*"]` means every namespace. An unsigned adapter there is refused (`Verified` False, `SignatureMissing`)
    with a message naming this policy."""
    evaluation_ttl_seconds: int = 86400
    """Finished evaluation Jobs are removed after this long (their result stays in the adapter's status)."""

    def requires_signature(self, namespace: str) -> bool:
        """Whether the `requireSignedAdapters` policy covers `namespace`."""
        return "*" in self.require_signed_adapters or namespace in self.require_signed_adapters

    def dev_url(self, obj: dict[str, Any] | None, annotation: str) -> str | None:
        """The URL `obj`'s `annotation` redirects to, only with `agent_url_annotation` (dev mode and tests)."""
        if not self.agent_url_annotation:
            return None
        url = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(annotation)
        return str(url) if url else None
