"""The agent against a fake vLLM: verification, limits, idempotence, replacement, deletion, vLLM failures."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
from typing import Any

import aiohttp
import pytest

from loraops.agent.client import AgentClient, AgentError
from tests.agent.support import scrape, uri

pytestmark = [pytest.mark.adapters, pytest.mark.asyncio]


def metric(text: str, sample_name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample != sample_name:
            continue
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if got == want:
            return float(value)
    return 0.0


async def put_raw(url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.put(url, json=body) as response:
        return response.status, await response.text()


async def test_put_downloads_verifies_installs_and_loads(start_agent, fake_vllm, adapter, list_tree) -> None:
    folder, digest = adapter
    running = await start_agent()
    record = await running.client.put("support-v1", uri(folder), digest)

    assert (record.state, record.served_name, record.digest) == ("Loaded", "support-v1", digest)
    assert record.loaded_at is not None and record.size == sum(p.stat().st_size for p in folder.iterdir())
    installed = running.config.adapters_dir / "support-v1" / digest
    assert record.path == str(installed)
    assert fake_vllm.loads() == [{"lora_name": "support-v1", "lora_path": str(installed)}]
    for name in ("adapter_config.json", "adapter_model.safetensors", "loraops-manifest.json"):
        assert (installed / name).read_bytes() == (folder / name).read_bytes()
    assert list_tree(running.config.adapters_dir) == [
        "support-v1",
        f"support-v1/{digest}",
        *sorted(f"support-v1/{digest}/{n}" for n in os.listdir(folder)),
    ]
    listed = await running.client.list()
    assert [r.model_dump() for r in listed] == [record.model_dump()]
    text = await scrape(running.url)
    assert metric(text, "loraops_agent_downloads_total", source="file", result="ok") == 1
    assert metric(text, "loraops_agent_verifications_total", result="ok") == 1
    assert metric(text, "loraops_agent_loads_total", trigger="put", result="ok") == 1
    assert metric(text, "loraops_agent_load_duration_seconds_count") == 1
    assert metric(text, "loraops_agent_adapters_loaded") == 1
    info = {"name": "support-v1", "served_name": "support-v1", "digest": digest[:12], "rank": "8"}
    assert metric(text, "loraops_agent_adapter_info", **info) == 1
    assert metric(text, "loraops_agent_adapter_effective", name="support-v1", served_name="support-v1") == 1


async def test_plain_peft_folder_without_manifest_is_verified_by_the_digest_rule(
    start_agent, fake_vllm, tmp_path, new_adapter
) -> None:
    folder, digest = new_adapter(tmp_path / "trl-output", manifest=False)
    running = await start_agent()
    record = await running.client.put("from-trl", uri(folder), f"sha256:{digest.upper()}")
    assert record.state == "Loaded" and record.digest == digest
    with pytest.raises(AgentError) as refused:
        await running.client.put("from-trl-2", uri(folder), "0" * 64)
    assert (refused.value.status, refused.value.reason) == (422, "DigestMismatch")


async def test_put_is_idempotent_and_concurrent_puts_of_one_name_load_once(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    records = await asyncio.gather(*(running.client.put("a", uri(folder), digest) for _ in range(5)))
    assert {r.digest for r in records} == {digest} and {r.state for r in records} == {"Loaded"}
    assert len(fake_vllm.loads()) == 1
    status, text = await put_raw(f"{running.url}/v1/adapters/a", {"uri": uri(folder), "digest": digest})
    assert status == 200 and json.loads(text)["changed"] is False
    assert len(fake_vllm.loads()) == 1


async def test_tampered_byte_is_refused_never_loaded_and_leaves_nothing(
    start_agent, fake_vllm, adapter, list_tree
) -> None:
    folder, digest = adapter
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("support-v1", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "DigestMismatch")
    assert "adapter_model.safetensors" in refused.value.message
    assert fake_vllm.loads() == []
    assert list_tree(running.config.adapters_dir) == []
    [record] = await running.client.list()
    assert (record.state, record.reason, record.path) == ("Failed", "DigestMismatch", None)
    text = await scrape(running.url)
    assert metric(text, "loraops_agent_verifications_total", result="failed") == 1
    assert metric(text, "loraops_agent_failures_total", reason="DigestMismatch") == 1
    assert metric(text, "loraops_agent_adapters_loaded") == 0


@pytest.mark.parametrize("bad_name", ["../outside.bin", "/etc/passwd", "a/../../b", "sub/./x"])
async def test_manifest_with_unsafe_file_name_is_refused(start_agent, fake_vllm, adapter, list_tree, bad_name) -> None:
    folder, _ = adapter
    manifest_path = folder / "loraops-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][bad_name] = {"sha256": "0" * 64, "size": 1}
    manifest_path.write_text(json.dumps(manifest))
    from loraops_trainer.manifest import hash_directory

    digest, _ = hash_directory(folder)  # the manifest is outside the rule: the digest itself still matches
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("evil", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "UnsafePath")
    assert fake_vllm.loads() == [] and list_tree(running.config.adapters_dir) == []


async def test_symlink_in_the_artifact_is_refused(start_agent, fake_vllm, adapter, tmp_path, list_tree) -> None:
    folder, _ = adapter
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any adapter")
    (folder / "extra.bin").symlink_to(secret)
    from loraops_trainer.manifest import hash_directory

    digest, _ = hash_directory(folder)  # the digest helpers follow the link: only the agent's check stops it
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("linked", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (422, "Symlink")
    assert fake_vllm.loads() == [] and list_tree(running.config.adapters_dir) == []


async def test_size_and_file_count_limits(start_agent, fake_vllm, tmp_path, new_adapter, list_tree) -> None:
    folder, digest = new_adapter(tmp_path / "big", weights_size=64 * 1024)
    running = await start_agent(max_bytes=32 * 1024)
    with pytest.raises(AgentError) as too_large:
        await running.client.put("big", uri(folder), digest)
    assert (too_large.value.status, too_large.value.reason) == (422, "TooLarge")

    small, small_digest = new_adapter(tmp_path / "many", weights_size=16)
    for index in range(5):
        (small / f"shard-{index}.bin").write_bytes(b"x")
    counted = await start_agent(max_files=4, adapters_dir=tmp_path / "other")
    with pytest.raises(AgentError) as too_many:
        await counted.client.put("many", uri(small), small_digest)
    assert (too_many.value.status, too_many.value.reason) == (422, "TooManyFiles")
    assert fake_vllm.loads() == []
    assert list_tree(running.config.adapters_dir) == [] and list_tree(tmp_path / "other") == []


async def test_replace_loads_new_release_under_new_name_then_unloads_old(
    start_agent, fake_vllm, tmp_path, new_adapter
) -> None:
    v1, d1 = new_adapter(tmp_path / "v1", seed=1)
    v2, d2 = new_adapter(tmp_path / "v2", seed=2)
    running = await start_agent()
    first = await running.client.put("support", uri(v1), d1)
    second = await running.client.put("support", uri(v2), d2)

    assert first.served_name == "support" and second.served_name == f"support-{d2[:12]}"
    assert second.digest == d2 and second.state == "Loaded"
    assert [(kind, body["lora_name"]) for kind, body in fake_vllm.calls] == [
        ("load", "support"),
        ("load", f"support-{d2[:12]}"),
        ("unload", "support"),
    ]
    assert not any(body.get("load_inplace") for _, body in fake_vllm.calls)
    assert fake_vllm.adapters == {f"support-{d2[:12]}": second.path}
    assert not (running.config.adapters_dir / "support" / d1).exists()
    assert [r.digest for r in await running.client.list()] == [d2]


async def test_failed_replacement_keeps_the_old_release_serving(start_agent, fake_vllm, tmp_path, new_adapter) -> None:
    v1, d1 = new_adapter(tmp_path / "v1", seed=1)
    v2, d2 = new_adapter(tmp_path / "v2", seed=2)
    (v2 / "adapter_model.safetensors").write_bytes(b"tampered")
    running = await start_agent()
    await running.client.put("support", uri(v1), d1)
    with pytest.raises(AgentError) as refused:
        await running.client.put("support", uri(v2), d2)
    assert refused.value.reason == "DigestMismatch"
    assert refused.value.record is not None and refused.value.record.digest == d1
    [record] = await running.client.list()
    assert (record.digest, record.state, record.served_name) == (d1, "Loaded", "support")
    assert record.message is not None and d2 in record.message
    assert fake_vllm.adapters == {"support": record.path}
    assert sorted(os.listdir(running.config.adapters_dir / "support")) == [d1]


async def test_delete_unloads_and_removes_files(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    await running.client.put("support-v1", uri(folder), digest)
    assert await running.client.delete("support-v1") is True
    assert fake_vllm.calls[-1] == ("unload", {"lora_name": "support-v1"})
    assert fake_vllm.adapters == {}
    assert not (running.config.adapters_dir / "support-v1").exists()
    assert await running.client.list() == []
    assert await running.client.delete("support-v1") is False
    text = await scrape(running.url)
    assert metric(text, "loraops_agent_unloads_total", result="ok") == 1
    assert metric(text, "loraops_agent_adapters_loaded") == 0


@pytest.mark.parametrize(("status", "reason"), [(400, "VllmBadRequest"), (404, "VllmNotFound"), (500, "VllmError")])
async def test_vllm_refusing_the_load_is_a_failure_with_its_reason(
    start_agent, fake_vllm, adapter, list_tree, status, reason
) -> None:
    folder, digest = adapter
    fake_vllm.fail_next_load.append(status)
    running = await start_agent()
    with pytest.raises(AgentError) as refused:
        await running.client.put("support-v1", uri(folder), digest)
    assert (refused.value.status, refused.value.reason) == (502, reason)
    assert f"({status})" in refused.value.message
    [record] = await running.client.list()
    assert (record.state, record.reason) == ("Failed", reason)
    assert list_tree(running.config.adapters_dir / "support-v1") == []
    # A failed record is retried by the next PUT, not answered as a no-op.
    retried = await running.client.put("support-v1", uri(folder), digest)
    assert retried.state == "Loaded" and "support-v1" in fake_vllm.adapters


async def test_vllm_down_put_answers_503_and_the_adapter_loads_when_vllm_is_back(
    start_agent, fake_vllm, adapter, wait_for
) -> None:
    folder, digest = adapter
    await fake_vllm.stop()
    running = await start_agent(watch=True)
    assert await running.client.ready() is False
    with pytest.raises(AgentError) as unavailable:
        await running.client.put("support-v1", uri(folder), digest)
    assert (unavailable.value.status, unavailable.value.reason) == (503, "VllmUnavailable")
    [record] = await running.client.list()
    assert record.state == "Loading" and record.path is not None

    await fake_vllm.start()
    await wait_for(lambda: running.agent.records["support-v1"].state == "Loaded", "adapter loaded after vLLM came up")
    assert fake_vllm.adapters == {"support-v1": record.path}
    await wait_for(lambda: running.agent.ready, "agent ready")
    assert await running.client.ready() is True


async def test_vllm_restart_reloads_every_adapter(start_agent, fake_vllm, tmp_path, new_adapter, wait_for) -> None:
    a, da = new_adapter(tmp_path / "a", seed=1)
    b, db = new_adapter(tmp_path / "b", seed=2)
    running = await start_agent(watch=True)
    await running.client.put("a", uri(a), da)
    await running.client.put("b", uri(b), db)
    await wait_for(lambda: running.agent.ready, "agent ready")
    loaded_before = {name: r.loaded_at for name, r in running.agent.records.items()}

    await fake_vllm.restart()
    await wait_for(lambda: set(fake_vllm.adapters) == {"a", "b"}, "both adapters reloaded")
    await wait_for(lambda: running.agent.ready, "agent ready again")
    records = {r.name: r for r in await running.client.list()}
    assert {n: r.state for n, r in records.items()} == {"a": "Loaded", "b": "Loaded"}
    assert all(records[n].loaded_at >= loaded_before[n] for n in records)  # type: ignore[operator]
    text = await scrape(running.url)
    assert metric(text, "loraops_agent_loads_total", trigger="reload", result="ok") == 2
    assert metric(text, "loraops_agent_vllm_restarts_total") >= 1


async def test_adapter_missing_from_a_healthy_vllm_is_treated_as_lost(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    await running.client.put("support-v1", uri(folder), digest)
    fake_vllm.adapters.clear()  # vLLM answers health but would 404 the adapter: it lost it
    await running.agent.check_vllm()
    assert "support-v1" in fake_vllm.adapters
    assert running.agent.records["support-v1"].state == "Loaded"
    assert [kind for kind, _ in fake_vllm.calls] == ["load", "load"]


async def test_reload_refuses_installed_files_changed_since_verification(
    start_agent, fake_vllm, adapter, list_tree
) -> None:
    folder, digest = adapter
    running = await start_agent()
    record = await running.client.put("support-v1", uri(folder), digest)
    (pathlib.Path(str(record.path)) / "adapter_model.safetensors").write_bytes(b"swapped on the shared volume")
    await fake_vllm.restart()
    await running.agent.check_vllm()
    assert fake_vllm.adapters == {}
    [after] = await running.client.list()
    assert (after.state, after.reason) == ("Failed", "DigestMismatch")
    assert list_tree(running.config.adapters_dir / "support-v1") == []


async def test_adapter_already_in_vllm_from_an_earlier_agent_life_is_adopted(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    path = str(running.config.adapters_dir / "support-v1" / digest)
    fake_vllm.adapters["support-v1"] = path
    record = await running.client.put("support-v1", uri(folder), digest)
    assert record.state == "Loaded"
    assert fake_vllm.adapters == {"support-v1": path}
    assert [kind for kind, _ in fake_vllm.calls] == ["load"]  # answered 400, then adopted from /v1/models


async def test_stale_entry_of_the_same_name_in_vllm_is_replaced_not_loaded_inplace(
    start_agent, fake_vllm, adapter
) -> None:
    folder, digest = adapter
    running = await start_agent()
    fake_vllm.adapters["support-v1"] = "/somewhere/else"
    record = await running.client.put("support-v1", uri(folder), digest)
    assert fake_vllm.adapters == {"support-v1": record.path}
    assert [kind for kind, _ in fake_vllm.calls] == ["load", "unload", "load"]


async def test_bad_requests_are_refused_with_reasons(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    cases: list[tuple[str, str, str, str]] = [
        ("Bad Name", uri(folder), digest, "InvalidName"),
        ("ok", uri(folder), "abc", "InvalidRequest"),
        ("ok", uri(folder), "g" * 64, "InvalidDigest"),
        ("ok", f"ftp://{folder}", digest, "UnsupportedScheme"),
        ("ok", "no-scheme", digest, "InvalidUri"),
        ("ok", "file://relative/path", digest, "InvalidUri"),
        ("ok", f"file://{folder}/../{folder.name}", digest, "InvalidUri"),
    ]
    for name, source, dig, reason in cases:
        status, text = await put_raw(f"{running.url}/v1/adapters/{name}", {"uri": source, "digest": dig})
        assert (status, json.loads(text)["reason"]) == (400, reason), (name, source)
    assert fake_vllm.loads() == []


async def test_credentials_in_the_request_body_are_refused_and_not_echoed(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent()
    secret = "wJalrXUtnFEMI-do-not-echo"
    body: dict[str, Any] = {"uri": uri(folder), "digest": digest, "awsSecretAccessKey": secret}
    status, text = await put_raw(f"{running.url}/v1/adapters/x", body)
    assert status == 400
    assert secret not in text and "awsSecretAccessKey" in text


async def test_served_name_taken_by_another_adapter_is_a_conflict(
    start_agent, fake_vllm, tmp_path, new_adapter
) -> None:
    a, da = new_adapter(tmp_path / "a", seed=1)
    b, db = new_adapter(tmp_path / "b", seed=2)
    running = await start_agent()
    await running.client.put("a", uri(a), da, served_name="shared")
    with pytest.raises(AgentError) as conflict:
        await running.client.put("b", uri(b), db, served_name="shared")
    assert (conflict.value.status, conflict.value.reason) == (409, "ServedNameTaken")
    assert fake_vllm.adapters == {"shared": str(running.config.adapters_dir / "a" / da)}


async def test_pvc_uri_reads_under_the_mount_root(start_agent, fake_vllm, tmp_path, new_adapter) -> None:
    _, digest = new_adapter(tmp_path / "pvc" / "adapters-claim" / "team-a" / "support")
    running = await start_agent()
    record = await running.client.put("support", "pvc://adapters-claim/team-a/support", digest)
    assert record.state == "Loaded"
    with pytest.raises(AgentError) as traversal:
        await running.client.put("other", "pvc://adapters-claim/../../etc", digest)
    assert (traversal.value.status, traversal.value.reason) == (400, "InvalidUri")
    with pytest.raises(AgentError) as unmounted:
        await running.client.put("other", "pvc://not-mounted/x", digest)
    assert (unmounted.value.status, unmounted.value.reason) == (422, "SourceNotFound")


async def test_file_roots_restrict_file_uris(start_agent, fake_vllm, adapter, tmp_path) -> None:
    folder, digest = adapter
    running = await start_agent(file_roots=[tmp_path / "allowed"])
    with pytest.raises(AgentError) as forbidden:
        await running.client.put("support-v1", uri(folder), digest)
    assert (forbidden.value.status, forbidden.value.reason) == (400, "ForbiddenPath")


async def test_token_is_required_when_configured(start_agent, fake_vllm, adapter) -> None:
    folder, digest = adapter
    running = await start_agent(token="s3cret-token")
    assert (await running.client.put("support-v1", uri(folder), digest)).state == "Loaded"
    async with AgentClient(running.url) as anonymous:
        with pytest.raises(AgentError) as denied:
            await anonymous.list()
        assert (denied.value.status, denied.value.reason) == (401, "Unauthorized")
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/readyz") as response:
        # Probes stay open for the kubelet: not ready (vLLM not checked yet), but not 401 either.
        assert response.status == 503 and (await response.json())["ready"] is False


async def test_client_reports_an_unreachable_agent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AgentClient(f"http://127.0.0.1:{port}", timeout=5) as client:
        with pytest.raises(AgentError) as unreachable:
            await client.list()
    assert (unreachable.value.status, unreachable.value.reason) == (0, "AgentUnavailable")


async def test_stale_staging_folders_are_removed_at_start(start_agent, fake_vllm, tmp_path) -> None:
    leftover = tmp_path / "adapters" / ".staging-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "partial.bin").write_bytes(b"half a download")
    await start_agent()
    assert not leftover.exists()


async def test_record_carries_the_manifest_base_model_for_the_operator_check(
    start_agent, new_adapter, tmp_path
) -> None:
    from loraops_trainer.manifest import build_manifest, write_manifest

    folder, digest = new_adapter(tmp_path / "trained")
    # The manifest is outside the digest rule: restating what it says leaves the pinned digest as it is.
    write_manifest(
        folder, build_manifest(folder, kind="adapter", merge_state="unmerged", baseModel={"name": "org/base-x"})
    )
    plain, plain_digest = new_adapter(tmp_path / "plain", manifest=False)
    running = await start_agent()
    trained = await running.client.put("trained", uri(folder), digest)
    untracked = await running.client.put("plain", uri(plain), plain_digest)
    assert trained.manifest_base_model == "org/base-x"
    assert untracked.manifest_base_model is None
