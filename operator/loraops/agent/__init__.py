"""The loraops agent: the sidecar in each vLLM pod that downloads, verifies, loads and reloads adapters.

The operator talks to it through `loraops.agent.client.AgentClient`; see docs/agent.md for the HTTP API.
"""
