"""The one place controllers read and write the Kubernetes API (besides kopf's own bookkeeping).

A thin layer over the official `kubernetes` client's `ApiClient` that speaks plain dicts for any resource,
built on a private configuration (never the process-global one), and that retries what is worth retrying:
throttling, 5xx, and conflicts on writes that carry no resourceVersion. Blocking calls run in a thread so
kopf's event loop keeps serving other objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RETRIABLE = {409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
JOBS = Resource("batch", "v1", "jobs")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


def _configuration(server: str | None, insecure: bool) -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    if server:
        configuration.host = server
        configuration.verify_ssl = not insecure
        return configuration
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration, persist_config=False)
    return configuration


class KubeClient:
    def __init__(self, server: str | None = None, *, insecure: bool = False, attempts: int = 3) -> None:
        self.api = kubernetes.client.ApiClient(_configuration(server, insecure))
        self.attempts = attempts

    def close(self) -> None:
        self.api.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        """One API call with retries of transient failures; raises ApiError with the server's message."""
        url_path = f"{path}?{urlencode(query)}" if query else path
        for attempt in range(1, self.attempts + 1):
            params = self.api.param_serialize(
                method=method,
                resource_path=url_path,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            try:
                response = self.api.call_api(*params)
                response.read()
            except ApiException as err:  # transport-level failures surface here
                status, error = int(err.status or 0), _api_error(int(err.status or 0), err.reason, err.body)
            else:
                data = response.data
                status = int(response.status)
                if status < 400:
                    if raw:
                        return data.decode() if isinstance(data, bytes) else data
                    return json.loads(data) if data else None
                # The generated client raises only when deserialising: check the status here.
                error = _api_error(status, str(response.reason), data)
            if status not in RETRIABLE or attempt == self.attempts or (status == 409 and method == "POST"):
                raise error
            log.debug("retrying %s %s after %s", method, path, error)
            time.sleep(min(0.1 * 2**attempt, 2.0) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # --- typed-by-path helpers ---
    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.request("GET", resource.path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def items(self, resource: Resource, namespace: str | None, label_selector: str | None = None) -> list[Obj]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self.request("GET", resource.path(namespace), query=query).get("items", []))

    def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        return self.request("POST", resource.path(namespace), body)

    def create_if_absent(self, resource: Resource, namespace: str | None, body: Obj) -> Obj | None:
        """The created object, or None when one of that name exists already (409: an earlier attempt, or
        someone else; the caller decides whether the existing one will do)."""
        try:
            return self.create(resource, namespace, body)
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: Obj, *, sub: str | None = None) -> Obj:
        return self.request(
            "PATCH", resource.path(namespace, name, sub), patch, content_type="application/merge-patch+json"
        )

    def delete(self, resource: Resource, namespace: str | None, name: str, propagation: str = "Background") -> None:
        try:
            self.request("DELETE", resource.path(namespace, name), {"propagationPolicy": propagation})
        except ApiError as err:
            if err.status != 404:
                raise

    def pod_log(self, namespace: str, pod: str, container: str | None = None, tail_lines: int | None = None) -> str:
        query = {k: str(v) for k, v in (("container", container), ("tailLines", tail_lines)) if v is not None}
        return str(self.request("GET", PODS.path(namespace, pod, "log"), query=query or None, raw=True) or "")

    # --- async wrappers for kopf handlers ---
    async def aget(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        return await asyncio.to_thread(self.get, resource, namespace, name)

    async def aitems(self, resource: Resource, namespace: str | None, label_selector: str | None = None) -> list[Obj]:
        return await asyncio.to_thread(self.items, resource, namespace, label_selector)

    async def acreate(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        return await asyncio.to_thread(self.create, resource, namespace, body)

    async def acreate_if_absent(self, resource: Resource, namespace: str | None, body: Obj) -> Obj | None:
        return await asyncio.to_thread(self.create_if_absent, resource, namespace, body)

    async def apatch(
        self, resource: Resource, namespace: str | None, name: str, patch: Obj, *, sub: str | None = None
    ) -> Obj:
        return await asyncio.to_thread(self.patch, resource, namespace, name, patch, sub=sub)

    async def adelete(self, resource: Resource, namespace: str | None, name: str) -> None:
        await asyncio.to_thread(self.delete, resource, namespace, name)

    async def apod_log(
        self, namespace: str, pod: str, container: str | None = None, tail_lines: int | None = None
    ) -> str:
        return await asyncio.to_thread(self.pod_log, namespace, pod, container, tail_lines)


def _api_error(status: int, reason: str | None, body: bytes | str | None) -> ApiError:
    try:
        payload = json.loads(body or "{}")
    except (TypeError, ValueError):
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    return ApiError(status, str(payload.get("reason") or reason), str(payload.get("message") or body))
