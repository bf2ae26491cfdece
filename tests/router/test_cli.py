"""`loraops router` as a process: starts from a routes file, serves, reloads, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys

import aiohttp
import pytest
import yaml

from loraops.devmode.vllm import free_port
from tests.router.fakes import route, run, upstream

pytestmark = pytest.mark.router


def test_router_command_serves_reloads_and_stops(tmp_path: pathlib.Path) -> None:
    routes = tmp_path / "routes.yaml"
    port = free_port()

    async def main() -> None:
        async with upstream() as up:
            routes.write_text(yaml.safe_dump({"routes": [route("bot", up.url, backends=[("v1", "v1", 100)])]}))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loraops.cli", "router", "--routes", str(routes), "--host", "127.0.0.1",
                "--port", str(port), "--reload-interval", "0.1",
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession() as s:
                    async def ready() -> bool:
                        try:
                            async with s.get(f"{base}/readyz") as resp:
                                return resp.status == 200
                        except aiohttp.ClientConnectionError:
                            return False

                    for _ in range(200):
                        if await ready():
                            break
                        await asyncio.sleep(0.05)
                    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
                    async with s.post(f"{base}/v1/chat/completions", json=body) as resp:
                        assert resp.status == 200 and resp.headers["x-loraops-adapter"] == "v1"
                        assert (await resp.json())["choices"][0]["message"]["content"] == "answer from v1"
                    routes.write_text(yaml.safe_dump({"routes": [route("bot", up.url, backends=[("v2", "v2", 100)])]}))

                    async def adapter() -> str:
                        async with s.post(f"{base}/v1/chat/completions", json=body) as resp:
                            return resp.headers["x-loraops-adapter"]

                    for _ in range(100):
                        if await adapter() == "v2":
                            break
                        await asyncio.sleep(0.05)
                    assert await adapter() == "v2"
                    async with s.get(f"{base}/metrics") as resp:
                        assert 'loraops_router_requests_total{adapter="v2"' in await resp.text()
            finally:
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), 10)
            assert code == 0

    run(main())
