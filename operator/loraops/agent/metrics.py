"""The agent's Prometheus metrics (prefix `loraops_agent_`), in a registry per agent so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.downloads = Counter(
            "loraops_agent_downloads_total",
            "Artifact downloads by source scheme and result.",
            ["source", "result"],
            registry=r,
        )
        self.download_bytes = Counter(
            "loraops_agent_download_bytes_total", "Bytes written by successful downloads.", ["source"], registry=r
        )
        self.download_seconds = Histogram(
            "loraops_agent_download_duration_seconds",
            "Time to download one artifact.",
            ["source"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.verifications = Counter(
            "loraops_agent_verifications_total", "Digest verifications by result (ok, failed).", ["result"], registry=r
        )
        self.verification_seconds = Histogram(
            "loraops_agent_verification_duration_seconds",
            "Time to verify one artifact.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "loraops_agent_loads_total",
            "vLLM load calls by trigger (put, replace, reload) and result (ok, failed).",
            ["trigger", "result"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "loraops_agent_load_duration_seconds", "Duration of vLLM's load call.", buckets=DURATION_BUCKETS, registry=r
        )
        self.unloads = Counter(
            "loraops_agent_unloads_total", "vLLM unload calls by result (ok, absent, failed).", ["result"], registry=r
        )
        self.unload_seconds = Histogram(
            "loraops_agent_unload_duration_seconds",
            "Duration of vLLM's unload call.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "loraops_agent_failures_total", "Refused or failed operations by reason.", ["reason"], registry=r
        )
        self.adapters_loaded = Gauge(
            "loraops_agent_adapters_loaded", "Adapters this agent holds loaded in vLLM now.", registry=r
        )
        self.adapter_info = Gauge(
            "loraops_agent_adapter_info",
            "1 for each adapter loaded, with its served name, short digest (12 hex) and rank (residency).",
            ["name", "served_name", "digest", "rank"],
            registry=r,
        )
        self.adapter_effective = Gauge(
            "loraops_agent_adapter_effective",
            "Per loaded adapter: 1 when the effect probe saw it answer unlike the base model, 0 when it did not "
            "(NoEffect); absent when not probed or the probe was inconclusive.",
            ["name", "served_name"],
            registry=r,
        )
        self.probes = Counter(
            "loraops_agent_probes_total",
            "Effect probes by result (effective, no_effect, inconclusive, failed, skipped).",
            ["result"],
            registry=r,
        )
        self.probe_seconds = Histogram(
            "loraops_agent_probe_latency_seconds",
            "Latency of an adapter's first probe request after a load (the cold request the probe pre-warms).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.conversions = Counter(
            "loraops_agent_conversions_total",
            "Opted-in pickle-to-safetensors conversions by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.vllm_up = Gauge("loraops_agent_vllm_up", "1 when the last vLLM health check passed.", registry=r)
        self.vllm_restarts = Counter(
            "loraops_agent_vllm_restarts_total",
            "Times vLLM was seen to lose its adapters (health went down, or adapters vanished) and was reloaded.",
            registry=r,
        )
