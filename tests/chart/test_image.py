"""operator/Dockerfile, checked offline (no container engine here): what it copies exists, it installs the
package without extras (no torch), runs as a numeric non-root user, carries no secrets; and the package
builds from exactly the files it copies."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from .support import ROOT

pytestmark = pytest.mark.chart

DOCKERFILE = ROOT / "operator" / "Dockerfile"
SECRET_WORDS = re.compile(r"(password|passwd|secret|token|api[_-]?key|aws_access|private[_-]?key)", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def copied_sources() -> list[str]:
    sources = []
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            parts = rest.split()
            sources += parts[:-1]
    return sources


def test_copied_paths_exist_and_ignore_file_lets_them_through() -> None:
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "operator/loraops"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
    ignore = (ROOT / "operator" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert ignore.splitlines()[-1] != "**" and "**" in ignore.splitlines()  # deny all, then allow what is copied
    for source in sources:
        assert f"!{source}" in ignore, source


def test_installs_the_package_without_extras_and_without_torch() -> None:
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    installs = re.findall(r"pip install ([^&;]+)", runs)
    assert any(re.search(r"(^|\s)\.(\s|$)", i) for i in installs), installs  # `pip install .`
    assert not re.search(r"\.\[", runs), "installs extras"
    assert not any(heavy in runs.lower() for heavy in ("torch", "vllm")), runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "vllm", "transformers", "peft", "bitsandbytes"):
        assert heavy not in base, f"{heavy} is a base dependency: the operator image would carry it"


def test_slim_python_311_base_and_non_root_user() -> None:
    all_stages = stages()
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in instructions() if word == "ARG" and "=" in rest
    }
    for stage in all_stages:
        image = stage[0][1].split()[0]
        image = args.get(image.strip("${}"), image)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    final = all_stages[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert [rest for word, rest in final if word == "ENTRYPOINT"] == ['["loraops"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "loraops" in scripts


def test_no_secrets_baked_in() -> None:
    for word, rest in instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert not SECRET_WORDS.search(rest), f"{word} {rest}"
        assert word != "ADD", "ADD fetches URLs and unpacks archives: use COPY"
    for source in copied_sources():
        assert not re.search(r"(\.env|\.pem|\.key|kubeconfig|credentials)", source), source


def test_the_package_builds_from_the_copied_files_only(tmp_path: pathlib.Path) -> None:
    """A wheel built from a context holding only what the Dockerfile copies has the CLI and the three
    components, and requires no extras."""
    context = tmp_path / "context"
    for source in copied_sources():
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    out = tmp_path / "wheel"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out)]
    done = subprocess.run([*command, str(context)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("loraops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for module in ("loraops/cli.py", "loraops/runtime.py", "loraops/router/server.py", "loraops/agent/server.py"):
        assert module in names, module
    assert "loraops = loraops.cli:main" in entry_points
    unconditional = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert unconditional and not any("torch" in line or "vllm" in line for line in unconditional)
