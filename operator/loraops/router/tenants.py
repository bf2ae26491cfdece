"""Who is calling: the tenant, from an API key (when a key file is configured) or from a header.

With `--api-keys FILE` the key is the only source of the tenant: the header is ignored, so a client cannot
claim another tenant's adapters by setting it. Without a key file the router trusts the header, which suits a
router behind a gateway that authenticates and sets it. The key file is a YAML/JSON mapping `key: tenant`
(a mounted Secret key), re-read when it changes.
"""

from __future__ import annotations

import logging
import pathlib
import re
from dataclasses import dataclass

import yaml

from loraops.api.common import TENANT_ID

from .sources import file_stamp

log = logging.getLogger(__name__)

_TENANT = re.compile(TENANT_ID)


class TenantError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class _KeyFileState:
    stamp: tuple[int, int, int]
    keys: dict[str, str]


class ApiKeys:
    """API key → tenant, re-read when the file changes (a Secret update rewrites the mounted file)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._state = _KeyFileState((0, 0, 0), {})
        self.refresh()

    def refresh(self) -> None:
        try:
            stamp = file_stamp(self.path)
        except OSError as err:
            log.warning("API key file %s unreadable: %s (keeping %d keys)", self.path, err, len(self._state.keys))
            return
        if stamp == self._state.stamp:
            return
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError("expected a mapping key: tenant")
            keys = {str(k): str(v) for k, v in data.items()}
            bad = [t for t in keys.values() if not _TENANT.match(t)]
            if bad:
                raise ValueError(f"invalid tenant ids: {sorted(set(bad))[:5]}")
        except (OSError, ValueError, yaml.YAMLError) as err:
            log.error("API key file %s rejected: %s (keeping %d keys)", self.path, err, len(self._state.keys))
            return
        self._state = _KeyFileState(stamp, keys)
        log.info("API key file %s: %d keys", self.path, len(keys))

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._state.keys.values())

    def tenant(self, key: str) -> str | None:
        return self._state.keys.get(key)


class TenantResolver:
    def __init__(self, header: str = "X-Tenant-Id", api_keys: ApiKeys | None = None) -> None:
        self.header = header
        self.api_keys = api_keys

    def resolve(self, headers: object) -> str | None:
        """The tenant of a request, None when it has none; TenantError for a bad key or a malformed tenant."""
        get = headers.get  # type: ignore[attr-defined]
        if self.api_keys is not None:
            auth = get("Authorization")
            if not auth or not auth.startswith("Bearer "):
                raise TenantError(401, "missing API key: send `Authorization: Bearer <key>`")
            tenant = self.api_keys.tenant(auth[7:].strip())
            if tenant is None:
                raise TenantError(401, "invalid API key")
            return tenant
        value = get(self.header)
        if value is None or value == "":
            return None
        if len(value) > 63 or not _TENANT.match(value):
            raise TenantError(400, f"invalid {self.header} header: letters, digits, '.', '_', '-'; at most 63")
        return value
