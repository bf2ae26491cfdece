"""The calls the agent makes to vLLM on localhost: health, the model list, and the runtime LoRA API.

vLLM 0.32 answers a load with 200 and a plain-text body without content type (so only the status is read),
400 when the name is taken, 404 when the path does not exist and a bare 500 for an adapter over
`--max-lora-rank` (NOTES); errors are sorted here into "vLLM refused" and "vLLM is not there".
"""

from __future__ import annotations

import pathlib

import aiohttp

from loraops.agent.errors import VllmRejected, VllmUnavailable

REASONS = {400: "VllmBadRequest", 404: "VllmNotFound"}


class VllmApi:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _request(self, method: str, path: str, json: object | None = None) -> tuple[int, str]:
        try:
            async with self.session.request(
                method, f"{self.base_url}{path}", json=json, timeout=self.timeout
            ) as response:
                return response.status, (await response.text(errors="replace"))[:500]
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise VllmUnavailable("VllmUnavailable", f"{method} {path}: {type(error).__name__}: {error}") from None

    async def health(self) -> bool:
        try:
            status, _ = await self._request("GET", "/health")
        except VllmUnavailable:
            return False
        return status == 200

    async def models(self) -> dict[str, str | None]:
        """Served id → root (the adapter path for LoRA entries)."""
        try:
            async with self.session.get(f"{self.base_url}/v1/models", timeout=self.timeout) as response:
                if response.status != 200:
                    raise VllmRejected("VllmError", f"GET /v1/models answered {response.status}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            raise VllmUnavailable("VllmUnavailable", f"GET /v1/models: {type(error).__name__}: {error}") from None
        return {str(item.get("id")): item.get("root") for item in data.get("data", []) if isinstance(item, dict)}

    async def load(self, served_name: str, path: pathlib.Path) -> None:
        status, body = await self._request(
            "POST", "/v1/load_lora_adapter", {"lora_name": served_name, "lora_path": str(path)}
        )
        if status != 200:
            reason = REASONS.get(status, "VllmError")
            raise VllmRejected(reason, f"vLLM refused to load {served_name!r} ({status}): {body.strip()[:200]}")

    async def unload(self, served_name: str) -> bool:
        """True when vLLM unloaded it, False when it did not hold it."""
        status, body = await self._request("POST", "/v1/unload_lora_adapter", {"lora_name": served_name})
        if status == 200:
            return True
        if status == 404:
            return False
        raise VllmRejected(
            REASONS.get(status, "VllmError"), f"vLLM refused to unload {served_name!r} ({status}): {body.strip()[:200]}"
        )
