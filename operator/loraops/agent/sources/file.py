"""`file:///absolute/path`: a folder on a filesystem the agent container sees (dev mode, hostPath, tests)."""

from __future__ import annotations

import os
import pathlib
import stat

from loraops.agent.config import AgentConfig
from loraops.agent.errors import ArtifactRejected, BadRequest
from loraops.agent.safety import Budget, is_hidden
from loraops.agent.sources import FetchRequest

CHUNK = 1 << 20


def copy_tree(source: pathlib.Path, target: pathlib.Path, budget: Budget, uri: str) -> None:
    """Copy the non-hidden regular files under `source` into `target`; refuse symlinks and special files."""
    if not source.is_dir():
        raise ArtifactRejected("SourceNotFound", f"{uri}: no such folder")
    copied = 0
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        base = pathlib.Path(dirpath)
        relative_dir = pathlib.PurePosixPath(base.relative_to(source).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in [*dirnames, *sorted(filenames)]:
            relative = relative_dir / name
            if is_hidden(relative):
                continue
            mode = (base / name).lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ArtifactRejected("Symlink", f"{uri}: {relative.as_posix()!r} is a symlink")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ArtifactRejected("UnsafePath", f"{uri}: {relative.as_posix()!r} is not a regular file")
            budget.add_file(relative.as_posix())
            _copy_file(base / name, target / relative, budget, relative.as_posix())
            copied += 1
    if not copied:
        raise ArtifactRejected("SourceNotFound", f"{uri}: the folder holds no files")


def _copy_file(source: pathlib.Path, destination: pathlib.Path, budget: Budget, name: str) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: the file could be swapped for a symlink between the walk's lstat and this open.
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as reader, destination.open("xb") as writer:
        while chunk := reader.read(CHUNK):
            budget.add_bytes(len(chunk), name)
            writer.write(chunk)


def check_under(path: pathlib.Path, roots: list[pathlib.Path] | None, uri: str) -> None:
    if roots is None:
        return
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise BadRequest("ForbiddenPath", f"{uri}: outside the folders this agent may read")


class FileSource:
    scheme = "file"

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def fetch(self, request: FetchRequest) -> None:
        raw = request.uri.removeprefix("file://")
        if not raw.startswith("/"):
            raise BadRequest("InvalidUri", f"{request.uri!r}: a file:// URI needs an absolute path (file:///path)")
        if ".." in raw.split("/"):
            raise BadRequest("InvalidUri", f"{request.uri!r}: '..' is not allowed in a file:// URI")
        path = pathlib.Path(raw)
        check_under(path, self.config.file_roots, request.uri)
        copy_tree(path, request.target, request.budget, request.uri)
