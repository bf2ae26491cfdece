"""`AgentClient`: how the operator talks to the agent of one vLLM pod."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp

from loraops.agent.models import (
    AdapterList,
    AdapterRecord,
    ErrorBody,
    ProbeSpec,
    PutAdapter,
    PutResult,
    SignatureCheck,
)


class AgentError(Exception):
    """The agent refused or failed a call; `reason` is the agent's stable reason (or a transport one)."""

    def __init__(self, status: int, reason: str, message: str, record: AdapterRecord | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.record = record
        """The agent's record of the adapter after the failure (e.g. the old release still serving)."""


class AgentClient:
    """Async client of one agent. Use as `async with AgentClient(url) as agent:` or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # A PUT returns once the adapter is loaded: a large download needs a generous total timeout.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            async with self._client().request(
                method, f"{self.base_url}{path}", json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                return response.status, data
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise AgentError(0, "AgentUnavailable", f"{method} {self.base_url}{path}: {error}") from None

    @staticmethod
    def _raise(status: int, data: Any) -> AgentError:
        try:
            body = ErrorBody.model_validate(data)
        except ValueError:
            return AgentError(status, "AgentError", f"unexpected answer {status}: {str(data)[:200]}")
        return AgentError(status, body.reason, body.message, body.adapter)

    async def list(self) -> list[AdapterRecord]:
        """Every adapter the agent holds (the runtime record)."""
        status, data = await self._call("GET", "/v1/adapters")
        if status != 200:
            raise self._raise(status, data)
        return AdapterList.model_validate(data).adapters

    async def get(self, name: str) -> AdapterRecord | None:
        status, data = await self._call("GET", f"/v1/adapters/{name}")
        if status == 404:
            return None
        if status != 200:
            raise self._raise(status, data)
        return AdapterRecord.model_validate(data)

    async def put(
        self,
        name: str,
        uri: str,
        digest: str,
        *,
        served_name: str | None = None,
        credentials_secret: str | None = None,
        convert_pickle: bool = False,
        probe: ProbeSpec | None = None,
        signature: SignatureCheck | None = None,
    ) -> AdapterRecord:
        """Make the agent hold `name` at `digest` (idempotent); returns the record once loaded.

        The record says whether the effect probe saw the adapter change anything (`effective`; False with a
        `probe_message` means it answers like the base model: not Ready). Raises AgentError: 400 bad request,
        409 served name taken, 422 artifact refused (reason says why: DigestMismatch, UnsafePath, Symlink,
        TooLarge, TooManyFiles, SourceNotFound, UnsafeFormat, ConversionUnavailable, IncompatibleModules,
        InvalidWeights, InvalidAdapter, UnknownArchitecture, SignatureMissing, SignatureInvalid…), 502 store or vLLM
        error, 503 vLLM unavailable
        (the verified adapter is held and loads when vLLM is back).
        """
        body = PutAdapter(
            uri=uri,
            digest=digest,
            served_name=served_name,
            credentials_secret=credentials_secret,
            # Only sent when used, so the body stays acceptable to agents that predate these fields.
            convert_pickle=True if convert_pickle else None,
            probe=probe,
            signature=signature,
        )
        status, data = await self._call("PUT", f"/v1/adapters/{name}", body.wire())
        if status != 200:
            raise self._raise(status, data)
        return PutResult.model_validate(data).adapter

    async def delete(self, name: str) -> bool:
        """Unload and remove `name`; False when the agent did not hold it (so deleting twice is fine)."""
        status, data = await self._call("DELETE", f"/v1/adapters/{name}")
        if status == 404:
            return False
        if status != 200:
            raise self._raise(status, data)
        return True

    async def ready(self) -> bool:
        status, _ = await self._call("GET", "/readyz")
        return status == 200
