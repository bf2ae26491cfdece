"""A local Job controller for the fake API: runs each Job's pod command as a local subprocess.

It plays the part of the Job controller and the kubelet, so that the real LoraTraining controller drives the
real trainer on one machine (dev mode, e2e tests): it creates Pod objects, runs the container's command with
its environment (Secrets resolved through `secretKeyRef`), maps volume mounts to local folders (ConfigMaps
written out, PVC claims under `<workdir>/pvc/<claim>`, emptyDirs per pod) and the termination log to a file
(`LORAOPS_TERMINATION_LOG`), streams stdout into the pod's log, and writes back pod status and the Job's
conditions — honouring `suspend`, `backoffLimit`, `activeDeadlineSeconds`, `podFailurePolicy` exit codes and
Indexed completions.

What it does not emulate: scheduling (nodes, GPUs), images (the command runs with this machine's Python),
resource limits, and multi-node networking (each index runs here, so a multi-node rendezvous is local).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.kutil import now_rfc3339

log = logging.getLogger(__name__)
Obj = dict[str, Any]
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass
class Attempt:
    index: int
    pod: str
    process: subprocess.Popen[str]
    termination: pathlib.Path
    reader: threading.Thread


@dataclass
class JobState:
    namespace: str
    name: str
    uid: str
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    attempts: int = 0
    running: dict[int, Attempt] = field(default_factory=dict)
    succeeded: set[int] = field(default_factory=set)
    done: bool = False


class LocalJobRunner:
    def __init__(
        self, api: FakeKubeApi, workdir: pathlib.Path, namespaces: list[str], *, poll_seconds: float = 0.2
    ) -> None:
        self.api = api
        self.workdir = workdir
        self.namespaces = namespaces
        self.poll_seconds = poll_seconds
        self.jobs: dict[str, JobState] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    def start(self) -> LocalJobRunner:
        (self.workdir / "pvc").mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="local-job-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for state in self.jobs.values():
            for attempt in state.running.values():
                _kill(attempt.process)

    def __enter__(self) -> LocalJobRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pvc_path(self, claim: str) -> pathlib.Path:
        """Where a PersistentVolumeClaim's files live on this machine."""
        return self.workdir / "pvc" / claim

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:  # one bad Job must not stop the others
                log.exception("local job runner")

    # --- the Job controller ---
    def sync(self) -> None:
        seen = set()
        for namespace in self.namespaces:
            for job in self.api.list("jobs", namespace):
                key = job["metadata"]["uid"]
                seen.add(key)
                state = self.jobs.setdefault(key, JobState(namespace, job["metadata"]["name"], key))
                if not state.done:
                    self._sync_job(job, state)
        for key in set(self.jobs) - seen:  # deleted Jobs take their processes with them
            for attempt in self.jobs.pop(key).running.values():
                _kill(attempt.process)

    def _sync_job(self, job: Obj, state: JobState) -> None:
        spec = job.get("spec") or {}
        completions = int(spec.get("completions") or 1)
        if spec.get("suspend"):
            for index, attempt in list(state.running.items()):
                _kill(attempt.process)
                self._finish_pod(state, attempt, suspended=True)
                del state.running[index]
            self._job_status(state, {"active": 0}, {"type": "Suspended", "status": "True", "reason": "JobSuspended"})
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.monotonic() - state.started > float(deadline):
            self._fail(state, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        for index, attempt in list(state.running.items()):
            code = attempt.process.poll()
            if code is None:
                continue
            attempt.reader.join(timeout=5)
            del state.running[index]
            self._finish_pod(state, attempt)
            if code == 0:
                state.succeeded.add(index)
            elif _fails_job(spec, code):
                self._fail(state, "PodFailurePolicy", f"container trainer exited with code {code} (podFailurePolicy)")
                return
            else:
                state.failures += 1
                if state.failures > int(spec.get("backoffLimit", 6)):
                    self._fail(state, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                    return
        if len(state.succeeded) >= completions:
            state.done = True
            self._job_status(
                state,
                {"active": 0, "succeeded": completions, "completionTime": now_rfc3339()},
                {"type": "Complete", "status": "True"},
            )
            return
        for index in range(completions):
            if index not in state.running and index not in state.succeeded:
                state.running[index] = self._start_pod(job, state, index)
        self._job_status(state, {"active": len(state.running), "startTime": self._start_time(state)}, None)

    def _start_time(self, state: JobState) -> str:
        job = self.api.get("jobs", state.namespace, state.name) or {}
        return str((job.get("status") or {}).get("startTime") or now_rfc3339())

    def _fail(self, state: JobState, reason: str, message: str) -> None:
        for attempt in state.running.values():
            _kill(attempt.process)
            self._finish_pod(state, attempt)
        state.running.clear()
        state.done = True
        self._job_status(state, {"active": 0, "failed": state.failures or 1}, {
            "type": "Failed", "status": "True", "reason": reason, "message": message,
        })  # fmt: skip

    def _job_status(self, state: JobState, fields: Obj, condition: Obj | None) -> None:
        status = dict(fields)
        if condition is not None:
            status["conditions"] = [{**condition, "lastTransitionTime": now_rfc3339()}]
        with contextlib.suppress(Exception):  # the Job may be gone (deleted while running)
            self.api.patch("jobs", state.namespace, state.name, {"status": status}, subresource="status")

    # --- the kubelet ---
    def _start_pod(self, job: Obj, state: JobState, index: int) -> Attempt:
        state.attempts += 1
        template = (job.get("spec") or {}).get("template") or {}
        pod_spec = template.get("spec") or {}
        container = (pod_spec.get("containers") or [{}])[0]
        pod_name = f"{state.name}-{index}-{state.attempts}"
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "job-name": state.name}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": state.name, "uid": state.uid, "controller": True}
        pod_dir = self.workdir / "pods" / state.namespace / pod_name
        mounts = self._mounts(state.namespace, pod_spec, container, pod_dir)
        termination = pod_dir / "termination-log"
        env = self._env(state.namespace, container, index, mounts)
        env["LORAOPS_TERMINATION_LOG"] = str(termination)
        command = [
            _expand(_map_path(a, mounts), env) for a in [*container.get("command", []), *container.get("args", [])]
        ]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        self.api.create(
            "pods",
            {
                "metadata": {
                    "name": pod_name, "labels": labels, "annotations": {INDEX_ANNOTATION: str(index)},
                    "ownerReferences": [owner],
                },
                "spec": {**pod_spec, "nodeName": "local"},
                "status": {
                    "phase": "Running", "startTime": now_rfc3339(),
                    "containerStatuses": [{"name": container["name"], "ready": True, "restartCount": 0,
                                           "state": {"running": {"startedAt": now_rfc3339()}}}],
                },
            },
            state.namespace,
        )  # fmt: skip
        process = subprocess.Popen(
            command,
            cwd=pod_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(pod_dir / "stderr.log", "w"),  # noqa: SIM115 - closed with the process
            text=True,
            start_new_session=True,
        )
        reader = threading.Thread(target=self._pump, args=(state.namespace, pod_name, process), daemon=True)
        reader.start()
        log.info("started %s/%s: %s", state.namespace, pod_name, " ".join(command))
        return Attempt(index, pod_name, process, termination, reader)

    def _pump(self, namespace: str, pod: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with contextlib.suppress(Exception):
                self.api.append_pod_log(namespace, pod, line)

    def _finish_pod(self, state: JobState, attempt: Attempt, suspended: bool = False) -> None:
        code = attempt.process.returncode if attempt.process.returncode is not None else 137
        message = attempt.termination.read_text(errors="replace")[:4096] if attempt.termination.exists() else ""
        terminated = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
            "finishedAt": now_rfc3339(),
        }  # fmt: skip
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "ready": False, "state": {"terminated": terminated}}],
        }
        with contextlib.suppress(Exception):
            if suspended:
                self.api.delete("pods", state.namespace, attempt.pod)
            else:
                self.api.patch("pods", state.namespace, attempt.pod, {"status": status}, subresource="status")

    def _mounts(self, namespace: str, pod_spec: Obj, container: Obj, pod_dir: pathlib.Path) -> dict[str, pathlib.Path]:
        """Container path → local path, for every volume mount."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        pod_dir.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, pathlib.Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                local = self.pvc_path(claim)
                local.mkdir(parents=True, exist_ok=True)
                if mount["mountPath"].rstrip("/").endswith(f"/{claim}"):
                    # The trainer resolves pvc:// under the claims' parent folder (LORAOPS_PVC_ROOT).
                    mounts[mount["mountPath"].rstrip("/").removesuffix(f"/{claim}")] = self.workdir / "pvc"
            else:
                local = pod_dir / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                if "configMap" in volume:
                    config_map = self.api.get("configmaps", namespace, volume["configMap"]["name"]) or {}
                    for key, value in (config_map.get("data") or {}).items():
                        (local / key).write_text(value)
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts

    def _env(self, namespace: str, container: Obj, index: int, mounts: dict[str, pathlib.Path]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env["PYTHONUNBUFFERED"] = "1"
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = _expand(_map_path(str(item["value"]), mounts), env)
                continue
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.api.get("secrets", namespace, ref["name"]) or {}
                if ref["key"] in (secret.get("data") or {}):
                    env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
                elif ref["key"] in (secret.get("stringData") or {}):
                    env[item["name"]] = secret["stringData"][ref["key"]]
                elif not ref.get("optional"):
                    raise RuntimeError(f"secret {ref['name']} has no key {ref['key']}")
            elif "fieldRef" in source and INDEX_ANNOTATION in source["fieldRef"].get("fieldPath", ""):
                env[item["name"]] = str(index)
        return env


def _fails_job(spec: Obj, code: int) -> bool:
    for rule in ((spec.get("podFailurePolicy") or {}).get("rules")) or []:
        exit_codes = rule.get("onExitCodes") or {}
        if (
            rule.get("action") == "FailJob"
            and exit_codes.get("operator") == "In"
            and code in exit_codes.get("values", [])
        ):
            return True
    return False


def _map_path(value: str, mounts: dict[str, pathlib.Path]) -> str:
    for prefix in sorted(mounts, key=len, reverse=True):
        if value == prefix or value.startswith(prefix + "/"):
            return str(mounts[prefix]) + value[len(prefix) :]
    return value


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in commands and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
