"""Errors the trainer reports to its caller, each with a stable reason and exit code.

The exit code is what a Kubernetes Job's `podFailurePolicy` can match on: a config error fails the Job at once
(retrying cannot fix bad input), a runtime failure is retried and resumes from the last checkpoint.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
"""Unexpected failure (crash, out of memory, network): retry, the run resumes from its last checkpoint."""
EXIT_USAGE = 2
"""Wrong command line (argparse's own code)."""
EXIT_CONFIG = 3
"""Bad input: config, dataset, model, output location. Fix the input; a retry fails the same way."""
EXIT_INTEGRITY = 4
"""A digest does not match (dataset sha256, `verify`, base model digest)."""
EXIT_PREEMPTED = 143
"""Stopped by SIGTERM after writing a checkpoint (128 + 15, what Kubernetes expects of a terminated pod)."""


class TrainerError(Exception):
    """An error with a CamelCase reason (as in a Kubernetes condition) and an exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class ConfigError(TrainerError):
    """Bad input that no retry fixes."""

    exit_code = EXIT_CONFIG


class IntegrityError(TrainerError):
    """Content that does not match its declared digest."""

    exit_code = EXIT_INTEGRITY


class RuntimeFailure(TrainerError):
    """A failure that may pass on retry (storage unavailable, a peer rank died)."""

    exit_code = EXIT_RUNTIME


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was written and the run stopped."""

    exit_code = EXIT_PREEMPTED
