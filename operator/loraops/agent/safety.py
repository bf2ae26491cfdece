"""Checks that keep a download inside its folder and inside its limits.

An artifact comes from a store the agent does not control (a bucket others can write to, a shared volume), so
every name in it is treated as hostile: a key like `../../etc/x` or a manifest entry `/proc/self/environ`
must never make the agent read or write outside the staging folder, and a symlink must never make it hash or
hand vLLM a file that is not part of the download.
"""

from __future__ import annotations

import os
import pathlib
import stat
from dataclasses import dataclass

from loraops.agent.errors import ArtifactRejected


def safe_relative(name: str) -> pathlib.PurePosixPath:
    """`name` as a relative path that cannot leave its folder; refuses anything else with `UnsafePath`."""
    if not isinstance(name, str) or not name:
        raise ArtifactRejected("UnsafePath", f"empty or non-string file name {name!r}")
    if "\\" in name or "\x00" in name:
        raise ArtifactRejected("UnsafePath", f"file name {name!r} contains a backslash or NUL")
    if name.startswith("/"):
        raise ArtifactRejected("UnsafePath", f"file name {name!r} is absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ArtifactRejected("UnsafePath", f"file name {name!r} has an empty, '.' or '..' component")
    return pathlib.PurePosixPath(name)


def is_hidden(relative: pathlib.PurePath) -> bool:
    """Hidden entries (checkpoints, staging) are not part of an adapter by the digest rule: they are skipped."""
    return any(part.startswith(".") for part in relative.parts)


@dataclass
class Budget:
    """What a download may still take; every source charges it as bytes arrive, not from declared sizes only."""

    max_bytes: int
    max_files: int
    bytes: int = 0
    files: int = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise ArtifactRejected("TooManyFiles", f"more than {self.max_files} files (at {name!r})")

    def add_bytes(self, count: int, name: str) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise ArtifactRejected("TooLarge", f"more than {self.max_bytes} bytes (at {name!r})")


def check_tree(root: pathlib.Path, max_files: int, max_bytes: int, *, skip_hidden: bool = False) -> tuple[int, int]:
    """(files, bytes) of a staged tree; refuses symlinks and special files anywhere in it.

    Run on the staged copy whatever the source, as a second line behind the sources' own checks: the digest
    helpers follow symlinks, so one left here would let outside bytes be hashed and loaded.
    """
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if skip_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        for entry in [*dirnames, *filenames]:
            path = pathlib.Path(dirpath, entry)
            mode = path.lstat().st_mode
            relative = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise ArtifactRejected("Symlink", f"{relative!r} is a symlink")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactRejected("UnsafePath", f"{relative!r} is not a regular file or folder")
            if stat.S_ISREG(mode):
                files += 1
                size += path.lstat().st_size
    if files > max_files:
        raise ArtifactRejected("TooManyFiles", f"{files} files, the limit is {max_files}")
    if size > max_bytes:
        raise ArtifactRejected("TooLarge", f"{size} bytes, the limit is {max_bytes}")
    return files, size
