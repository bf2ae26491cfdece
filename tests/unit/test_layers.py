"""The layering rules of the house, checked on the source: a violation fails here, not in production."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.api

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "loraops"
TRAINER = ROOT / "trainer_image" / "loraops_trainer"


def imports_of(folder: pathlib.Path) -> dict[str, set[str]]:
    """Module file → absolute names it imports (relative imports resolved against the package)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        package = ".".join(path.relative_to(folder.parent).with_suffix("").parts[:-1])
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    names.add(f"{base}.{node.module}" if node.module else base)
                elif node.module:
                    names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_api_imports_no_other_part_of_loraops() -> None:
    for module, names in imports_of(OPERATOR / "api").items():
        bad = {n for n in names if n.startswith("loraops") and not n.startswith("loraops.api")}
        assert not bad, f"{module} imports {bad}"


def test_router_imports_no_kopf_and_no_controller() -> None:
    forbidden = ("kopf", "loraops.training", "loraops.adapters", "loraops.routing", "loraops.kube", "loraops.runtime")
    for module, names in imports_of(OPERATOR / "router").items():
        bad = {n for n in names if n.startswith(forbidden)}
        assert not bad, f"{module} imports {bad}"


def test_trainer_imports_no_operator_code() -> None:
    for module, names in imports_of(TRAINER).items():
        bad = {n for n in names if n == "loraops" or n.startswith("loraops.")}
        assert not bad, f"{module} imports {bad}"


def test_operator_modules_import_without_torch() -> None:
    modules = sorted(
        ".".join(p.relative_to(OPERATOR.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in OPERATOR.rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'vllm') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing the operator pulled in: {result.stdout.strip()}"


def test_the_cli_loads_no_operator_machinery_until_the_operator_runs() -> None:
    """The agent sidecar and the router start through `loraops`: its parser must not pull in kopf or the
    controllers (memory and start-up the sidecar would pay for nothing)."""
    code = (
        "import sys\n"
        "from loraops.cli import build_parser\n"
        "build_parser()\n"
        "loaded = ('kopf', 'loraops.training.handlers', 'loraops.adapters.handlers', 'loraops.routing.handlers')\n"
        "print(','.join(sorted(m for m in loaded if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"building the CLI loaded: {result.stdout.strip()}"
