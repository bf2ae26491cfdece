"""Safe weight formats: safetensors only; pickle files are refused, or converted in a separate process.

A pickle (`torch.save`'s `.bin`/`.pt`, `.pkl`, Lightning's `.ckpt`) can run arbitrary code when it is opened,
and vLLM 0.32 opens `adapter_model.bin` when there is no `adapter_model.safetensors` (NOTES). The agent must
therefore never let vLLM see one. When a PUT opts in (`convertPickle: true`), the weights are read by a child
Python with `torch.load(weights_only=True)` — torch's restricted unpickler, which refuses code-carrying
pickles — and written back as safetensors; the child holds no agent state, and a crash or a refused pickle
there cannot take the agent down. The operator image has no torch: there the opt-in answers
`ConversionUnavailable`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

from loraops.agent.errors import AgentFailure, ArtifactRejected
from loraops.agent.safety import is_hidden

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
"""Extensions of formats that unpickle on load. `.bin` is ambiguous in general, but in a PEFT/HF folder it is
always `torch.save` output (adapter_model.bin, training_args.bin)."""
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
"""The pickle names vLLM (or PEFT) read as adapter weights, in vLLM's order of preference."""
CONVERT_TIMEOUT = 300.0
UNAVAILABLE_EXIT = 3

# Runs in the child: only the standard library, torch and safetensors; argv = source, target.
CONVERTER = r"""
import json, os, sys
try:
    import torch
    from safetensors.torch import save_file
except ImportError as error:
    print(json.dumps({"unavailable": str(error)}))
    sys.exit(3)
source, target = sys.argv[1], sys.argv[2]
state = torch.load(source, map_location="cpu", weights_only=True)
if not isinstance(state, dict) or not state or not all(
    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
):
    print(json.dumps({"error": "not a non-empty mapping of tensor names to tensors"}))
    sys.exit(4)
# safetensors refuses shared storage: every tensor gets its own contiguous copy.
save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, target,
          metadata={"format": "pt", "converted_from": os.path.basename(source)})
print(json.dumps({"tensors": len(state)}))
"""


MAX_LISTED = 10
"""Names shown in a refusal's message; the rest are counted."""


def listed(names: list[str]) -> str:
    """`names` for a message: the first MAX_LISTED, then how many more."""
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def pickle_files(root: pathlib.Path) -> list[str]:
    """Relative names of every non-hidden file in a pickle format, sorted."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if is_hidden(relative):
            continue
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            found.append(relative.as_posix())
    return sorted(found)


def check_formats(root: pathlib.Path, convert_pickle: bool) -> list[str]:
    """Refuse pickle files unless the request opted in to conversion; returns the pickle files found."""
    pickles = pickle_files(root)
    if pickles and not convert_pickle:
        raise ArtifactRejected(
            "UnsafeFormat",
            f"pickle files can run code when loaded and are refused: {listed(pickles)}; "
            f"publish {WEIGHTS_NAME} (PEFT's default) without pickle files, or opt in to convertPickle",
        )
    return pickles


@dataclass(frozen=True)
class Conversion:
    source: str | None
    """The pickle file converted into adapter_model.safetensors; None when safetensors was already there."""
    removed: tuple[str, ...]
    """Pickle files removed from the installed copy (never opened)."""


def convert(root: pathlib.Path, pickles: list[str], python: str | None = None) -> Conversion:
    """Make `root` pickle-free: convert the pickle weights in a child process, drop every other pickle file.

    Only the weights file is opened (by torch's restricted unpickler, in the child); other pickles such as
    `training_args.bin` are never read by vLLM and are simply not installed.
    """
    source: str | None = None
    if not (root / WEIGHTS_NAME).is_file():
        source = next((name for name in PICKLE_WEIGHTS if name in pickles), None)
        if source is None:
            raise ArtifactRejected(
                "UnsafeFormat", f"no {WEIGHTS_NAME} and no pickle weights ({', '.join(PICKLE_WEIGHTS)}) to convert"
            )
        _run_converter(root / source, root / WEIGHTS_NAME, python or sys.executable)
    for name in pickles:
        (root / name).unlink()
    return Conversion(source=source, removed=tuple(pickles))


def _run_converter(source: pathlib.Path, target: pathlib.Path, python: str) -> None:
    try:
        # -I: no user site, no PYTHON* variables, no current folder on sys.path (the artifact's own files
        # must not be importable). A bare environment: the child needs no credentials or configuration.
        done = subprocess.run(
            [python, "-I", "-c", CONVERTER, str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(source.parent)},
            cwd=source.parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        target.unlink(missing_ok=True)
        raise AgentFailure("ConversionFailed", f"converter did not run: {error}", status=422) from None
    if done.returncode == UNAVAILABLE_EXIT:
        raise AgentFailure(
            "ConversionUnavailable",
            f"convertPickle needs torch and safetensors in the agent's Python ({python}); this image has none "
            f"({_detail(done.stdout)}). Convert with safetensors offline and publish {WEIGHTS_NAME}",
            status=422,
        )
    if done.returncode != 0 or not target.is_file():
        target.unlink(missing_ok=True)
        # A pickle that needs code (a reducer, a global outside torch's allow-list) ends up here.
        last = (done.stderr.strip().splitlines() or [_detail(done.stdout)])[-1]
        raise ArtifactRejected("UnsafeFormat", f"{source.name} could not be read as plain tensors: {last[:300]}")


def _detail(stdout: str) -> str:
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return stdout.strip()[:200]
    return str(data.get("unavailable") or data.get("error") or data)[:200] if isinstance(data, dict) else str(data)
