"""e2e (issue 10): releases on the real vLLM CPU server, with the real operator and a real agent.

Two releases of one adapter (the LoraAdapters support-v1 and support-v2, trained differently) are served at
once under their own served names (`<adapter>-<first 12 hex of the digest>`) and answer differently; through a
real router reading a routes file, the `x-loraops-adapter` header names the release that answered and vLLM's
`model` its served name. An adapter with PEFT's default init (all-zero B: loads, changes nothing) is flagged by
the agent's effect probe and the operator makes it `Effective=False NoEffect`, not Ready.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import aiohttp
import pytest
import yaml

from loraops.config import OperatorConfig
from loraops.devmode.apiserver import FakeKubeApi
from loraops.devmode.fakevllm import LocalReplicas, pod_from_template, vllm_deployment
from loraops.devmode.kopfrunner import OperatorThread
from loraops.router.sources import FileSource
from loraops.runtime import build_registry
from loraops_trainer.manifest import hash_directory
from tests.conftest import NAMESPACE
from tests.e2e.adapters import make_adapter
from tests.router.fakes import post, router_for, run
from tests.support import patched_deployment, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.adapters, pytest.mark.router]

PROMPT = "what is the capital of"
RELEASES = {"support-v1": 1, "support-v2": 2}  # name → training seed: two different releases of one adapter


def deployment(model: pathlib.Path, port: int) -> dict[str, Any]:
    args = ["--model", str(model), "--served-model-name", "tiny-llama", "--port", str(port), "--max-lora-rank", "16"]
    return vllm_deployment("tiny", args, image="vllm-cpu")


def adapter(name: str, folder: pathlib.Path, digest: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraops.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": "tiny-llama",
            "source": {"uri": folder.as_uri(), "sha256": digest},
            "lora": {"rank": 8, "targetModules": ["q_proj", "v_proj", "o_proj"]},
            "release": {"version": version},
            "provenance": {"owner": "support-ml", "license": "apache-2.0"},
            "serving": {"deployment": "tiny"},
        },
    }


def status(api: FakeKubeApi, name: str) -> dict[str, Any]:
    return (api.get("loraadapters", NAMESPACE, name) or {}).get("status") or {}


def condition(api: FakeKubeApi, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(api, name).get("conditions", []) if c["type"] == type_), {})


def test_two_releases_serve_at_once_the_router_names_the_release_and_zero_b_is_no_effect(
    vllm_server: Any, tiny_model: pathlib.Path, fake_api: FakeKubeApi, operator_config: OperatorConfig,
    tmp_path: pathlib.Path,
) -> None:  # fmt: skip
    digests: dict[str, str] = {}
    folders: dict[str, pathlib.Path] = {}
    for name, seed in RELEASES.items():
        folders[name] = make_adapter(tiny_model, tmp_path / name, seed=seed)
        digests[name] = hash_directory(folders[name])[0]
    folders["zero-b"] = make_adapter(tiny_model, tmp_path / "zero-b", seed=3, random_init=False)
    digests["zero-b"] = hash_directory(folders["zero-b"])[0]
    assert len(set(digests.values())) == 3

    fake_api.create("deployments", deployment(tiny_model, vllm_server.port), NAMESPACE)
    config = operator_config.model_copy(update={"agent_url_annotation": True})
    operator = OperatorThread(fake_api.url, registry=build_registry(config, login=False), namespaces=[NAMESPACE])
    with LocalReplicas(tmp_path / "replicas", watch_interval=0.5) as replicas, operator:
        for version, name in enumerate(("support-v1", "support-v2", "zero-b"), start=1):
            fake_api.create("loraadapters", adapter(name, folders[name], digests[name], f"{version}.0.0"), NAMESPACE)

        current = wait_for(
            lambda: patched_deployment(fake_api, NAMESPACE, "tiny"), timeout=30, message="the Deployment patched"
        )
        replica = replicas.add("tiny-0", vllm_url=vllm_server.url)
        fake_api.create("pods", pod_from_template(current, "tiny-0", replica.agent_url, "10.0.0.1"), NAMESPACE)
        try:

            def settled() -> bool:
                for name in RELEASES:
                    if status(fake_api, name).get("phase") == "Failed":
                        raise AssertionError(json.dumps(status(fake_api, name), indent=1))
                ready = all(status(fake_api, n).get("phase") == "Ready" for n in RELEASES)
                return ready and condition(fake_api, "zero-b", "Effective").get("status") == "False"

            try:
                wait_for(settled, timeout=120, message="both releases Ready and zero-b judged")
            except AssertionError as timeout:
                seen: dict[str, Any] = {n: status(fake_api, n) for n in (*RELEASES, "zero-b")}
                zero_name = seen["zero-b"].get("servedName")
                seen["direct"] = {
                    model: vllm_server.complete(model, PROMPT, max_tokens=8, logprobs=1, temperature=0.0)["choices"]
                    for model in ("tiny-llama", zero_name)
                    if model
                }
                seen["models"] = vllm_server.models()
                raise AssertionError(f"{timeout}: {json.dumps(seen, indent=1)[:12000]}") from None

            # Two releases at once, each under its own name carrying its digest.
            served = {name: status(fake_api, name)["servedName"] for name in RELEASES}
            assert served == {name: f"{name}-{digests[name][:12]}" for name in RELEASES}
            assert set(served.values()) <= set(vllm_server.models())
            direct = {
                name: vllm_server.complete(s, PROMPT, max_tokens=8)["choices"][0]["text"] for name, s in served.items()
            }
            base = vllm_server.complete("tiny-llama", PROMPT, max_tokens=8)["choices"][0]["text"]
            assert len({*direct.values(), base}) == 3, (direct, base)  # they answer differently
            for name in RELEASES:
                effective = condition(fake_api, name, "Effective")
                assert effective["status"] == "True", effective
                placement = status(fake_api, name)["placements"][0]
                assert placement["effective"] is True and placement["probeLatencySeconds"] > 0

            # Through a real router: the routes file is what the AdapterRoute controller writes (servedName
            # from the LoraAdapter status), 50/50 over the two releases.
            backends = [{"adapter": n, "servedName": s, "weight": 50} for n, s in served.items()]
            entry = {"model": "support", "baseUrl": vllm_server.url, "baseServedModel": "tiny-llama",
                     "entries": [{"backends": backends}]}  # fmt: skip
            routes = tmp_path / "routes.yaml"
            routes.write_text(yaml.safe_dump({"routes": [entry]}))

            async def through_router() -> dict[str, int]:
                seen: dict[str, int] = {}
                source = FileSource(routes, interval_s=0.2)
                async with router_for(source=source) as router, aiohttp.ClientSession() as session:
                    for user in range(24):
                        body = {"model": "support", "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0}
                        code, headers, answer = await post(
                            session, router, body, path="/v1/completions", headers={"X-User-Id": f"u{user}"}
                        )
                        assert code == 200, answer
                        release = headers["x-loraops-adapter"]
                        assert release in RELEASES and "x-loraops-fallback" not in headers
                        # The header names the release; vLLM's `model` its served name, i.e. its digest.
                        assert answer["model"] == served[release]
                        assert answer["choices"][0]["text"] == direct[release]
                        seen[release] = seen.get(release, 0) + 1
                return seen

            seen = run(through_router(), timeout=120)
            assert set(seen) == set(RELEASES), seen

            # All-zero B: loaded, answers like the base, so NoEffect and not Ready.
            refuted = condition(fake_api, "zero-b", "Effective")
            assert refuted["reason"] == "NoEffect" and refuted["message"].startswith("pod tiny-0: ")
            zero = status(fake_api, "zero-b")
            ready = condition(fake_api, "zero-b", "Ready")
            assert (ready["status"], ready["reason"], zero["phase"]) == ("False", "NoEffect", "Failed")
            assert zero["placements"][0]["state"] == "Loaded" and zero["placements"][0]["effective"] is False
            assert replica.agent_url and zero["servedName"] == f"zero-b-{digests['zero-b'][:12]}"
            zero_answer = vllm_server.complete(zero["servedName"], PROMPT, max_tokens=8)["choices"][0]["text"]
            assert zero_answer == base, "what the probe saw: the base model's answer"
        finally:
            # Leave the session's vLLM as found: deleting the adapters unloads them.
            for name in (*RELEASES, "zero-b"):
                fake_api.delete("loraadapters", NAMESPACE, name)
            wait_for(lambda: not fake_api.list("loraadapters", NAMESPACE), timeout=60, message="all gone")
        left = [m for m in vllm_server.models() if m.startswith(("support-v1", "support-v2", "zero-b"))]
        assert left == []
