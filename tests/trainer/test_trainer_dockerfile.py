"""The trainer image's Dockerfile. No container engine runs here, so the test checks what a build needs:
every copied path exists, the copied tree alone builds the package with the trainer entrypoint, the image
runs as a non-root user, and no secret is baked in."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer_image" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    # As Docker does: drop comment lines (also inside a continued instruction), then join continuations.
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.strip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def copied_sources() -> list[str]:
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def test_every_copied_path_exists_in_the_build_context() -> None:
    sources = copied_sources()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_the_copied_tree_alone_builds_the_package(tmp_path: pathlib.Path) -> None:
    context = tmp_path / "context"
    for source in copied_sources():
        target = context / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / source, target)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("loraops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    for module in ("__main__", "cli", "train", "evaluate", "merge", "manifest", "data"):
        assert f"loraops_trainer/{module}.py" in names
    assert "Provides-Extra: trainer" in metadata


def test_install_user_entrypoint_and_no_secrets() -> None:
    steps = instructions()
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert re.search(r"pip install \"?\.\[trainer\]\"?", runs)
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    (entrypoint,) = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entrypoint == '["python", "-m", "loraops_trainer"]'
    assert steps[0][0] in {"ARG", "FROM"} and any(k == "FROM" for k, _ in steps)
    settings = " ".join(rest for keyword, rest in steps if keyword in {"ENV", "ARG"})
    names = re.findall(r"(\w+)=", settings)
    assert names and not [n for n in names if re.search(r"SECRET|PASSWORD|_TOKEN|TOKEN_|^TOKEN$|ACCESS_KEY|API_KEY", n)]
    assert not any(re.search(r"\.aws|\.netrc|credentials|\.env\b", s) for s in copied_sources())
