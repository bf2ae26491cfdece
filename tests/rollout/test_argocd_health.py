"""The Argo CD health check (docs/argocd/health.lua) run in a real Lua interpreter."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from lupa import LuaRuntime

pytestmark = pytest.mark.rollout

SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "argocd" / "health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{SCRIPT}\nend")
    result = check(lua.table_from(obj, recursive=True))
    return result["status"], result["message"]


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Healthy", "Healthy"), ("Ready", "Healthy"), ("Succeeded", "Healthy"),
        ("Progressing", "Progressing"), ("Running", "Progressing"), ("Pending", "Progressing"),
        ("Loading", "Progressing"), ("Evaluating", "Progressing"),
        ("Paused", "Suspended"), ("Suspended", "Suspended"),
        ("RolledBack", "Degraded"), ("Degraded", "Degraded"), ("Failed", "Degraded"),
    ],
)  # fmt: skip
def test_phase_maps_to_argocd_health(phase: str, expected: str) -> None:
    status, message = health(
        {"metadata": {"generation": 2}, "status": {"phase": phase, "observedGeneration": 2, "message": "why"}}
    )
    assert status == expected and message == "why"


def test_no_status_or_stale_generation_is_progressing() -> None:
    assert health({"metadata": {"generation": 1}})[0] == "Progressing"
    stale = {"metadata": {"generation": 3}, "status": {"phase": "Healthy", "observedGeneration": 2}}
    assert health(stale) == ("Progressing", "the operator has not observed the latest spec yet")
