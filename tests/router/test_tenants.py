"""Tenant rules, isolation (allowedTenants, hidden routes), API keys and the bounded tenant metric label."""

# ruff: noqa: SIM117  (one `async with` per layer — upstream, router, client — reads better than one long line)

from __future__ import annotations

import pathlib
from typing import Any

import aiohttp
import pytest

from loraops.api.route import RouteTable
from loraops.router.server import Router, RouterConfig
from loraops.router.sources import StaticSource
from loraops.router.tenants import ApiKeys
from tests.router.fakes import chat, is_openai_error, post, route, router_for, run, sample, upstream, url, wait_for

pytestmark = pytest.mark.router


def tenant_table(base_url: str, mode: str = "base") -> dict[str, Any]:
    entries = [
        {"tenants": ["acme"], "backends": [{"adapter": "acme-v1", "servedName": "acme-v1", "weight": 100}]},
        {
            "backends": [
                {"adapter": "support-v2", "servedName": "support-v2", "weight": 50},
                {"adapter": "acme-v1", "servedName": "acme-v1", "weight": 50},  # a mistake isolation must catch
            ]
        },
    ]
    private = route(
        "acme-only",
        base_url,
        entries=[
            {"tenants": ["acme"], "backends": [{"adapter": "acme-v1", "servedName": "acme-v1", "weight": 100}]},
        ],
    )
    main = route("bot", base_url, entries=entries, allowedTenants={"acme-v1": ["acme"]}, fallback={"mode": mode})
    return {"routes": [main, private]}


def test_tenant_rule_routes_and_other_tenants_never_reach_its_adapter() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(tenant_table(up.url)) as router, aiohttp.ClientSession() as s:
            for i in range(30):
                status, headers, body = await post(
                    s, router, chat("bot"), headers={"X-Tenant-Id": "acme", "X-User-Id": f"a{i}"}
                )
                assert (status, headers["x-loraops-adapter"]) == (200, "acme-v1")
            answered = set()
            for i in range(200):
                status, headers, body = await post(
                    s, router, chat("bot"), headers={"X-Tenant-Id": "globex", "X-User-Id": f"g{i}"}
                )
                assert status == 200
                answered.add(headers["x-loraops-adapter"])
                assert body["model"] != "acme-v1"
                if headers["x-loraops-adapter"] == "base":
                    assert headers["x-loraops-fallback"] == "tenant_not_allowed"
            assert answered == {"support-v2", "base"}
            # The upstream never saw a globex request for acme's adapter: every acme-v1 request was acme's.
            assert up.count("acme-v1") == 30

    run(main())


def test_isolation_in_error_mode_is_403() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(tenant_table(up.url, mode="error")) as router:
            async with aiohttp.ClientSession() as s:
                codes = set()
                for i in range(60):
                    status, _, body = await post(
                        s, router, chat("bot"), headers={"X-Tenant-Id": "globex", "X-User-Id": f"g{i}"}
                    )
                    codes.add(status)
                    if status == 403:
                        assert is_openai_error(body) and body["error"]["type"] == "permission_error"
                assert codes == {200, 403}
                assert up.count("acme-v1") == 0

    run(main())


def test_route_of_one_tenant_is_invisible_to_others() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(tenant_table(up.url)) as router, aiohttp.ClientSession() as s:
            status, _, body = await post(s, router, chat("acme-only"), headers={"X-Tenant-Id": "globex"})
            assert status == 404 and body["error"]["param"] == "model"
            status, _, _ = await post(s, router, chat("acme-only"))
            assert status == 404
            status, _, _ = await post(s, router, chat("acme-only"), headers={"X-Tenant-Id": "acme"})
            assert status == 200
            for tenant, expected in (("acme", {"bot", "acme-only"}), ("globex", {"bot"})):
                async with s.get(url(router, "/v1/models"), headers={"X-Tenant-Id": tenant}) as resp:
                    listed = await resp.json()
                assert {m["id"] for m in listed["data"]} == expected
                assert listed["object"] == "list"

    run(main())


def test_api_key_decides_the_tenant_and_the_header_is_ignored(tmp_path: pathlib.Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("sk-acme: acme\nsk-globex: globex\n")

    async def main() -> None:
        async with upstream() as up:
            table = RouteTable.model_validate(tenant_table(up.url))
            keys = ApiKeys(keys_file)
            router = Router(
                RouterConfig(host="127.0.0.1", port=0, api_keys_refresh_s=0.05), StaticSource(table), api_keys=keys
            )
            await router.start()
            try:
                async with aiohttp.ClientSession() as s:
                    status, headers, _ = await post(
                        s, router, chat("acme-only"), headers={"Authorization": "Bearer sk-acme"}
                    )
                    assert (status, headers["x-loraops-adapter"]) == (200, "acme-v1")
                    # Claiming acme by header with globex's key gets globex's view.
                    status, _, _ = await post(
                        s,
                        router,
                        chat("acme-only"),
                        headers={"Authorization": "Bearer sk-globex", "X-Tenant-Id": "acme"},
                    )
                    assert status == 404
                    for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
                        status, _, body = await post(s, router, chat("bot"), headers=auth)
                        assert status == 401 and is_openai_error(body)
                    # A rotated key file is picked up without a restart.
                    keys_file.write_text("sk-new: acme\n")
                    await wait_for(lambda: keys.tenant("sk-new") == "acme", timeout=5)
                    status, _, _ = await post(s, router, chat("bot"), headers={"Authorization": "Bearer sk-acme"})
                    assert status == 401
            finally:
                await router.stop()

    run(main())


def test_tenant_label_cardinality_is_bounded() -> None:
    async def main() -> None:
        async with upstream() as up, router_for(tenant_table(up.url)) as router, aiohttp.ClientSession() as s:
            for i in range(40):
                await post(s, router, chat("bot"), headers={"X-Tenant-Id": f"random-{i}"})
            await post(s, router, chat("bot"), headers={"X-Tenant-Id": "acme"})
            await post(s, router, chat("bot"))
            from prometheus_client import generate_latest

            text = generate_latest(router.metrics.registry).decode()
            tenants = {
                line.split('tenant="')[1].split('"')[0]
                for line in text.splitlines()
                if line.startswith("loraops_router_requests_total{")
            }
            assert tenants == {"other", "acme", "none"}
            assert sample(router, "loraops_router_requests_total", {"tenant": "other"}) == 40

    run(main())
