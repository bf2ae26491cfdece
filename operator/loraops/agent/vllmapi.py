"""The calls the agent makes to vLLM on localhost: health, the model list, and the runtime LoRA API.

vLLM 0.32 answers a load with 200 and a plain-text body without content type (so only the status is read),
400 when the name is taken, 404 when the path does not exist and a bare 500 for an adapter over
`--max-lora-rank` (NOTES); errors are sorted here into "vLLM refused" and "vLLM is not there".
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import aiohttp

from loraops.agent.errors import VllmRejected, VllmUnavailable

REASONS = {400: "VllmBadRequest", 404: "VllmNotFound"}


@dataclass(frozen=True)
class Completion:
    text: str
    logprobs: list[float | None] | None
    """The chosen tokens' logprobs; None when the server sent none (an old or fake server)."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str | None
    parent: str | None
    """None for a base model, the base's served name for an adapter."""


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
        return {model.id: model.root for model in await self.model_list()}

    async def model_list(self) -> list[ServedModel]:
        """`/v1/models`: the base model(s) (`parent` None, `root` = the `--model` path) and the adapters."""
        try:
            async with self.session.get(f"{self.base_url}/v1/models", timeout=self.timeout) as response:
                if response.status != 200:
                    raise VllmRejected("VllmError", f"GET /v1/models answered {response.status}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            raise VllmUnavailable("VllmUnavailable", f"GET /v1/models: {type(error).__name__}: {error}") from None
        return [
            ServedModel(str(item.get("id")), item.get("root"), item.get("parent"))
            for item in data.get("data", [])
            if isinstance(item, dict)
        ]

    async def complete(self, model: str, prompt: str, max_tokens: int) -> Completion:
        """One greedy completion with the chosen tokens' logprobs (for the effect probe)."""
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 1}
        path = "/v1/completions"
        try:
            async with self.session.post(f"{self.base_url}{path}", json=body, timeout=self.timeout) as response:
                if response.status != 200:
                    text = (await response.text(errors="replace"))[:200]
                    raise VllmRejected(
                        REASONS.get(response.status, "VllmError"),
                        f"completion for {model!r} answered {response.status}: {text.strip()}",
                    )
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise VllmUnavailable("VllmUnavailable", f"POST {path}: {type(error).__name__}: {error}") from None
        except ValueError:
            raise VllmRejected("VllmError", f"completion for {model!r}: the answer is not JSON") from None
        try:
            choice = data["choices"][0]
            text = str(choice["text"])
        except (KeyError, IndexError, TypeError):
            raise VllmRejected("VllmError", f"completion for {model!r}: no choices[0].text in the answer") from None
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        tokens = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        return Completion(
            text, [float(v) if v is not None else None for v in tokens] if isinstance(tokens, list) else None
        )

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
