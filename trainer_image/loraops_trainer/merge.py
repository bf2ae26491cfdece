"""`loraops_trainer merge`: fold an adapter into its base model (PEFT's `merge_and_unload`).

A merged model serves without LoRA overhead but is a full copy of the weights; the choice between merged and
dynamic serving is the platform's. The output carries a manifest with merge state `merged` and the digests that
tie it to its inputs: the adapter's (what a LoraAdapter pins) and the base weights', both by the digest rule.
A qlora adapter is merged into the full-precision base: the 4-bit weights were only a training-time device.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

from .errors import ConfigError
from .manifest import build_manifest, hash_directory, read_manifest, verify_directory, write_manifest
from .progress import Clock, Reporter
from .storage import fetch_dir, output_store


def merge(
    *,
    adapter: str,
    base_model: str,
    output: str,
    base_model_name: str | None = None,
    dtype: str = "auto",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reporter = reporter or Reporter()
    clock = Clock()
    store = output_store(output)
    with tempfile.TemporaryDirectory(prefix="loraops-merge-") as tmp:
        work = pathlib.Path(tmp)
        adapter_dir = fetch_dir(adapter, work, reason_missing="AdapterNotFound")
        adapter_manifest = read_manifest(adapter_dir)
        if adapter_manifest is not None:
            check = verify_directory(adapter_dir)  # hashes the files once: its digest is the adapter's
            check.raise_for_problems(adapter)
            adapter_digest = check.digest
        else:
            adapter_digest, _ = hash_directory(adapter_dir)
        existing = store.read_manifest()
        if existing is not None and existing.get("adapter", {}).get("digest") != adapter_digest:
            raise ConfigError(
                "OutputHoldsAnotherModel",
                f"{output} already holds a merged model of another adapter; choose another output",
            )
        base_dir = fetch_dir(base_model, work, reason_missing="BaseModelNotFound")
        if not (base_dir / "config.json").is_file():
            raise ConfigError("BaseModelNotFound", f"{base_model}: no model there (config.json missing)")
        base_digest, _ = hash_directory(base_dir)
        store.probe_writable()
        reporter.emit("started", adapter=adapter, adapter_digest=adapter_digest, base_model=base_model)

        torch_dtype: Any = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch_dtype)
        try:
            merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        except Exception as error:
            raise ConfigError("AdapterInvalid", f"{adapter}: cannot apply it to {base_model} ({error})") from None
        staging = store.staging_dir("merged")
        merged.save_pretrained(str(staging), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(staging))

        name = base_model_name or (adapter_manifest or {}).get("baseModel", {}).get("name") or base_model
        adapter_section: dict[str, Any] = {"uri": adapter, "digest": adapter_digest}
        if adapter_manifest is not None:
            for key in ("method", "loraPlusRatio", "lora", "dataset", "release"):
                if key in adapter_manifest:
                    adapter_section[key] = adapter_manifest[key]
        manifest = build_manifest(
            staging,
            kind="merged-model",
            merge_state="merged",
            baseModel={"name": name, "uri": base_model, "weightsDigest": base_digest},
            adapter=adapter_section,
        )
        write_manifest(staging, manifest)
        store.publish_adapter(staging)
    result = {
        "status": "succeeded",
        "output_uri": output,
        "digest": manifest["digest"],
        "adapter_digest": adapter_digest,
        "base_digest": base_digest,
        "merge_state": "merged",
        "seconds": clock.elapsed(),
    }
    reporter.emit("result", **result)
    return result
