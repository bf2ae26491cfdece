"""The agent's core: the adapters it holds, their loads into vLLM, and reloads after vLLM restarts.

One asyncio lock per adapter name serialises every operation on that name (two PUTs, a PUT and a DELETE, a
PUT and a reload), while different names proceed in parallel. The records live in memory: after an agent
restart the operator's next PUT re-creates them, and a load that vLLM refuses because the served name is
already there is adopted when vLLM's own model list shows it pointing at the same verified folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib
import re
import time
from collections.abc import Iterator

import aiohttp

from loraops.agent import modules, probe, stage
from loraops.agent.config import AgentConfig
from loraops.agent.errors import AgentFailure, ArtifactRejected, BadRequest, Conflict, VllmRejected, VllmUnavailable
from loraops.agent.metrics import AgentMetrics
from loraops.agent.models import NAME_PATTERN, SHORT_DIGEST, AdapterRecord, ProbeSpec, PutAdapter, SignatureCheck
from loraops.agent.sources import scheme_of, source_for
from loraops.agent.vllmapi import VllmApi
from loraops_trainer.errors import TrainerError
from loraops_trainer.manifest import normalise_digest, read_manifest

log = logging.getLogger("loraops.agent")
NAME = re.compile(NAME_PATTERN)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        metrics: AgentMetrics | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self._session = session
        self._own_session = session is None
        self.vllm: VllmApi | None = None
        self.records: dict[str, AdapterRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending_unloads: set[str] = set()
        self._installed_digests: dict[tuple[str, str], str] = {}
        """(name, digest) → the installed folder's digest when a pickle conversion changed its files."""
        self._probes: dict[str, ProbeSpec | None] = {}
        """The probe each adapter's last PUT asked for, reused when the watch loop reloads it."""
        self.vllm_up = False
        self.reloading = False
        self._watch_task: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self, *, watch: bool = True) -> None:
        removed = await asyncio.to_thread(stage.clean_staging, self.config)
        if removed:
            log.info("removed %d staging folders left by an earlier run", removed)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.vllm = VllmApi(self.config.vllm_url, self._session, self.config.vllm_timeout)
        if watch:
            self._watch_task = asyncio.create_task(self._watch(), name="loraops-agent-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def alive(self) -> bool:
        return self._watch_task is None or not self._watch_task.done()

    @property
    def ready(self) -> bool:
        """vLLM answers and nothing awaits a reload: a pod that lost its adapters takes no traffic."""
        return self.vllm_up and not self.reloading

    def _api(self) -> VllmApi:
        if self.vllm is None:
            raise RuntimeError("Agent.start() was not called")
        return self.vllm

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _refresh_gauges(self) -> None:
        self.metrics.adapter_info.clear()
        self.metrics.adapter_effective.clear()
        loaded = 0
        for record in self.records.values():
            if record.state == "Loaded":
                loaded += 1
                rank = "" if record.rank is None else str(record.rank)
                self.metrics.adapter_info.labels(
                    record.name, record.served_name, record.digest[:SHORT_DIGEST], rank
                ).set(1)
                if record.effective is not None:
                    self.metrics.adapter_effective.labels(record.name, record.served_name).set(int(record.effective))
        self.metrics.adapters_loaded.set(loaded)

    def _fail(self, error: AgentFailure) -> AgentFailure:
        self.metrics.failures.labels(error.reason).inc()
        return error

    # PUT

    async def put(self, name: str, request: PutAdapter) -> tuple[AdapterRecord, bool]:
        """Hold adapter `name` at `request.digest`; (record, changed). Raises AgentFailure."""
        try:
            if not NAME.match(name):
                raise BadRequest("InvalidName", f"{name!r} is not a valid adapter name ({NAME_PATTERN})")
            try:
                digest = normalise_digest(request.digest)
            except TrainerError as error:
                raise BadRequest(error.reason, error.message) from None
            source_for(request.uri, self.config)  # an unknown scheme or a source this agent lacks: 400
            if self.config.require_signed and request.signature is None:
                raise ArtifactRejected(
                    "SignatureMissing",
                    "this agent requires signed adapters (--require-signed) and the request names no signature check",
                )
        except AgentFailure as error:
            raise self._fail(error) from None
        async with self._lock(name):
            try:
                self._probes[name] = request.probe
                return await self._put_locked(name, request, digest)
            except AgentFailure as error:
                raise self._fail(error) from None
            finally:
                self._refresh_gauges()

    async def _put_locked(self, name: str, request: PutAdapter, digest: str) -> tuple[AdapterRecord, bool]:
        current = self.records.get(name)
        if current is not None and current.digest == digest and current.state == "Loaded":
            if request.signature is None or current.signature_digest is not None:
                return current, False
            # Loaded before a signature was asked for (the policy or the spec changed since): check the installed
            # bytes now; an adapter that fails stops serving.
            await self._verify_loaded_signature(current, request.signature)
            return current, True
        wanted_served = request.served_name or name
        for other in self.records.values():
            if other.name != name and other.served_name == wanted_served:
                raise Conflict("ServedNameTaken", f"served name {wanted_served!r} is used by adapter {other.name!r}")
        if current is not None and current.digest == digest and current.state == "Loading" and current.path:
            # Verified and installed earlier, only the load is missing (vLLM was down): load it now.
            await self._reload(current, trigger="put")
            return current, True

        replacing = current if current is not None and current.digest != digest and current.state != "Failed" else None
        served = wanted_served
        if replacing is not None and served == replacing.served_name:
            # Never `load_inplace`: the new release gets its own name, so a response always names one digest.
            served = f"{served}-{digest[:SHORT_DIGEST]}"
        final = self.config.adapters_dir / name / digest
        record = AdapterRecord(
            name=name,
            served_name=served,
            digest=digest,
            uri=request.uri,
            state="Loading",
            credentials_secret=request.credentials_secret,
            path=str(self.config.vllm_path(final)),
        )
        if replacing is None:
            self.records[name] = record
        try:
            verified = await self._fetch(request, digest, final)
        except AgentFailure as error:
            self._after_failure(name, replacing, record, error)
            raise
        record.size, record.files, record.converted_from = verified.size, verified.files, verified.converted_from
        if verified.signed is not None:
            record.signer, record.signature_digest = verified.signed.signer, verified.signed.subject_digest
            record.signature_verified_at = now()
        if verified.installed_digest is not None:
            self._installed_digests[(name, digest)] = verified.installed_digest
        try:
            await self._load(record, trigger="replace" if replacing else "put")
        except AgentFailure as error:
            if isinstance(error, VllmUnavailable) and replacing is None:
                # Verified and in place: the watch loop loads it as soon as vLLM answers again.
                record.message = f"waiting for vLLM: {error.message}"
                raise
            await asyncio.to_thread(stage.remove, final)
            self._after_failure(name, replacing, record, error)
            raise
        self.records[name] = record
        if replacing is not None:
            await self._retire(replacing)
        log.info("adapter %s loaded as %s (digest %s, %s bytes)", name, record.served_name, digest, record.size)
        return record, True

    def _after_failure(
        self, name: str, replacing: AdapterRecord | None, record: AdapterRecord, error: AgentFailure
    ) -> None:
        log.warning("adapter %s (digest %s) not loaded: %s", name, record.digest, error)
        if replacing is not None:
            # The release being replaced keeps serving; the failed attempt shows only as a message.
            replacing.message = f"replacement by digest {record.digest} failed: {error}"
            return
        record.state, record.reason, record.message = "Failed", error.reason, error.message
        record.path = None
        self.records[name] = record

    async def _fetch(self, request: PutAdapter, digest: str, final: pathlib.Path) -> stage.Verified:
        scheme = scheme_of(request.uri)
        credentials = stage.read_credentials(self.config, request.credentials_secret)
        staging = await asyncio.to_thread(stage.new_staging, self.config)
        try:
            started = time.monotonic()
            try:
                await asyncio.to_thread(stage.download, self.config, request.uri, staging, credentials)
            except AgentFailure:
                self.metrics.downloads.labels(scheme, "failed").inc()
                raise
            except OSError as error:
                self.metrics.downloads.labels(scheme, "failed").inc()
                raise AgentFailure("DownloadFailed", f"{request.uri}: {error}") from None
            self.metrics.downloads.labels(scheme, "ok").inc()
            self.metrics.download_seconds.labels(scheme).observe(time.monotonic() - started)
            started = time.monotonic()
            try:
                verified = await asyncio.to_thread(
                    stage.verify,
                    staging,
                    digest,
                    self.config,
                    convert_pickle=bool(request.convert_pickle),
                    signature=request.signature,
                )
            except AgentFailure as error:
                self.metrics.verifications.labels("failed").inc()
                if error.reason.startswith("Conversion") or (request.convert_pickle and error.reason == "UnsafeFormat"):
                    self.metrics.conversions.labels("failed").inc()
                raise
            if verified.converted_from is not None:
                self.metrics.conversions.labels("ok").inc()
            self.metrics.verifications.labels("ok").inc()
            self.metrics.verification_seconds.observe(time.monotonic() - started)
            self.metrics.download_bytes.labels(scheme).inc(verified.size)
            await asyncio.to_thread(stage.install, staging, final)
            return verified
        except OSError as error:
            raise AgentFailure("LocalStorageError", f"adapters folder: {error}") from None
        finally:
            await asyncio.to_thread(stage.remove, staging)

    async def _verify_loaded_signature(self, record: AdapterRecord, check: SignatureCheck) -> None:
        final = self.config.adapters_dir / record.name / record.digest
        try:
            if (record.name, record.digest) in self._installed_digests:
                # Converted files are no longer the signed ones: only the original download could be checked.
                raise ArtifactRejected(
                    "SignatureInvalid", "the installed files were converted from pickle; re-release the adapter signed"
                )
            signed = await asyncio.to_thread(stage.verify_signature, final, check, self.config)
        except AgentFailure as error:
            self.metrics.verifications.labels("failed").inc()
            await self._retire(record)
            record.state, record.reason, record.message, record.path = "Failed", error.reason, error.message, None
            log.warning("adapter %s unloaded: its signature does not verify: %s", record.name, error)
            raise
        self.metrics.verifications.labels("ok").inc()
        record.signer, record.signature_digest = signed.signer, signed.subject_digest
        record.signature_verified_at = now()

    async def _base(self) -> tuple[str | None, modules.BaseModel]:
        """The base model's served name (for the probe) and what the agent can read of it (for the check)."""
        served = await self._api().model_list()
        bases = [m for m in served if m.parent is None]
        name = bases[0].id if bases else None
        if self.config.base_model_dir is not None:
            folder: pathlib.Path | None = self.config.base_model_dir
            source = f"--base-model-dir {folder}"
        else:
            root = bases[0].root if bases else None
            source = f"vLLM's model root {root!r}"
            # In a pod, vLLM's `root` is a path in its own container (or a hub id): usable only when shared.
            folder = pathlib.Path(root) if root and pathlib.Path(root).is_absolute() else None
        return name, await asyncio.to_thread(modules.read_base_model, folder, source)

    async def _check_modules(self, record: AdapterRecord, base: modules.BaseModel) -> None:
        """Refuse, before vLLM sees it, an adapter whose tensors vLLM would load but not apply."""
        final = self.config.adapters_dir / record.name / record.digest
        result = await asyncio.to_thread(
            modules.check_adapter,
            final,
            base,
            embeddings=self.config.lora_embeddings,
            refuse_unknown=self.config.unknown_architecture == "refuse",
        )
        record.rank = result.rank
        record.manifest_base_model = await asyncio.to_thread(_manifest_base_model, final)
        record.compatibility = "Compatible" if result.status == "Compatible" else "UnknownArchitecture"
        record.compatibility_message = result.message

    async def _load(self, record: AdapterRecord, trigger: str) -> None:
        assert record.path is not None
        api = self._api()
        base_name, base = await self._base()
        await self._check_modules(record, base)
        started = time.monotonic()
        try:
            try:
                await api.load(record.served_name, pathlib.Path(record.path))
            except VllmRejected as error:
                if error.reason != "VllmBadRequest" or not await self._adopt(record):
                    raise
        except AgentFailure:
            self.metrics.loads.labels(trigger, "failed").inc()
            raise
        self.metrics.loads.labels(trigger, "ok").inc()
        self.metrics.load_seconds.observe(time.monotonic() - started)
        # Probe before the record says Loaded: whoever waits for Loaded (a PUT, /readyz after a reload) then
        # finds the adapter judged and warm.
        await self._probe(record, base_name)
        record.state, record.reason, record.message, record.loaded_at = "Loaded", None, None, now()

    async def _probe(self, record: AdapterRecord, base_name: str | None) -> None:
        """Compare the adapter's answers with the base's; a NoEffect adapter stays loaded but is reported."""
        record.effective = record.probe_latency_seconds = record.probe_message = None
        spec = self._probes.get(record.name) or ProbeSpec()
        if not (self.config.probe and spec.enabled):
            self.metrics.probes.labels("skipped").inc()
            record.probe_message = "probe disabled" + ("" if self.config.probe else " on this agent (--no-probe)")
            return
        if base_name is None:
            self.metrics.probes.labels("failed").inc()
            self._fail(AgentFailure("ProbeFailed", "no base model in vLLM's /v1/models"))
            record.probe_message = "probe failed: vLLM lists no base model to compare with"
            return
        try:
            result = await probe.run_probe(
                self._api(), base_name, record.served_name, spec.prompts or probe.DEFAULT_PROMPTS, spec.max_tokens
            )
        except AgentFailure as error:
            # Loaded but unjudged: `effective` stays unknown and the message says why.
            self.metrics.probes.labels("failed").inc()
            self._fail(AgentFailure("ProbeFailed", error.message))
            record.probe_message = f"probe failed: {error}"
            log.warning("probe of %s failed: %s", record.served_name, error)
            return
        record.effective, record.probe_latency_seconds = result.effective, round(result.latency, 6)
        record.probe_message = result.message
        self.metrics.probe_seconds.observe(result.latency)
        if result.effective is None:
            self.metrics.probes.labels("inconclusive").inc()
            self._fail(AgentFailure("ProbeInconclusive", result.message))
            log.warning("probe of %s (%s) inconclusive: %s", record.name, record.served_name, result.message)
            return
        self.metrics.probes.labels("effective" if result.effective else "no_effect").inc()
        if not result.effective:
            self._fail(AgentFailure("NoEffect", result.message))
            log.warning("adapter %s (%s) has no effect: %s", record.name, record.served_name, result.message)

    async def _adopt(self, record: AdapterRecord) -> bool:
        """After a 400 (name taken): keep vLLM's entry if it is this very folder, else replace the stale one."""
        api = self._api()
        models = await api.models()
        if record.path is None or record.served_name not in models:
            return False
        if models[record.served_name] == record.path:
            return True
        await api.unload(record.served_name)
        await api.load(record.served_name, pathlib.Path(record.path))
        return True

    async def _retire(self, old: AdapterRecord) -> None:
        """Unload a replaced or deleted release and remove its files; vLLM being gone counts as unloaded."""
        try:
            await self._unload(old.served_name)
        except VllmUnavailable:
            self._pending_unloads.add(old.served_name)
        except VllmRejected as error:
            self._fail(error)
            log.warning("unload of %s failed (%s); its files are removed anyway", old.served_name, error)
        self._installed_digests.pop((old.name, old.digest), None)
        if old.path:
            await asyncio.to_thread(stage.remove, self.config.adapters_dir / old.name / old.digest)

    async def _unload(self, served_name: str) -> None:
        started = time.monotonic()
        try:
            found = await self._api().unload(served_name)
        except AgentFailure:
            self.metrics.unloads.labels("failed").inc()
            raise
        self.metrics.unloads.labels("ok" if found else "absent").inc()
        self.metrics.unload_seconds.observe(time.monotonic() - started)

    # DELETE

    async def delete(self, name: str) -> AdapterRecord | None:
        async with self._lock(name):
            record = self.records.get(name)
            if record is None:
                return None
            previous = record.state
            record.state = "Unloading"
            try:
                if previous != "Failed":
                    await self._unload(record.served_name)
            except VllmUnavailable:
                # A dead vLLM holds nothing; if it was only slow, the watch loop unloads it when it answers.
                self._pending_unloads.add(record.served_name)
            except AgentFailure as error:
                record.state = previous
                record.message = f"unload failed: {error}"
                raise self._fail(error) from None
            del self.records[name]
            self._probes.pop(name, None)
            self._installed_digests = {k: v for k, v in self._installed_digests.items() if k[0] != name}
            await asyncio.to_thread(stage.remove, self.config.adapters_dir / name)
            self._refresh_gauges()
            log.info("adapter %s (%s) unloaded and removed", name, record.served_name)
            return record

    # vLLM restarts

    async def _watch(self) -> None:
        while True:
            try:
                await self.check_vllm()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("vLLM check failed")
            await asyncio.sleep(self.config.watch_interval)

    async def check_vllm(self) -> None:
        """One pass of the watch loop: notice vLLM going away or coming back, and reload what it lost."""
        api = self._api()
        up = await api.health()
        self.metrics.vllm_up.set(1 if up else 0)
        if not up:
            if self.vllm_up:
                log.warning("vLLM at %s stopped answering; adapters will be reloaded when it is back", api.base_url)
                self.metrics.vllm_restarts.inc()
            self.vllm_up = False
            for record in self.records.values():
                if record.state == "Loaded":
                    record.state, record.message = "Loading", "vLLM unavailable: reload when it is back"
            self._refresh_gauges()
            return
        try:
            models = await api.models()
        except AgentFailure:
            return
        self.vllm_up = True
        for served in list(self._pending_unloads):
            if served not in models:
                self._pending_unloads.discard(served)
                continue
            with contextlib.suppress(AgentFailure):
                await self._unload(served)
                self._pending_unloads.discard(served)
        # Records under a PUT or DELETE are left to that operation (and do not count against readiness).
        settled = [
            r
            for r in self.records.values()
            if r.path and r.state in ("Loaded", "Loading") and not self._lock(r.name).locked()
        ]
        lost = [r for r in settled if models.get(r.served_name) != r.path]
        if any(r.state == "Loaded" for r in lost):
            log.warning("vLLM lost %d adapters (restarted); reloading", len(lost))
            self.metrics.vllm_restarts.inc()
        self.reloading = bool(lost)
        for record in settled:
            if record.state == "Loading" and models.get(record.served_name) == record.path:
                record.state, record.message = "Loaded", None
        for record in lost:
            lock = self._lock(record.name)
            if lock.locked():
                continue  # a PUT or DELETE on it is under way and decides its fate
            async with lock:
                if self.records.get(record.name) is not record:
                    continue
                try:
                    await self._reload(record, trigger="reload")
                except VllmUnavailable:
                    self._refresh_gauges()
                    return
                except AgentFailure:
                    continue
        self.reloading = any(r.state == "Loading" and r.path for r in lost)
        self._refresh_gauges()

    async def _reload(self, record: AdapterRecord, trigger: str) -> None:
        final = self.config.adapters_dir / record.name / record.digest
        expected = self._installed_digests.get((record.name, record.digest), record.digest)
        try:
            try:
                await asyncio.to_thread(stage.verify_installed, final, expected, self.config)
            except AgentFailure:
                self.metrics.verifications.labels("failed").inc()
                raise
            self.metrics.verifications.labels("ok").inc()
            await self._load(record, trigger=trigger)
        except VllmUnavailable as error:
            record.state, record.message = "Loading", f"waiting for vLLM: {error.message}"
            raise
        except AgentFailure as error:
            record.state, record.reason, record.message, record.path = "Failed", error.reason, error.message, None
            await asyncio.to_thread(stage.remove, final)
            raise self._fail(error) from None
        log.info("adapter %s reloaded as %s", record.name, record.served_name)

    def snapshot(self) -> Iterator[AdapterRecord]:
        return iter(sorted(self.records.values(), key=lambda r: r.name))


def _manifest_base_model(folder: pathlib.Path) -> str | None:
    """The base model the loraops manifest says the adapter was trained on (the digest already covered it)."""
    try:
        manifest = read_manifest(folder) or {}
    except TrainerError:
        return None
    name = (manifest.get("baseModel") or {}).get("name")
    return str(name) if name else None
