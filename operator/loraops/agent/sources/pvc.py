"""`pvc://<claim>/<path>`: a folder on a PersistentVolumeClaim mounted at `<pvc_root>/<claim>` in the agent.

The operator mounts each claim a LoraAdapter names at that path (read-only), the same convention the trainer
uses (`LORAOPS_PVC_ROOT`), so one URI means the same folder in every pod.
"""

from __future__ import annotations

import re

from loraops.agent.config import AgentConfig
from loraops.agent.errors import ArtifactRejected, BadRequest
from loraops.agent.safety import safe_relative
from loraops.agent.sources import FetchRequest
from loraops.agent.sources.file import copy_tree

CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class PvcSource:
    scheme = "pvc"

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def fetch(self, request: FetchRequest) -> None:
        claim, _, rest = request.uri.removeprefix("pvc://").partition("/")
        if not CLAIM.match(claim):
            raise BadRequest("InvalidUri", f"{request.uri!r}: {claim!r} is not a PersistentVolumeClaim name")
        root = self.config.pvc_root / claim
        path = root
        if rest.strip("/"):
            try:
                path = root / safe_relative(rest.strip("/"))
            except ArtifactRejected as error:
                raise BadRequest("InvalidUri", f"{request.uri!r}: {error.message}") from None
        if not root.is_dir():
            raise ArtifactRejected("SourceNotFound", f"{request.uri}: claim {claim!r} is not mounted in this pod")
        copy_tree(path, request.target, request.budget, request.uri)
