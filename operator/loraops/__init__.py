"""loraops: a Kubernetes operator for the whole life of LoRA adapters on vLLM."""

__version__ = "0.1.0"
