"""Router overhead: the same load against a fast fake upstream, direct and through `loraops router`.

Three processes, so that none shares a GIL with another: the fake upstream (aiohttp + uvloop, answers after a
fixed simulated model latency), the router (the real `loraops router --routes FILE` command), and the load
generator (closed loop: `concurrency` workers, each sends its next request when the previous one is done).
Every configuration runs direct and through the router back to back, for the same time, so the ratios are
taken under the same conditions. Added latency = router percentile − direct percentile.

Then (unless LORAOPS_BENCH_VLLM=0, or without vllm installed) the TTFT overhead on the real vLLM CPU server
at concurrency 8, streaming, with the tiny test model.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from loraops.devmode.vllm import free_port

PY = sys.executable
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
UPSTREAM_DELAY_MS = float(os.environ.get("LORAOPS_BENCH_UPSTREAM_MS", "50"))
DURATION_S = float(os.environ.get("LORAOPS_BENCH_SECONDS", "6"))
"""Measured seconds per side and configuration, split into ROUNDS alternating slices."""
ROUNDS = 3
SLICE_WARMUP_S = 0.5
CONCURRENCY = (1, 16, 100)
STREAM_CHUNKS = 16


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# ---- the fake upstream (runs as `python bench/bench_router.py upstream PORT DELAY_MS`) ----


def serve_upstream(port: int, delay_ms: float) -> None:
    import uvloop
    from aiohttp import web

    delay = delay_ms / 1000.0

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        await asyncio.sleep(delay)
        if not body.get("stream"):
            payload = {
                "id": "cmpl-bench",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "x " * 16}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 8, "total_tokens": 24, "completion_tokens": 16},
            }
            return web.json_response(payload)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # The delay above is the time to first token; the rest of the tokens follow back to back.
        for i in range(STREAM_CHUNKS):
            event = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": "x "}, "finish_reason": None}],
                "i": i,
            }
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 8, "total_tokens": 24, "completion_tokens": 16},
            }
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=2048)


# ---- the load generator (runs as `python bench/bench_router.py load SPEC_JSON`) ----


async def _slice(pool: Any, body: bytes, concurrency: int, seconds: float, stream: bool, out: dict[str, Any]) -> None:
    """One closed-loop slice: `concurrency` workers for `seconds` after a short warm-up of the same load.

    The client is the router's own lean HTTP/1.1 pool: a load generator must cost as little CPU as possible on
    a 2-core machine, or it measures its own contention with the processes under test."""
    path = pool.path
    warm_until = time.perf_counter() + SLICE_WARMUP_S
    stop_at = warm_until + seconds

    async def worker(i: int) -> None:
        headers = {"X-User-Id": f"u{i}"}
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                resp = await pool.post(path, body, headers)
                if stream:
                    chunk = await resp.read_chunk()
                    t_first = time.perf_counter()
                    while chunk:
                        chunk = await resp.read_chunk()
                else:
                    await resp.read()
                    t_first = time.perf_counter()
                ok = resp.status == 200
            except OSError:
                ok, t_first = False, time.perf_counter()
            t1 = time.perf_counter()
            if t0 >= warm_until and t1 <= stop_at:
                if ok:
                    out["latencies"].append(t1 - t0)
                    out["ttfts"].append(t_first - t0)
                else:
                    out["errors"] += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    out["seconds"] += seconds


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    """Alternate short slices direct / router so that background load (other processes on a shared machine)
    hits both sides alike; figures are pooled per side."""
    import urllib.parse

    from loraops.router.http1 import Pool

    results: dict[str, Any] = {}
    pools = {}
    for side, target in spec["targets"].items():
        parts = urllib.parse.urlsplit(target["url"])
        pool = Pool(f"{parts.scheme}://{parts.netloc}", keepalive_s=60)
        pool.path = parts.path  # type: ignore[attr-defined]
        pools[side] = pool
        results[side] = {"latencies": [], "ttfts": [], "errors": 0, "seconds": 0.0}
    try:
        for _ in range(spec["rounds"]):
            for side, target in spec["targets"].items():
                body = json.dumps({"model": target["model"], "messages": [{"role": "user", "content": "hello"}],
                                   "max_tokens": 16, "stream": spec["stream"]}).encode()
                if "cpu_pid" in target:
                    before = cpu_seconds(target["cpu_pid"])
                await _slice(pools[side], body, spec["concurrency"], spec["slice_s"], spec["stream"], results[side])
                if "cpu_pid" in target:
                    results[side]["cpu_s"] = results[side].get("cpu_s", 0.0) + cpu_seconds(target["cpu_pid"]) - before
    finally:
        for pool in pools.values():
            pool.close()
    return results


def run_load(spec_json: str) -> None:
    import uvloop

    uvloop.install()
    json.dump(asyncio.run(_load(json.loads(spec_json))), sys.stdout)


# ---- the orchestration ----


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(raw: dict[str, Any]) -> dict[str, Any]:
    lat = raw["latencies"]
    out = {
        "requests": len(lat),
        "errors": raw["errors"],
        "rps": len(lat) / raw["seconds"],
        "p50_ms": _percentile(lat, 0.5) * 1000,
        "p99_ms": _percentile(lat, 0.99) * 1000,
        "ttft_p50_ms": _percentile(raw["ttfts"], 0.5) * 1000,
        "ttft_p99_ms": _percentile(raw["ttfts"], 0.99) * 1000,
    }
    if "cpu_s" in raw and lat:
        # CPU time includes the warm-up requests, which are not counted: a slight overestimate.
        warm_share = 1 + SLICE_WARMUP_S / (raw["seconds"] / max(1, ROUNDS))
        out["router_cpu_us_per_request"] = raw["cpu_s"] / (len(lat) * warm_share) * 1e6
    return out


def _measure_pair(
    direct: tuple[str, str], routed: tuple[str, str], concurrency: int, stream: bool, router_pid: int
) -> dict[str, Any]:
    spec = {
        "concurrency": concurrency,
        "stream": stream,
        "rounds": ROUNDS,
        "slice_s": DURATION_S / ROUNDS,
        "targets": {
            "direct": {"url": direct[0], "model": direct[1]},
            "router": {"url": routed[0], "model": routed[1], "cpu_pid": router_pid},
        },
    }
    out = subprocess.run([PY, __file__, "load", json.dumps(spec)], capture_output=True, text=True, check=True, cwd=ROOT)
    raw = json.loads(out.stdout)
    return _compare(_summary(raw["direct"]), _summary(raw["router"]))


def _compare(direct: dict[str, Any], routed: dict[str, Any]) -> dict[str, Any]:
    return {
        "added_p50_ms": round(routed["p50_ms"] - direct["p50_ms"], 3),
        "added_p99_ms": round(routed["p99_ms"] - direct["p99_ms"], 3),
        "added_ttft_p50_ms": round(routed["ttft_p50_ms"] - direct["ttft_p50_ms"], 3),
        "throughput_ratio": round(routed["rps"] / direct["rps"], 4) if direct["rps"] else None,
        "direct": {k: round(v, 3) if isinstance(v, float) else v for k, v in direct.items()},
        "router": {k: round(v, 3) if isinstance(v, float) else v for k, v in routed.items()},
    }


def _start_router(routes: dict[str, Any], workdir: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    path = workdir / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    port = free_port()
    proc = subprocess.Popen(
        [
            str(pathlib.Path(PY).parent / "loraops"),
            "router",
            "--routes",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    _wait_port(port)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fake_upstream_run(workdir: pathlib.Path, delay_ms: float, configs: list[tuple[bool, int]]) -> dict[str, Any]:
    up_port = free_port()
    upstream = subprocess.Popen([PY, __file__, "upstream", str(up_port), str(delay_ms)], cwd=ROOT)
    router: subprocess.Popen[bytes] | None = None
    try:
        _wait_port(up_port)
        base = f"http://127.0.0.1:{up_port}"
        # A canary split, as in production: selection and tenant logic run on every request.
        routes = {
            "routes": [
                {
                    "model": "bot",
                    "baseUrl": base,
                    "baseServedModel": "base-model",
                    "entries": [
                        {
                            "backends": [
                                {"adapter": "stable", "servedName": "stable", "weight": 90},
                                {"adapter": "canary", "servedName": "canary", "weight": 10},
                            ]
                        }
                    ],
                }
            ]
        }
        router, router_port = _start_router(routes, workdir)
        results: dict[str, Any] = {}
        for stream, concurrency in configs:
            key = f"{'stream' if stream else 'nonstream'}_c{concurrency}"
            results[key] = _measure_pair(
                (f"{base}/v1/chat/completions", "stable"),
                (f"http://127.0.0.1:{router_port}/v1/chat/completions", "bot"),
                concurrency,
                stream,
                router.pid,
            )
            print(
                f"  {key}: {json.dumps({k: v for k, v in results[key].items() if k not in ('direct', 'router')})}",
                file=sys.stderr,
            )
        return results
    finally:
        if router is not None:
            _stop(router)
        _stop(upstream)


def run() -> dict[str, Any]:
    configs = [(stream, c) for stream in (False, True) for c in CONCURRENCY]
    with tempfile.TemporaryDirectory() as tmp:
        runs = _fake_upstream_run(pathlib.Path(tmp), UPSTREAM_DELAY_MS, configs)
        # With no simulated model time, c=1 shows the router's own per-request cost without timer noise.
        instant = _fake_upstream_run(pathlib.Path(tmp), 0.0, [(False, 1), (True, 1)])
    headline = runs["nonstream_c100"]
    result: dict[str, Any] = {
        "concurrency": 100,
        "added_p50_ms": headline["added_p50_ms"],
        "added_p99_ms": headline["added_p99_ms"],
        "throughput_ratio": headline["throughput_ratio"],
        "stream_c100": {
            k: runs["stream_c100"][k] for k in ("added_p50_ms", "added_p99_ms", "added_ttft_p50_ms", "throughput_ratio")
        },
        "targets": {"added_p50_ms": 1.0, "added_p99_ms": 3.0, "throughput_ratio": 0.9},
        "setup": {
            "upstream": f"aiohttp+uvloop fake, {UPSTREAM_DELAY_MS:g} ms simulated model latency "
            f"(streams: that time to the first token, then {STREAM_CHUNKS} chunks back to back)",
            "seconds_per_measurement": DURATION_S,
            "rounds": ROUNDS,
            "slice_warmup_seconds": SLICE_WARMUP_S,
            "load": "closed loop, separate process, uvloop + the router's lean HTTP/1.1 keep-alive client; "
            "direct and router alternate in slices within one run",
            "router": "loraops router --routes FILE (separate process, uvloop), 90/10 canary split",
            "cpus": os.cpu_count(),
        },
        "runs": runs,
        "zero_latency_upstream_c1": instant,
        "router_cpu_us_per_request_c100": runs["nonstream_c100"]["router"]["router_cpu_us_per_request"],
    }
    if os.environ.get("LORAOPS_BENCH_VLLM", "1") == "1":
        try:
            import vllm  # noqa: F401
        except ImportError:
            result["vllm_ttft_c8"] = "skipped: vllm is not installed"
        else:
            result["vllm_ttft_c8"] = _vllm_ttft()
    return result


def _vllm_ttft() -> dict[str, Any]:
    """TTFT overhead on the real vLLM CPU server (tiny model) at concurrency 8, streaming."""
    from loraops.devmode.vllm import VllmOptions, VllmServer
    from loraops_trainer.testing import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llama(pathlib.Path(tmp) / "model")
        vllm = VllmServer(VllmOptions(model=model, served_name="tiny-llama"), log_path=pathlib.Path(tmp) / "vllm.log")
        vllm.start(timeout=300)
        router: subprocess.Popen[bytes] | None = None
        try:
            routes = {
                "routes": [
                    {
                        "model": "bot",
                        "baseUrl": vllm.url,
                        "baseServedModel": "tiny-llama",
                        "entries": [{"backends": [{"servedName": "tiny-llama", "weight": 100}]}],
                    }
                ]
            }
            router, port = _start_router(routes, pathlib.Path(tmp))
            pair = _measure_pair(
                (f"{vllm.url}/v1/chat/completions", "tiny-llama"),
                (f"http://127.0.0.1:{port}/v1/chat/completions", "bot"),
                8,
                True,
                router.pid,
            )
            return {"concurrency": 8, "stream": True, **pair}
        finally:
            if router is not None:
                _stop(router)
            vllm.stop()


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        serve_upstream(int(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1] == "load":
        run_load(sys.argv[2])
