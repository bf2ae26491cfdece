"""The fake Kubernetes API: apiserver semantics over HTTP, the python client, kubectl and real kopf."""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import kubernetes
import pytest

from loraops.devmode import kstore
from loraops.devmode.apiserver import FakeKubeApi, load_crd_documents, serve
from loraops.devmode.kopfrunner import OperatorThread, load_registry
from tests import support

pytestmark = pytest.mark.fakeapi

REPO = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }
        ],
    },
}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def call(
    api: FakeKubeApi, method: str, path: str, body: Any = None, ctype: str = "application/json", accept: str = ""
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": ctype, "Accept": accept or "application/json"}
    request = urllib.request.Request(api.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            is_json = "json" in response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if is_json else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def watch(api: FakeKubeApi, path: str) -> list[dict[str, Any]]:
    """All events of a watch that the server ends by itself (the query must carry timeoutSeconds)."""
    with urllib.request.urlopen(api.url + path, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        return [json.loads(line) for line in response if line.strip()]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """tests.support.wait_for with this module's longer default (kopf against the fake API under load)."""
    return support.wait_for(check, timeout=timeout, message=what)


@pytest.fixture(scope="module")
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi([CRD]) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKubeApi, tmp_path: pathlib.Path) -> pathlib.Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


# --- discovery and routing --------------------------------------------------------------------------


def test_discovery_documents(api: FakeKubeApi) -> None:
    assert call(api, "GET", "/api")[1]["versions"] == ["v1"]
    core = call(api, "GET", "/api/v1")[1]
    assert core["groupVersion"] == "v1"
    pods_status = next(r for r in core["resources"] if r["name"] == "pods/status")
    assert "shortNames" not in pods_status
    groups = call(api, "GET", "/apis")[1]
    assert call(api, "GET", "/apis/")[1] == groups
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "batch", "coordination.k8s.io", "discovery.k8s.io", "example.com"} <= names
    assert call(api, "GET", "/apis/example.com")[1]["preferredVersion"]["groupVersion"] == "example.com/v1"
    served = {r["name"]: r for r in call(api, "GET", "/apis/example.com/v1")[1]["resources"]}
    assert served["widgets"]["shortNames"] == ["wd"] and served["widgets"]["namespaced"]
    assert "widgets/status" in served
    assert call(api, "GET", "/apis/nope.example.com/v1")[0] == 404


def test_namespace_paths_and_lists(api: FakeKubeApi) -> None:
    assert call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "paths"}})[0] == 201
    status, listing = call(api, "GET", "/api/v1/namespaces")
    assert status == 200 and listing["kind"] == "NamespaceList" and listing["apiVersion"] == "v1"
    assert "paths" in {n["metadata"]["name"] for n in listing["items"]}
    assert call(api, "GET", "/api/v1/namespaces/paths")[1]["metadata"]["name"] == "paths"
    assert call(api, "GET", "/api/v1/namespaces/paths/status")[0] == 200
    call(api, "POST", "/api/v1/namespaces/paths/configmaps", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    cms = call(api, "GET", "/api/v1/namespaces/paths/configmaps")[1]
    assert cms["kind"] == "ConfigMapList" and [c["metadata"]["namespace"] for c in cms["items"]] == ["paths"]


def test_put_replaces_and_protobuf_is_refused(api: FakeKubeApi) -> None:
    created = call(api, "POST", WIDGETS, widget("put-me", size=1))[1]
    created["spec"] = {"size": 2}
    status, replaced = call(api, "PUT", f"{WIDGETS}/put-me", created)
    assert status == 200 and replaced["spec"] == {"size": 2} and replaced["metadata"]["generation"] == 2
    status, body = call(api, "POST", WIDGETS, b"\x6b\x38\x73\x00", ctype="application/vnd.kubernetes.protobuf")
    assert status == 415 and body["kind"] == "Status"


# --- object semantics -------------------------------------------------------------------------------


def test_metadata_generation_and_status_isolation(api: FakeKubeApi) -> None:
    status, obj = call(api, "POST", WIDGETS, {**widget("gen", size=1), "status": {"phase": "forged"}})
    meta = obj["metadata"]
    assert status == 201 and meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert "status" not in obj, "POST must not write status when status is a subresource"
    rv0 = int(meta["resourceVersion"])

    obj = call(api, "PATCH", f"{WIDGETS}/gen", {"metadata": {"labels": {"x": "y"}}}, "application/merge-patch+json")[1]
    assert obj["metadata"]["generation"] == 1 and int(obj["metadata"]["resourceVersion"]) > rv0

    obj = call(api, "PATCH", f"{WIDGETS}/gen", {"spec": {"size": 2}}, "application/merge-patch+json")[1]
    assert obj["metadata"]["generation"] == 2

    patch = {"spec": {"size": 99}, "status": {"phase": "Ready"}}
    obj = call(api, "PATCH", f"{WIDGETS}/gen/status", patch, "application/merge-patch+json")[1]
    assert obj["status"] == {"phase": "Ready"} and obj["spec"] == {"size": 2} and obj["metadata"]["generation"] == 2

    obj = call(api, "PATCH", f"{WIDGETS}/gen", {"status": {"phase": "Hacked"}}, "application/merge-patch+json")[1]
    assert obj["status"] == {"phase": "Ready"}

    rv = obj["metadata"]["resourceVersion"]
    same = call(api, "PATCH", f"{WIDGETS}/gen", {"spec": {"size": 2}}, "application/merge-patch+json")[1]
    assert same["metadata"]["resourceVersion"] == rv, "a no-op patch must not bump resourceVersion"
    assert watch(api, f"{WIDGETS}?watch=true&resourceVersion={rv}&timeoutSeconds=1") == []
    replayed = watch(
        api, f"{WIDGETS}?watch=true&resourceVersion={rv0}&timeoutSeconds=1&fieldSelector=metadata.name%3Dgen"
    )
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in replayed]
    assert len(versions) == 3 and versions == sorted(set(versions)), "each event keeps its own resourceVersion"


def test_generate_name_retries_on_clash(api: FakeKubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    first = call(api, "POST", WIDGETS, {"metadata": {"generateName": "gen-"}, "spec": {}})[1]
    second = call(api, "POST", WIDGETS, {"metadata": {"generateName": "gen-"}, "spec": {}})[1]
    assert first["metadata"]["name"].startswith("gen-") and len(first["metadata"]["name"]) == 9
    assert first["metadata"]["name"] != second["metadata"]["name"]

    call(api, "POST", WIDGETS, widget("clash-bbbbb"))
    letters = iter("bbbbb" + "ccccc")

    class Rigged:
        @staticmethod
        def choice(_: str) -> str:
            return next(letters)

    monkeypatch.setattr(kstore, "secrets", Rigged)
    status, third = call(api, "POST", WIDGETS, {"metadata": {"generateName": "clash-"}})
    assert status == 201 and third["metadata"]["name"] == "clash-ccccc"


def test_label_and_field_selectors_on_list(api: FakeKubeApi) -> None:
    ns = "/apis/example.com/v1/namespaces/sel/widgets"
    for name, tier in (("a", "gold"), ("b", "silver"), ("c", None)):
        labels = {"tier": tier} if tier else {}
        call(api, "POST", ns, {"metadata": {"name": name, "labels": labels}, "spec": {}})

    def names(query: str) -> list[str]:
        return [o["metadata"]["name"] for o in call(api, "GET", f"{ns}?{query}")[1]["items"]]

    assert names("labelSelector=tier%3Dgold") == ["a"]
    assert names("labelSelector=tier!%3Dgold") == ["b", "c"]
    assert names("labelSelector=tier%20in%20(gold,silver)") == ["a", "b"]
    assert names("labelSelector=!tier") == ["c"]
    assert names("labelSelector=tier") == ["a", "b"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names("fieldSelector=metadata.name!%3Db") == ["a", "c"]
    assert call(api, "GET", f"{ns}?labelSelector=%3D%3D%3D")[0] == 400


def test_selector_watch_sees_objects_enter_and_leave(api: FakeKubeApi) -> None:
    ns = "/apis/example.com/v1/namespaces/selw/widgets"
    call(api, "POST", ns, {"metadata": {"name": "w", "labels": {"tier": "bronze"}}, "spec": {}})
    since = call(api, "GET", ns)[1]["metadata"]["resourceVersion"]
    for tier in ("gold", "gold2", "bronze"):
        body = {"metadata": {"labels": {"tier": tier}}}
        call(api, "PATCH", f"{ns}/w", body, "application/merge-patch+json")
    call(api, "PATCH", f"{ns}/w", {"metadata": {"labels": {"tier": "gold"}}}, "application/merge-patch+json")
    call(api, "PATCH", f"{ns}/w", {"spec": {"size": 1}}, "application/merge-patch+json")
    call(api, "DELETE", f"{ns}/w")
    events = watch(api, f"{ns}?watch=true&resourceVersion={since}&timeoutSeconds=1&labelSelector=tier%3Dgold")
    assert [e["type"] for e in events] == ["ADDED", "DELETED", "ADDED", "MODIFIED", "DELETED"]


def test_watch_resume_initial_events_and_expiry() -> None:
    with FakeKubeApi([CRD], event_log_limit=3) as api:
        call(api, "POST", WIDGETS, widget("r1"))
        listed = call(api, "GET", WIDGETS)[1]["metadata"]["resourceVersion"]
        call(api, "PATCH", f"{WIDGETS}/r1", {"spec": {"size": 5}}, "application/merge-patch+json")
        resumed = watch(api, f"{WIDGETS}?watch=true&resourceVersion={listed}&timeoutSeconds=1")
        assert [(e["type"], e["object"]["spec"]) for e in resumed] == [("MODIFIED", {"size": 5})]

        initial = watch(
            api,
            f"{WIDGETS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
            "&allowWatchBookmarks=true&timeoutSeconds=1",
        )
        assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
        assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

        for size in range(6, 10):
            call(api, "PATCH", f"{WIDGETS}/r1", {"spec": {"size": size}}, "application/merge-patch+json")
        expired = watch(api, f"{WIDGETS}?watch=true&resourceVersion={listed}&timeoutSeconds=1")
        assert [(e["type"], e["object"]["code"]) for e in expired] == [("ERROR", 410)]


def test_live_watch_streams_changes(api: FakeKubeApi) -> None:
    ns = "/apis/example.com/v1/namespaces/live/widgets"
    events: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: events.extend(watch(api, f"{ns}?watch=true&timeoutSeconds=3")))
    reader.start()
    wait_for(lambda: api.request_count("GET", r"/live/widgets\?watch=true"), "the watch request")
    call(api, "POST", ns, widget("lw"))
    call(api, "DELETE", f"{ns}/lw")
    reader.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "lw"), ("DELETED", "lw")]


def test_finalizers_hold_deletion(api: FakeKubeApi) -> None:
    body = {**widget("fin"), "metadata": {"name": "fin", "finalizers": ["example.com/hold"]}}
    since = call(api, "POST", WIDGETS, body)[1]["metadata"]["resourceVersion"]
    status, marked = call(api, "DELETE", f"{WIDGETS}/fin")
    assert status == 200 and marked["metadata"]["deletionTimestamp"]
    again = call(api, "DELETE", f"{WIDGETS}/fin")[1]
    assert again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    assert call(api, "GET", f"{WIDGETS}/fin")[0] == 200
    release = [{"op": "remove", "path": "/metadata/finalizers/0"}]
    assert call(api, "PATCH", f"{WIDGETS}/fin", release, "application/json-patch+json")[0] == 200
    assert call(api, "GET", f"{WIDGETS}/fin")[0] == 404
    events = watch(
        api, f"{WIDGETS}?watch=true&resourceVersion={since}&timeoutSeconds=1&fieldSelector=metadata.name%3Dfin"
    )
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_optimistic_concurrency_and_failed_test_op(api: FakeKubeApi) -> None:
    obj = call(api, "POST", WIDGETS, widget("occ", size=1))[1]
    stale = obj["metadata"]["resourceVersion"]
    call(api, "PATCH", f"{WIDGETS}/occ", {"spec": {"size": 2}}, "application/merge-patch+json")
    stale_patch = {"metadata": {"resourceVersion": stale}, "spec": {"size": 3}}
    assert call(api, "PATCH", f"{WIDGETS}/occ", stale_patch, "application/merge-patch+json")[1]["code"] == 409
    obj["spec"] = {"size": 4}
    assert call(api, "PUT", f"{WIDGETS}/occ", obj)[0] == 409
    failing = [{"op": "test", "path": "/spec/size", "value": 1}, {"op": "replace", "path": "/spec/size", "value": 5}]
    status, answer = call(api, "PATCH", f"{WIDGETS}/occ", failing, "application/json-patch+json")
    assert status == 422 and answer["reason"] == "Invalid"
    current = call(api, "GET", f"{WIDGETS}/occ")[1]
    assert current["spec"] == {"size": 2}
    current["spec"] = {"size": 6}
    assert call(api, "PUT", f"{WIDGETS}/occ", current)[1]["spec"] == {"size": 6}


def test_accessors_return_copies(api: FakeKubeApi) -> None:
    api.create("configmaps", {"metadata": {"name": "mine"}, "data": {"a": "1"}})
    got = api.get("configmaps", "default", "mine")
    assert got is not None
    got["data"]["a"] = "edited"
    assert (api.get("configmaps", "default", "mine") or {})["data"] == {"a": "1"}


def test_owner_reference_cascade(api: FakeKubeApi) -> None:
    owner = api.create("widgets", widget("owner"), "gc")
    other = api.create("widgets", widget("other-owner"), "gc")

    def ref(o: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
        }

    api.create("configmaps", {"metadata": {"name": "child", "ownerReferences": [ref(owner)]}}, "gc")
    api.create("configmaps", {"metadata": {"name": "shared", "ownerReferences": [ref(owner), ref(other)]}}, "gc")
    api.create("configmaps", {"metadata": {"name": "orphan", "ownerReferences": [ref(other)]}}, "gc")
    api.delete("widgets", "gc", "owner")
    wait_for(lambda: api.get("configmaps", "gc", "child") is None, "the dependent to be collected")
    shared = wait_for(
        lambda: (
            (api.get("configmaps", "gc", "shared") or {}).get("metadata", {}).get("ownerReferences") == [ref(other)]
            and api.get("configmaps", "gc", "shared")
        ),
        "the dead owner reference to be dropped",
    )
    assert shared["metadata"]["name"] == "shared"
    status, _ = call(
        api, "DELETE", "/apis/example.com/v1/namespaces/gc/widgets/other-owner", {"propagationPolicy": "Orphan"}
    )
    assert status == 200
    assert api.get("configmaps", "gc", "orphan") is not None and api.get("configmaps", "gc", "shared") is not None


# --- fault injection, tables, logs, CRDs, bounded memory --------------------------------------------


def test_fault_injection_rejects_before_any_change(api: FakeKubeApi) -> None:
    rv = call(api, "POST", WIDGETS, widget("faulty", size=1))[1]["metadata"]["resourceVersion"]
    conflict = api.inject_fault("PATCH", r"/widgets/faulty$", status=409, count=1)
    status, body = call(api, "PATCH", f"{WIDGETS}/faulty", {"spec": {"size": 2}}, "application/merge-patch+json")
    assert status == 409 and body["reason"] == "Conflict" and conflict.hits == 1
    assert call(api, "GET", f"{WIDGETS}/faulty")[1]["metadata"]["resourceVersion"] == rv
    assert call(api, "PATCH", f"{WIDGETS}/faulty", {"spec": {"size": 2}}, "application/merge-patch+json")[0] == 200

    api.inject_fault("POST", r"/widgets$", status=500, count=2)
    assert [call(api, "POST", WIDGETS, widget(f"never-{i}"))[0] for i in range(2)] == [500, 500]
    assert api.get("widgets", "default", "never-0") is None and api.get("widgets", "default", "never-1") is None
    assert call(api, "POST", WIDGETS, widget("never-2"))[0] == 201

    slow = api.inject_fault("GET", r"/widgets/faulty$", status=None, delay=0.2, count=1)
    assert call(api, "GET", f"{WIDGETS}/faulty")[0] == 200 and slow.hits == 1
    api.inject_fault("*", r"/widgets/faulty", status=503, count=None)
    assert call(api, "GET", f"{WIDGETS}/faulty")[0] == 503
    api.clear_faults()
    assert call(api, "GET", f"{WIDGETS}/faulty")[0] == 200


def test_table_uses_printer_columns(api: FakeKubeApi) -> None:
    api.create(
        "widgets",
        {
            **widget("tab", size=7, color="red"),
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]},
        },
        "default",
    )
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    table = call(api, "GET", f"{WIDGETS}/tab", accept=accept)[1]
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Ready", "Color", "Age"]
    assert table["columnDefinitions"][3]["priority"] == 1
    name, size, ready, color, age = table["rows"][0]["cells"]
    assert (name, size, ready, color) == ("tab", 7, "True", "red") and age.endswith("s")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    pods = call(api, "GET", "/api/v1/namespaces/default/pods", accept=accept)[1]
    assert [c["name"] for c in pods["columnDefinitions"]] == ["Name", "Age"]


@pytest.mark.parametrize(
    ("collection", "kind"),
    [
        ("/api/v1/namespaces/builtins/pods", "Pod"),
        ("/api/v1/namespaces/builtins/services", "Service"),
        ("/api/v1/namespaces/builtins/endpoints", "Endpoints"),
        ("/api/v1/namespaces/builtins/configmaps", "ConfigMap"),
        ("/api/v1/namespaces/builtins/secrets", "Secret"),
        ("/api/v1/namespaces/builtins/events", "Event"),
        ("/api/v1/namespaces/builtins/serviceaccounts", "ServiceAccount"),
        ("/apis/apps/v1/namespaces/builtins/deployments", "Deployment"),
        ("/apis/discovery.k8s.io/v1/namespaces/builtins/endpointslices", "EndpointSlice"),
        ("/apis/batch/v1/namespaces/builtins/jobs", "Job"),
        ("/apis/coordination.k8s.io/v1/namespaces/builtins/leases", "Lease"),
    ],
)
def test_builtin_resources_are_served(api: FakeKubeApi, collection: str, kind: str) -> None:
    status, created = call(api, "POST", collection, {"metadata": {"name": "one"}, "spec": {}})
    assert status == 201 and created["kind"] == kind and created["metadata"]["namespace"] == "builtins"
    listing = call(api, "GET", collection)[1]
    assert listing["kind"] == f"{kind}List" and [o["metadata"]["name"] for o in listing["items"]] == ["one"]


def test_builtin_status_subresources_and_secret_string_data(api: FakeKubeApi) -> None:
    jobs = "/apis/batch/v1/namespaces/status-iso/jobs"
    call(api, "POST", jobs, {"metadata": {"name": "j"}, "spec": {"completions": 1}})
    status = {"status": {"succeeded": 1}}
    assert call(api, "PATCH", f"{jobs}/j", status, "application/merge-patch+json")[1].get("status") is None
    assert call(api, "PATCH", f"{jobs}/j/status", status, "application/merge-patch+json")[1]["status"] == {
        "succeeded": 1
    }
    secret = {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    stored = call(api, "POST", "/api/v1/namespaces/status-iso/secrets", secret)[1]
    assert stored["data"] == {"token": "YWJj"} and "stringData" not in stored


def test_deleting_a_namespace_deletes_its_objects(api: FakeKubeApi) -> None:
    api.ensure_namespace("doomed")
    api.create("configmaps", {"metadata": {"name": "inside"}}, "doomed")
    api.create("widgets", widget("kept-elsewhere"), "default")
    api.delete("namespaces", None, "doomed")
    wait_for(lambda: api.get("configmaps", "doomed", "inside") is None, "the namespace's objects to go")
    assert api.get("widgets", "default", "kept-elsewhere") is not None


def test_pod_logs(api: FakeKubeApi) -> None:
    api.create("pods", {"metadata": {"name": "trainer-0"}, "spec": {"containers": [{"name": "t", "image": "x"}]}})
    api.set_pod_log("default", "trainer-0", "step 1\nstep 2\n")
    api.append_pod_log("default", "trainer-0", "step 3\n")
    assert call(api, "GET", "/api/v1/namespaces/default/pods/trainer-0/log")[1] == "step 1\nstep 2\nstep 3\n"
    assert call(api, "GET", "/api/v1/namespaces/default/pods/trainer-0/log?tailLines=1")[1] == "step 3\n"
    assert call(api, "GET", "/api/v1/namespaces/default/pods/ghost/log")[0] == 404


def test_posted_crd_is_served(api: FakeKubeApi) -> None:
    crd = json.loads(json.dumps(CRD).replace("widgets", "gadgets").replace("Widget", "Gadget").replace('"wd"', '"gd"'))
    status, stored = call(api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201 and {c["type"] for c in stored["status"]["conditions"]} == {"NamesAccepted", "Established"}
    assert "gadgets" in {r["name"] for r in call(api, "GET", "/apis/example.com/v1")[1]["resources"]}
    assert call(api, "POST", "/apis/example.com/v1/namespaces/default/gadgets", {"metadata": {"name": "g"}})[0] == 201
    call(api, "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.com")
    assert call(api, "GET", "/apis/example.com/v1/namespaces/default/gadgets")[0] == 404


def test_project_crds_register_from_directory() -> None:
    assert load_crd_documents(REPO / "crds"), "crds/ holds the generated CRDs"
    with FakeKubeApi(crd_dirs=[REPO / "crds"]) as api:
        served = {r["name"]: r for r in call(api, "GET", "/apis/loraops.io/v1alpha1")[1]["resources"]}
        assert {"loratrainings", "loraadapters", "adapterroutes"} <= set(served)
        assert {served[p]["shortNames"][0] for p in ("loratrainings", "loraadapters", "adapterroutes")} == {
            "lt",
            "la",
            "ar",
        }
        assert api.get("customresourcedefinitions", None, "loraadapters.loraops.io") is not None


def test_request_log_and_history_are_bounded() -> None:
    with FakeKubeApi([CRD], request_log_limit=20, history_limit=3) as api:
        call(api, "POST", WIDGETS, widget("busy"))
        for size in range(60):
            call(api, "PATCH", f"{WIDGETS}/busy", {"spec": {"size": size}}, "application/merge-patch+json")
        assert len(list(api.kmock)) <= 40
        versions = api.kmock.objects["example.com/v1/widgets", "default", "busy"].history
        last = versions[-1]
        assert len(versions) == 3 and last is not None and last >= {"spec": {"size": 59}}
        call(api, "DELETE", f"{WIDGETS}/busy")
        assert ("example.com/v1/widgets", "default", "busy") not in [
            (f"{r.group}/{r.version}/{r.plural}", ns, n) for r, ns, n in api.kmock.objects
        ]


def test_serve_runs_until_stopped_and_writes_a_kubeconfig(tmp_path: pathlib.Path) -> None:
    kubeconfig, stop = tmp_path / "dev" / "kubeconfig", threading.Event()
    server = threading.Thread(
        target=serve, kwargs={"kubeconfig": kubeconfig, "stop": stop, "crd_dirs": [REPO / "crds"]}
    )
    server.start()
    try:
        wait_for(kubeconfig.exists, "the kubeconfig")
        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        groups = {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
        client.close()
        assert "loraops.io" in groups
    finally:
        stop.set()
        server.join(10)
    assert not server.is_alive()


# --- clients: python kubernetes client and kubectl ---------------------------------------------------


def test_python_client(api: FakeKubeApi, kubeconfig: pathlib.Path) -> None:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
        assert "example.com" in {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
        meta = kubernetes.client.V1ObjectMeta
        core.create_namespace(kubernetes.client.V1Namespace(metadata=meta(name="pyclient")))
        config_map = kubernetes.client.V1ConfigMap(metadata=meta(name="cfg", labels={"app": "x"}), data={"k": "v"})
        core.create_namespaced_config_map("pyclient", config_map)
        found = core.list_namespaced_config_map("pyclient", label_selector="app=x").items
        assert [c.metadata.name for c in found if c.metadata] == ["cfg"]
        args = ("example.com", "v1", "pyclient", "widgets")
        custom.create_namespaced_custom_object(*args, widget("py", size=1))
        custom.patch_namespaced_custom_object_status(*args, "py", {"status": {"phase": "Ready"}})
        got: dict[str, Any] = custom.get_namespaced_custom_object(*args, "py")  # type: ignore[assignment]
        assert got["status"] == {"phase": "Ready"} and got["spec"] == {"size": 1}
        stale = {**got, "metadata": {**got["metadata"], "resourceVersion": "1"}}
        with pytest.raises(kubernetes.client.ApiException) as conflict:
            custom.replace_namespaced_custom_object(*args, "py", stale)
        assert conflict.value.status == 409
        listed: dict[str, Any] = custom.list_namespaced_custom_object(*args)  # type: ignore[assignment]
        rv = listed["metadata"]["resourceVersion"]
        custom.patch_namespaced_custom_object(*args, "py", {"spec": {"size": 2}})
        stream = kubernetes.watch.Watch().stream(
            custom.list_namespaced_custom_object, *args, resource_version=rv, timeout_seconds=1
        )
        assert [(e["type"], e["object"]["spec"]["size"]) for e in stream] == [("MODIFIED", 2)]
    finally:
        client.close()


def kubectl(kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    cache = kubeconfig.parent / "kubectl-cache"
    cmd = [str(KUBECTL), "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_kubectl_apply_get_watch_delete(api: FakeKubeApi, kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> None:
    manifest = tmp_path / "w.yaml"
    manifest.write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: kw, namespace: kubectl}\nspec: {size: 3}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: kcm, namespace: kubectl}\ndata: {a: b}\n"
    )
    api.ensure_namespace("kubectl")
    applied = kubectl(kubeconfig, "apply", "--validate=false", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert "widget.example.com/kw created" in applied.stdout
    listed = kubectl(kubeconfig, "get", "wd", "-n", "kubectl")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "READY", "AGE"] and row.split()[:2] == ["kw", "3"]
    wide = kubectl(kubeconfig, "get", "wd", "-n", "kubectl", "-o", "wide")
    assert wide.stdout.split()[:5] == ["NAME", "SIZE", "READY", "COLOR", "AGE"]
    again = kubectl(kubeconfig, "apply", "--validate=false", "-f", str(manifest))
    assert "widget.example.com/kw unchanged" in again.stdout, again.stderr

    cmd = [
        str(KUBECTL),
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(tmp_path / "kubectl-cache"),
        "get",
        "wd",
        "-n",
        "kubectl",
        "-w",
        "--no-headers",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(30, proc.kill)  # a silent kubectl fails the test instead of hanging it
        watchdog.start()
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split()[:2] == ["kw", "3"]
            wait_for(
                lambda: api.request_count("GET", r"/namespaces/kubectl/widgets\?.*watch=(true|1)"), "kubectl's watch"
            )
            api.patch("widgets", "kubectl", "kw", {"spec": {"size": 4}})
            assert proc.stdout.readline().split()[:2] == ["kw", "4"]
        finally:
            watchdog.cancel()
            proc.terminate()

    deleted = kubectl(kubeconfig, "delete", "-f", str(manifest))
    assert deleted.returncode == 0, deleted.stderr
    assert api.get("widgets", "kubectl", "kw") is None and api.get("configmaps", "kubectl", "kcm") is None


# --- real kopf ---------------------------------------------------------------------------------------


def lifecycle_registry(log: list[str]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.create("example.com", "v1", "widgets", registry=registry, backoff=0.1)
    def created(name: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        log.append(f"create {name}")
        kopf.info(body, reason="Created", message="seen by the test operator")  # posted if enabled
        patch.status["phase"] = "Created"

    @kopf.on.update("example.com", "v1", "widgets", registry=registry, field="spec", backoff=0.1)
    def updated(name: str, new: Any, patch: kopf.Patch, **_: Any) -> None:
        log.append(f"update {name} {new['size']}")
        patch.status["observedSize"] = new["size"]

    @kopf.on.delete("example.com", "v1", "widgets", registry=registry, backoff=0.1)
    def deleted(name: str, **_: Any) -> None:
        log.append(f"delete {name}")

    return registry


@pytest.mark.parametrize("variant", ["namespaced", "clusterwide-initial-streaming-events"])
def test_kopf_lifecycle_with_finalizer_and_faults(variant: str) -> None:
    clusterwide = variant != "namespaced"

    def tweak(settings: kopf.OperatorSettings) -> None:
        settings.watching.initial_streaming = clusterwide
        settings.posting.enabled = clusterwide  # kopf's Events use generateName

    log: list[str] = []
    with FakeKubeApi([CRD]) as api:
        api.ensure_namespace("kopf")
        api.create("widgets", widget("elsewhere", size=1), "default")
        scope: dict[str, Any] = {"clusterwide": True} if clusterwide else {"namespaces": ["kopf"]}
        with OperatorThread(api.url, registry=lifecycle_registry(log), settings=tweak, **scope):
            api.create("widgets", widget("life", size=1), "kopf")
            wait_for(
                lambda: (api.get("widgets", "kopf", "life") or {}).get("status", {}).get("phase") == "Created",
                "the create handler's status",
            )
            obj = api.get("widgets", "kopf", "life")
            assert obj is not None and obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]

            # kopf retries 5xx answers; a 409 on a patch without resourceVersion (which no real apiserver
            # gives) would only be throttled until the next event, so it is not injected here.
            failures = [
                api.inject_fault("PATCH", r"/namespaces/kopf/widgets/life$", status=500, count=1),
                api.inject_fault("PATCH", r"/namespaces/kopf/widgets/life/status$", status=503, count=2),
            ]
            api.patch("widgets", "kopf", "life", {"spec": {"size": 2}})
            wait_for(
                lambda: (api.get("widgets", "kopf", "life") or {}).get("status", {}).get("observedSize") == 2,
                "the update handler's status despite injected 5xx answers",
            )
            assert [f.hits for f in failures] == [1, 2]

            api.delete("widgets", "kopf", "life")
            wait_for(lambda: api.get("widgets", "kopf", "life") is None, "deletion after the finalizer is released")
            if clusterwide:
                events = wait_for(lambda: api.list("events", "kopf"), "kopf's Events")
                assert [e["reason"] for e in events] == ["Created"]
                assert events[0]["metadata"]["name"].startswith("kopf-event-")
                assert events[0]["involvedObject"]["name"] == "life"
        elsewhere = api.get("widgets", "default", "elsewhere") or {}
    assert [line for line in log if "life" in line] == ["create life", "update life 2", "delete life"]
    assert ("status" in elsewhere) == clusterwide, "only served namespaces are handled"


def test_kopf_runner_imports_modules_into_fresh_registries(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_api_handlers.py").write_text(
        "import kopf\n\n"
        "@kopf.on.create('example.com', 'v1', 'widgets')\n"
        "def created(patch, **_):\n"
        "    patch.status['phase'] = 'FromModule'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    first, second = load_registry(["fake_api_handlers"]), load_registry(["fake_api_handlers"])
    assert len(first._changing.get_all_handlers()) == len(second._changing.get_all_handlers()) == 1
    assert not kopf.get_default_registry()._changing.get_all_handlers(), "the default registry stays clean"
    with FakeKubeApi([CRD]) as api, OperatorThread(api.url, modules=["fake_api_handlers"], clusterwide=True):
        api.create("widgets", widget("mod"), "default")
        wait_for(
            lambda: (api.get("widgets", "default", "mod") or {}).get("status", {}).get("phase") == "FromModule",
            "the module's handler",
        )


def test_kopf_runner_refuses_a_registry_with_its_own_login() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def elsewhere(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server="https://a-real-cluster.example.com")

    with pytest.raises(ValueError, match="login"):
        OperatorThread("http://127.0.0.1:1", registry=registry, clusterwide=True).start()


def test_kopf_reconciles_500_objects(api: FakeKubeApi) -> None:
    api.ensure_namespace("load")
    registry = kopf.OperatorRegistry()

    @kopf.on.create("example.com", "v1", "widgets", registry=registry)
    def created(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Handled"

    with OperatorThread(api.url, registry=registry, namespaces=["load"]):
        for i in range(500):
            api.create("widgets", widget(f"w{i:03}", size=i), "load")

        def handled() -> int:
            return sum(1 for o in api.list("widgets", "load") if o.get("status", {}).get("phase") == "Handled")

        wait_for(lambda: handled() == 500, "all 500 widgets to be handled", timeout=120)
