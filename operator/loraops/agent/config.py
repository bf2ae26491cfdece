"""The agent's configuration (flags of `loraops agent`, filled by the operator when it injects the sidecar)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MAX_BYTES = 4 << 30
"""4 GiB: far above a rank-64 adapter of a 70B model (~1.6 GiB), far below a full model pushed by mistake."""
DEFAULT_MAX_FILES = 64
"""A PEFT folder holds a handful of files; thousands would mean a wrong prefix (a dataset, a checkpoint tree)."""


@dataclass
class AgentConfig:
    adapters_dir: pathlib.Path
    """Where verified adapters live, on a volume shared with the vLLM container; downloads stage inside it so
    the final rename is atomic (same filesystem)."""
    vllm_url: str = "http://127.0.0.1:8000"
    vllm_adapters_dir: pathlib.Path | None = None
    """The same volume as the vLLM container mounts it, when its mount path differs from the agent's."""
    pvc_root: pathlib.Path = pathlib.Path("/mnt/pvc")
    """`pvc://claim/path` is read from `<pvc_root>/claim/path` (the operator mounts each claim there)."""
    credentials_dir: pathlib.Path | None = None
    """Secrets mounted as folders `<credentials_dir>/<secret name>/<KEY>`; a PUT names the secret, never its data."""
    file_roots: list[pathlib.Path] | None = None
    """When set, `file://` URIs must lie under one of these folders."""
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES
    watch_interval: float = 2.0
    """Seconds between vLLM health checks (restart detection)."""
    vllm_timeout: float = 30.0
    """Seconds allowed for one vLLM call; a load of a large adapter on a busy CPU server can take seconds."""
    token: str | None = None
    """When set, every /v1 request must carry `Authorization: Bearer <token>`."""
    schemes: tuple[str, ...] = field(default=("file", "pvc", "s3"))
    base_model_dir: pathlib.Path | None = None
    """The served model's folder as the agent sees it (its config.json names the architecture). Default: the
    base model's `root` in vLLM's /v1/models, when that is a folder the agent can read."""
    unknown_architecture: Literal["allow", "refuse"] = "allow"
    """An architecture outside the module table: load unchecked (the effect probe still runs) or refuse."""
    lora_embeddings: bool = False
    """Accept LoRA on embed_tokens/lm_head: only when vLLM is configured to apply it for this model."""
    probe: bool = True
    """Run the effect probe after each load (a PUT can still turn it off for itself)."""
    require_signed: bool = False
    """Refuse every PUT that does not ask for a signature check (`SignatureMissing`): the node-level half of
    the operator's `requireSignedAdapters` policy, for agents that must never load unsigned bytes."""
    converter_python: str | None = None
    """The Python that converts pickle weights (needs torch and safetensors); default: the agent's own."""

    def vllm_path(self, local: pathlib.Path) -> pathlib.Path:
        """`local` (a folder under adapters_dir) as the vLLM container sees it."""
        if self.vllm_adapters_dir is None:
            return local
        return self.vllm_adapters_dir / local.relative_to(self.adapters_dir)
