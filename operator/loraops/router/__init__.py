"""`loraops router`: the OpenAI-compatible data plane in front of vLLM.

It routes each request by `model` and tenant to an adapter (sticky weighted choice), mirrors a share to a
shadow adapter, falls back to the base model when an adapter fails before the first byte, and exports
per-adapter Prometheus metrics. It reads its route table from a file or from AdapterRoute status; it imports
no kopf and no controller code, so it can run as a small, separate Deployment.
"""
