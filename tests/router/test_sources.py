"""Route table sources: the routes file (reloaded without dropping in-flight requests) and AdapterRoute status."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import aiohttp
import pytest
import yaml

from loraops.router.sources import FileSource, KubeConnection, KubeSource, table_from_routes
from tests.router.fakes import Behaviour, chat, post, route, router_for, run, sample, upstream, wait_for

pytestmark = pytest.mark.router

REPO = pathlib.Path(__file__).resolve().parents[2]


def write_routes(path: pathlib.Path, routes: list[dict[str, Any]]) -> None:
    # Write-then-rename, as a ConfigMap update does: the router never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"routes": routes}))
    tmp.replace(path)


def test_routes_file_reload_keeps_in_flight_requests(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "routes.yaml"

    async def main() -> None:
        async with upstream(behaviours={"v1": Behaviour(delay_s=1.0)}) as up:
            write_routes(path, [route("bot", up.url, backends=[("v1", "v1", 100)])])
            source = FileSource(path, interval_s=0.05)
            async with router_for(source=source) as router, aiohttp.ClientSession() as s:
                in_flight = [asyncio.create_task(post(s, router, chat("bot"), headers={"X-User-Id": f"u{i}"}))
                             for i in range(20)]
                await wait_for(lambda: up.started == 20)
                write_routes(path, [route("bot", up.url, backends=[("v2", "v2", 100)]),
                                    route("other", up.url)])
                await wait_for(lambda: router.table is not None and "other" in router.table.routes)
                # New requests see the new table while the old ones are still running.
                status, headers, _ = await post(s, router, chat("bot"))
                assert (status, headers["x-loraops-adapter"]) == (200, "v2")
                assert not any(t.done() for t in in_flight)
                results = await asyncio.gather(*in_flight)
                assert [(r[0], r[1]["x-loraops-adapter"]) for r in results] == [(200, "v1")] * 20

                # A broken file is reported and the last good table keeps serving.
                path.write_text("routes: [{model: 3}]\n")
                await wait_for(lambda: sample(router, "loraops_router_table_reloads_total", {"result": "error"}) >= 1)
                status, headers, _ = await post(s, router, chat("bot"))
                assert (status, headers["x-loraops-adapter"]) == (200, "v2")
                path.unlink()
                await wait_for(lambda: sample(router, "loraops_router_table_reloads_total", {"result": "error"}) >= 2)
                assert (await post(s, router, chat("other")))[0] == 200

    run(main())


def traffic(base_url: str, model: str, adapter: str) -> dict[str, Any]:
    return route(model, base_url, backends=[(adapter, adapter, 100)])


def test_table_from_routes_keeps_the_oldest_owner_of_a_model() -> None:
    def obj(ns: str, name: str, created: str, model: str, status: bool = True) -> dict[str, Any]:
        meta = {"namespace": ns, "name": name, "creationTimestamp": created}
        return {"metadata": meta, "status": {"traffic": traffic("http://b", model, name)} if status else {}}

    table, problems = table_from_routes([
        obj("b", "late", "2026-02-01T00:00:00Z", "bot"),
        obj("a", "early", "2026-01-01T00:00:00Z", "bot"),
        obj("a", "pending", "2026-01-01T00:00:00Z", "x", status=False),
        {"metadata": {"namespace": "a", "name": "broken"}, "status": {"traffic": {"model": "y"}}},
    ])
    assert [(r.model, r.entries[0].backends[0].adapter) for r in table.routes] == [("bot", "early")]
    assert any("b/late" in p and "a/early" in p for p in problems)
    assert any("a/broken" in p for p in problems)


def test_kube_source_follows_adapter_route_status(tmp_path: pathlib.Path) -> None:
    from loraops.devmode.apiserver import FakeKubeApi

    with FakeKubeApi(crd_dirs=[REPO / "crds"]) as api:
        api.ensure_namespace("team-a")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-a")
        spec = {"model": "support-bot", "adapter": "support-v1",
                "base": {"deployment": "llama", "service": "llama", "servedModel": "base-model"}}

        async def main() -> None:
            async with upstream() as up:
                api.create("adapterroutes", {"apiVersion": "loraops.io/v1alpha1", "kind": "AdapterRoute",
                                             "metadata": {"name": "support-bot", "namespace": "team-a"},
                                             "spec": spec}, namespace="team-a")
                api.patch("adapterroutes", "team-a", "support-bot",
                          {"status": {"traffic": traffic(up.url, "support-bot", "support-v1")}}, subresource="status")
                source = KubeSource(KubeConnection.load(str(kubeconfig)), ["team-a"], backoff_s=0.1)
                async with router_for(source=source) as router, aiohttp.ClientSession() as s:
                    status, headers, _ = await post(s, router, chat("support-bot"))
                    assert (status, headers["x-loraops-adapter"]) == (200, "support-v1")
                    api.patch("adapterroutes", "team-a", "support-bot",
                              {"status": {"traffic": traffic(up.url, "support-bot", "support-v2")}},
                              subresource="status")
                    await wait_for(lambda: router.table is not None and router.table.routes["support-bot"]
                                   .default.backends[0].target.adapter == "support-v2")  # type: ignore[union-attr]
                    status, headers, _ = await post(s, router, chat("support-bot"))
                    assert (status, headers["x-loraops-adapter"]) == (200, "support-v2")
                    api.delete("adapterroutes", "team-a", "support-bot")
                    await wait_for(lambda: router.table is not None and not router.table.routes)
                    assert (await post(s, router, chat("support-bot")))[0] == 404

        run(main())
