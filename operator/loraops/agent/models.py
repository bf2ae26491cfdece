"""The agent's wire format (camelCase JSON), shared by the server and `AgentClient`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

AdapterState = Literal["Loading", "Loaded", "Failed", "Unloading"]
"""The same states as a LoraAdapter placement, so the operator copies them without translation."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
SECRET_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class AnswerModel(WireModel):
    """What the agent answers: unknown fields are ignored, so an operator older than its agents (mid-upgrade)
    still reads their records. Requests stay strict (`extra="forbid"`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


SHORT_DIGEST = 12
"""Hex digits of the digest in a served name (`<adapter>-<digest[:12]>`: 48 bits), the same for the operator's
names and the agent's replacement names."""


class ProbeSpec(WireModel):
    """The effect probe of one PUT; omitted prompts are the agent's generic ones (loraops.agent.probe)."""

    prompts: list[Annotated[str, Field(min_length=1, max_length=2000)]] | None = Field(
        default=None, min_length=1, max_length=8
    )
    """Completion prompts sent to the base and to the adapter; default: a few fixed generic prompts."""
    max_tokens: int = Field(default=8, ge=1, le=64)
    enabled: bool = True
    """False skips the probe: the record then says `effective` unknown (e.g. an adapter meant to change
    nothing on generic prompts is better probed with prompts of its own)."""


PEM_MAX = 16384
"""A public key is a few hundred bytes, a CA chain a few kilobytes."""


class SignatureCheck(WireModel):
    """How to verify the adapter's OpenSSF model signature (`model.sig`) before it is loaded. Only public
    material or references travel in a request: a PEM holding a private key is refused."""

    kind: Literal["publicKey", "certificateChain", "sigstore"] = "publicKey"
    pem: str | None = Field(default=None, min_length=1, max_length=PEM_MAX)
    """The public key or CA chain as PEM text (the operator reads it from a ConfigMap)."""
    secret: str | None = Field(default=None, pattern=SECRET_PATTERN)
    """Or: a Secret mounted under the agent's credentials folder holding the PEM (a reference, never the data)."""
    key: str = Field(default="public.pem", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """The Secret's key (file) holding the PEM."""
    identity: str | None = Field(default=None, min_length=1, max_length=1024)
    """Sigstore: the signer identity that must appear in the signing certificate."""
    issuer: str | None = Field(default=None, min_length=1, max_length=1024)
    """Sigstore: the OIDC issuer of that identity."""

    @model_validator(mode="after")
    def _one_trust_root(self) -> SignatureCheck:
        if self.pem is not None and "PRIVATE KEY" in self.pem:
            # Whoever sent this leaked a private key into a request: refuse it loudly rather than use it.
            raise ValueError("signature.pem holds a private key: send the public key only")
        if self.kind == "sigstore":
            if not (self.identity and self.issuer):
                raise ValueError("signature kind sigstore needs identity and issuer")
        elif (self.pem is None) == (self.secret is None):
            raise ValueError(f"signature kind {self.kind} needs exactly one of pem or secret")
        return self


class PutAdapter(WireModel):
    """Body of `PUT /v1/adapters/{name}`. Unknown fields are refused, so credentials cannot ride along."""

    uri: str = Field(min_length=1, max_length=1024)
    digest: str = Field(min_length=64, max_length=71)
    """sha256 hex of the adapter by the digest rule (`loraops digest DIR`), optionally prefixed `sha256:`."""
    served_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The name vLLM serves it under; default: the adapter name (a replacement gets a new one, see docs)."""
    credentials_secret: str | None = Field(default=None, pattern=SECRET_PATTERN)
    """Name of a Secret mounted in the agent under its credentials folder: a reference, never the data."""
    convert_pickle: bool | None = None
    """Opt in to converting pickle weights (adapter_model.bin/.pt) to safetensors in an isolated child
    process; without it any pickle file is refused (`UnsafeFormat`). Sent only when set, so an older agent
    keeps accepting the body."""
    probe: ProbeSpec | None = None
    signature: SignatureCheck | None = None
    """Verify the adapter's signature before loading, in addition to the digest. Sent only when set."""


class AdapterRecord(AnswerModel):
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
    rank: int | None = None
    """`r` from adapter_config.json."""
    converted_from: str | None = None
    """The pickle file the installed adapter_model.safetensors was converted from (`convertPickle`)."""
    compatibility: Literal["Compatible", "UnknownArchitecture"] | None = None
    """`Compatible`: tensor names and target modules checked against the base model's module table;
    `UnknownArchitecture`: not checked (no table for the base model, or its config.json is not readable)."""
    compatibility_message: str | None = None
    effective: bool | None = None
    """Set by the effect probe after each load: False when every probe answer (text and logprobs) equalled
    the base model's (reason `NoEffect`, the adapter stays loaded); None when not probed, the probe failed, or it was
    inconclusive (the base model's own answers moved)."""
    probe_latency_seconds: float | None = None
    """The adapter's first probe request (cold), seconds."""
    probe_message: str | None = None
    signer: str | None = None
    """Who signed the adapter, when its signature was verified before the load (see loraops_trainer.signing)."""
    signature_digest: str | None = None
    """The verified signature's subject digest."""
    signature_verified_at: dt.datetime | None = None
    manifest_base_model: str | None = None
    """`baseModel.name` of the adapter's loraops manifest (None: a plain PEFT folder, no manifest); the
    operator checks it against the LoraAdapter's `spec.baseModel`."""


class AdapterList(AnswerModel):
    adapters: list[AdapterRecord]
    vllm_up: bool


class PutResult(AnswerModel):
    adapter: AdapterRecord
    changed: bool
    """False when the adapter was already loaded with this digest (an idempotent no-op)."""


class ErrorBody(AnswerModel):
    reason: str
    message: str
    adapter: AdapterRecord | None = None
