"""`loraops agent` (the sidecar) and `loraops digest DIR` (the digest to pin in `source.sha256`)."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any

from loraops.agent.config import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, AgentConfig


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    token = pathlib.Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
    return AgentConfig(
        adapters_dir=pathlib.Path(args.adapters_dir),
        vllm_url=args.vllm_url,
        vllm_adapters_dir=pathlib.Path(args.vllm_adapters_dir) if args.vllm_adapters_dir else None,
        pvc_root=pathlib.Path(args.pvc_root),
        credentials_dir=pathlib.Path(args.credentials_dir) if args.credentials_dir else None,
        file_roots=[pathlib.Path(p) for p in args.file_root] if args.file_root else None,
        max_bytes=args.max_bytes,
        max_files=args.max_files,
        watch_interval=args.watch_interval,
        vllm_timeout=args.vllm_timeout,
        token=token or None,
        schemes=tuple(args.scheme) if args.scheme else ("file", "pvc", "s3"),
        base_model_dir=pathlib.Path(args.base_model_dir) if args.base_model_dir else None,
        unknown_architecture=args.unknown_architecture,
        lora_embeddings=args.lora_embeddings,
        probe=args.probe,
        converter_python=args.converter_python,
        require_signed=args.require_signed,
    )


def _agent(args: argparse.Namespace) -> int:
    from aiohttp import web

    from loraops.agent.server import build_app
    from loraops.agent.service import Agent

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = build_app(Agent(config_from_args(args)))
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


def add_agent_command(sub: Any) -> Any:
    parser = sub.add_parser("agent", help="run the agent sidecar of a vLLM pod (download, verify, load adapters)")
    parser.add_argument("--adapters-dir", required=True, help="folder shared with the vLLM container")
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="vLLM's base URL (localhost)")
    parser.add_argument("--vllm-adapters-dir", help="the adapters folder as vLLM mounts it, if at another path")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")
    parser.add_argument("--port", type=int, default=8090, help="listen port")
    parser.add_argument("--pvc-root", default="/mnt/pvc", help="pvc://CLAIM/PATH is read from PVC_ROOT/CLAIM/PATH")
    parser.add_argument("--credentials-dir", help="Secrets mounted as CREDENTIALS_DIR/<secret>/<key>")
    parser.add_argument("--file-root", action="append", help="allow file:// only under this folder (repeatable)")
    parser.add_argument("--scheme", action="append", choices=["file", "pvc", "s3"], help="enabled sources (repeatable)")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size limit of one adapter")
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="file-count limit of one adapter")
    parser.add_argument("--watch-interval", type=float, default=2.0, help="seconds between vLLM health checks")
    parser.add_argument("--vllm-timeout", type=float, default=30.0, help="seconds allowed for one vLLM call")
    parser.add_argument("--token-file", help="file holding the bearer token /v1 requests must carry")
    parser.add_argument(
        "--base-model-dir", help="the served model's folder as the agent sees it (default: vLLM's model root)"
    )
    parser.add_argument(
        "--unknown-architecture",
        choices=["allow", "refuse"],
        default="allow",
        help="a base architecture without a module table: load unchecked (probe still runs) or refuse",
    )
    parser.add_argument(
        "--lora-embeddings", action="store_true", help="accept LoRA on embed_tokens/lm_head (vLLM applies it)"
    )
    parser.add_argument(
        "--no-probe", dest="probe", action="store_false", help="skip the effect probe after loads (not advised)"
    )
    parser.add_argument(
        "--require-signed",
        action="store_true",
        help="refuse adapters whose PUT asks for no signature check (reason SignatureMissing)",
    )
    parser.add_argument("--converter-python", help="Python with torch + safetensors for convertPickle opt-ins")
    parser.add_argument("-v", "--verbose", action="store_true")
    return _agent


def _digest(args: argparse.Namespace) -> int:
    from loraops.agent.errors import AgentFailure
    from loraops.agent.safety import check_tree
    from loraops_trainer.manifest import hash_directory

    root = pathlib.Path(args.directory)
    if not root.is_dir():
        print(f"loraops digest: {root}: not a folder", file=sys.stderr)
        return 2
    try:
        # The agent refuses symlinks and over-limit folders: say so now, not after the digest is pinned.
        check_tree(root, max_files=args.max_files, max_bytes=args.max_bytes, skip_hidden=True)
    except AgentFailure as error:
        print(f"loraops digest: {root}: {error} (the agent would refuse this folder)", file=sys.stderr)
        return 1
    digest, entries = hash_directory(root)
    if args.json:
        files = [{"name": e.name, "sha256": e.sha256, "size": e.size} for e in entries]
        print(json.dumps({"digest": digest, "size": sum(e.size for e in entries), "files": files}, indent=2))
    else:
        print(digest)
    return 0


def add_digest_command(sub: Any) -> Any:
    parser = sub.add_parser("digest", help="print an adapter folder's digest (for source.sha256)")
    parser.add_argument("directory", help="the adapter folder (a loraops output or a plain PEFT folder)")
    parser.add_argument("--json", action="store_true", help="also list every file with its sha256 and size")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help=argparse.SUPPRESS)
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help=argparse.SUPPRESS)
    return _digest
