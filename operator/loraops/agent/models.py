"""The agent's wire format (camelCase JSON), shared by the server and `AgentClient`."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

AdapterState = Literal["Loading", "Loaded", "Failed", "Unloading"]
"""The same states as a LoraAdapter placement, so the operator copies them without translation."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
SECRET_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class PutAdapter(WireModel):
    """Body of `PUT /v1/adapters/{name}`. Unknown fields are refused, so credentials cannot ride along."""

    uri: str = Field(min_length=1, max_length=1024)
    digest: str = Field(min_length=64, max_length=71)
    """sha256 hex of the adapter by the digest rule (`loraops digest DIR`), optionally prefixed `sha256:`."""
    served_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The name vLLM serves it under; default: the adapter name (a replacement gets a new one, see docs)."""
    credentials_secret: str | None = Field(default=None, pattern=SECRET_PATTERN)
    """Name of a Secret mounted in the agent under its credentials folder: a reference, never the data."""


class AdapterRecord(WireModel):
    """The runtime record of one adapter on this pod: what is loaded, from where, since when."""

    name: str
    served_name: str
    digest: str
    uri: str
    state: AdapterState
    size: int | None = None
    files: int | None = None
    path: str | None = None
    """The folder vLLM loaded (as vLLM sees it)."""
    loaded_at: dt.datetime | None = None
    reason: str | None = None
    message: str | None = None
    credentials_secret: str | None = None


class AdapterList(WireModel):
    adapters: list[AdapterRecord]
    vllm_up: bool


class PutResult(WireModel):
    adapter: AdapterRecord
    changed: bool
    """False when the adapter was already loaded with this digest (an idempotent no-op)."""


class ErrorBody(WireModel):
    reason: str
    message: str
    adapter: AdapterRecord | None = None
