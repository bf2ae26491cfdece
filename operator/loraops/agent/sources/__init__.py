"""Artifact sources: where an adapter's files come from. One module per URI scheme.

A source copies the files of one adapter into an empty staging folder, charging every byte and file to a
`Budget` as it goes and refusing unsafe names; verification happens after, on the staged copy, so a source
never has to be trusted about content.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from loraops.agent.config import AgentConfig
from loraops.agent.errors import BadRequest
from loraops.agent.safety import Budget


@dataclass(frozen=True)
class FetchRequest:
    uri: str
    target: pathlib.Path
    """An existing, empty folder to fill."""
    budget: Budget
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values read from a mounted Secret (e.g. `AWS_ACCESS_KEY_ID`); kept out of repr so they never reach logs."""


class ArtifactSource(Protocol):
    scheme: str

    def fetch(self, request: FetchRequest) -> None:
        """Fill `request.target` with the adapter's files (blocking; the agent runs it in a thread)."""
        ...


SourceFactory = Callable[[AgentConfig], ArtifactSource]


def scheme_of(uri: str) -> str:
    scheme, sep, _ = uri.partition("://")
    if not sep or not scheme:
        raise BadRequest("InvalidUri", f"{uri!r} has no scheme (use s3://, pvc:// or file://)")
    return scheme


def factories() -> dict[str, SourceFactory]:
    # Imported here so that a source's optional dependency (boto3) is needed only when that scheme is used.
    from loraops.agent.sources.file import FileSource
    from loraops.agent.sources.pvc import PvcSource
    from loraops.agent.sources.s3 import S3Source

    return {"file": FileSource, "pvc": PvcSource, "s3": S3Source}


def source_for(uri: str, config: AgentConfig) -> ArtifactSource:
    scheme = scheme_of(uri)
    known = factories()
    if scheme not in known or scheme not in config.schemes:
        allowed = ", ".join(f"{s}://" for s in config.schemes if s in known)
        raise BadRequest("UnsupportedScheme", f"{uri!r}: scheme {scheme}:// is not enabled (enabled: {allowed})")
    return known[scheme](config)
