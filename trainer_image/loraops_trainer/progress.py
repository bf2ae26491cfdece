"""Structured progress: one JSON object per stdout line, and a short summary in the termination log.

stdout carries nothing but these lines (libraries' logs and progress bars go to stderr), so the controller can
parse the pod log line by line. Kubernetes reads `/dev/termination-log` into the pod status
(`state.terminated.message`, at most 4096 bytes): the controller learns the result without any permission on
pod logs.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, TextIO

TERMINATION_LOG_ENV = "LORAOPS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity; a diverged loss is reported as null rather than as invalid JSON."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


class Reporter:
    """Writes events; silent on every rank but 0 so a multi-process run prints each event once."""

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, **_clean(fields)}
        if self.enabled:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            stream.flush()
        return record


def termination_log_path() -> pathlib.Path | None:
    """Where to write the summary. Kubernetes creates `/dev/termination-log` in every container; outside
    Kubernetes the file is absent and nothing is written (never create files under /dev)."""
    explicit = os.environ.get(TERMINATION_LOG_ENV)
    if explicit:
        return pathlib.Path(explicit)
    default = pathlib.Path(DEFAULT_TERMINATION_LOG)
    return default if default.is_file() and os.access(default, os.W_OK) else None


def fit_summary(summary: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """Serialise within `limit` bytes: long strings are cut first, then optional parts dropped."""
    summary = _clean(summary)
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    trimmed = dict(summary)
    for key, value in list(trimmed.items()):
        if isinstance(value, str) and len(value) > 512:
            trimmed[key] = value[:509] + "..."
    for optional in ("metrics", "files", "rows", "details"):
        text = json.dumps(trimmed, separators=(",", ":"))
        if len(text.encode()) <= limit:
            return text
        trimmed.pop(optional, None)
    essential: dict[str, Any] = {
        key: trimmed[key] for key in ("event", "status", "exit_code", "reason", "digest") if key in trimmed
    }
    essential["truncated"] = True
    return json.dumps(essential, separators=(",", ":"))


def write_termination_log(summary: dict[str, Any]) -> None:
    path = termination_log_path()
    if path is None:
        return
    try:
        path.write_text(fit_summary(summary), encoding="utf-8")
    except OSError as error:
        print(f"cannot write termination log {path}: {error}", file=sys.stderr)


class Clock:
    """Monotonic seconds since creation."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start
