"""Failures of the agent, each with a stable CamelCase reason (as in a Kubernetes condition) and an HTTP status."""

from __future__ import annotations


class AgentFailure(Exception):
    """Something the agent refused or could not do; `reason` is what metrics and the operator match on."""

    status = 500

    def __init__(self, reason: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class BadRequest(AgentFailure):
    """The request itself is wrong (name, digest, URI scheme): retrying it unchanged fails the same way."""

    status = 400


class ArtifactRejected(AgentFailure):
    """The artifact cannot be used: missing, too large, unsafe names, or bytes that do not match the digest."""

    status = 422


class SourceUnavailable(AgentFailure):
    """The artifact store did not answer properly; a retry may pass."""

    status = 502


class VllmRejected(AgentFailure):
    """vLLM answered the load/unload call with an error status."""

    status = 502


class VllmUnavailable(AgentFailure):
    """vLLM did not answer at all (not started yet, restarting, crashed)."""

    status = 503


class Conflict(AgentFailure):
    status = 409
