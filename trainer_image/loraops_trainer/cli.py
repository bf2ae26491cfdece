"""`python -m loraops_trainer {train,verify,evaluate,merge}`.

Exit codes (see errors.py): 0 success, 1 runtime failure (retry resumes), 2 command-line usage, 3 bad input
(config, data, model, output; retrying cannot help), 4 integrity (a digest does not match), 143 stopped by
SIGTERM after a checkpoint. Every failure also prints an `{"event":"error",...}` line on stdout and writes it to
the termination log.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import errors
from .progress import Reporter, write_termination_log


def _quiet_libraries() -> None:
    """stdout belongs to the JSON lines: libraries' progress bars and chatter go away or to stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - evaluate over HTTP does not need transformers
        pass


DEFAULT_MASTER_PORT = 29500


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _launch(args: argparse.Namespace) -> int:
    """Start `nproc_per_node` local workers (and join `nnodes` nodes) with torch's elastic launcher, then
    return the workers' own exit code: torchrun itself would turn every failure into 1, hiding whether a
    retry can help."""
    import socket
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if args.nnodes > 1 and not args.master_addr:
        raise errors.ConfigError("InvalidLaunch", "--nnodes > 1 needs --master-addr (the rank-0 node's address)")
    # Every node must name the same port; alone, any free one will do.
    port = args.master_port or (DEFAULT_MASTER_PORT if args.nnodes > 1 else 0)
    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    launch = LaunchConfig(
        min_nodes=args.nnodes,
        max_nodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        run_id=os.environ.get("LORAOPS_RUN_ID", uuid.uuid4().hex[:12]),
        rdzv_backend="static",
        rdzv_endpoint=f"{args.master_addr or '127.0.0.1'}:{port}",
        rdzv_configs={"rank": args.node_rank},
        max_restarts=0,
        start_method="spawn",
    )
    command = ["-m", "loraops_trainer", "train", "--config", str(args.config)]
    try:
        elastic_launch(launch, entrypoint=sys.executable)(*command)
    except ChildFailedError as failure:
        codes = sorted({f.exitcode for f in failure.failures.values()})
        for preferred in (errors.EXIT_CONFIG, errors.EXIT_INTEGRITY, errors.EXIT_PREEMPTED):
            if preferred in codes:
                return preferred
        return errors.EXIT_RUNTIME
    except SignalException as signalled:
        # The agent has passed the signal on to the workers and waited for them (each writes its part of the
        # checkpoint on SIGTERM); the pod is being stopped, which is not a failure of the run.
        if signalled.sigval == signal.SIGTERM:
            return errors.EXIT_PREEMPTED
        raise
    return errors.EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config

    config = load_train_config(args.config)
    if (args.nproc_per_node > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        return _launch(args)
    from .train import train

    result = train(config)
    if _rank() == 0:
        write_termination_log({"event": "result", "exit_code": 0, **result})
    return errors.EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import verify_directory

    report = verify_directory(pathlib.Path(args.directory), args.digest)
    Reporter().emit(**report.as_dict())
    report.raise_for_problems(args.directory)
    return errors.EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run_evaluation

    summary = run_evaluation(args.config, args.output)
    write_termination_log({"event": "result", "exit_code": 0, **summary})
    return errors.EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge

    result = merge(
        adapter=args.adapter,
        base_model=args.base_model,
        output=args.output,
        base_model_name=args.base_model_name,
        dtype=args.dtype,
    )
    write_termination_log({"event": "result", "exit_code": 0, **result})
    return errors.EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(json.dumps({"event": "error", "exit_code": errors.EXIT_USAGE, "reason": "Usage", "message": message}))
        sys.exit(errors.EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m loraops_trainer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train an adapter from a config file")
    train.add_argument("--config", required=True, type=pathlib.Path, help="YAML or JSON (LoraTraining spec shape)")
    train.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node (GPUs)")
    train.add_argument("--nnodes", type=int, default=1, help="nodes taking part")
    train.add_argument("--node-rank", type=int, default=0, help="this node's index (an Indexed Job's index)")
    train.add_argument("--master-addr", default=None, help="rank-0 node's address (multi-node)")
    train.add_argument(
        "--master-port", type=int, default=0, help="rendezvous port (default: 29500 across nodes, a free one alone)"
    )
    train.set_defaults(handler=cmd_train)

    verify = commands.add_parser("verify", help="check an adapter directory against its manifest / a digest")
    verify.add_argument("directory")
    verify.add_argument("--digest", default=None, help="expected digest (64 hex, optionally 'sha256:'-prefixed)")
    verify.set_defaults(handler=cmd_verify)

    evaluate = commands.add_parser("evaluate", help="compare adapter and base on a golden set")
    evaluate.add_argument("--config", required=True, type=pathlib.Path)
    evaluate.add_argument("--output", default=None, type=pathlib.Path, help="write the full report here")
    evaluate.set_defaults(handler=cmd_evaluate)

    merge = commands.add_parser("merge", help="merge an adapter into its base model")
    merge.add_argument("--adapter", required=True, help="adapter directory (or s3:// / pvc:// uri)")
    merge.add_argument("--base-model", required=True, help="base model directory (or uri)")
    merge.add_argument("--output", required=True, help="directory for the merged model")
    merge.add_argument("--base-model-name", default=None, help="name recorded in the manifest")
    merge.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    merge.set_defaults(handler=cmd_merge)
    return parser


def _report_failure(reason: str, message: str, code: int) -> None:
    record = {"event": "error", "exit_code": code, "reason": reason, "message": message}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        record["rank"] = _rank()
    print(json.dumps(record), flush=True)
    print(f"loraops_trainer: {reason}: {message}", file=sys.stderr, flush=True)
    write_termination_log(record)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except errors.TrainerError as error:
        _report_failure(error.reason, error.message, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        _report_failure("Interrupted", "interrupted", 130)
        return 130
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        _report_failure("RuntimeError", f"{type(error).__name__}: {error}", errors.EXIT_RUNTIME)
        return errors.EXIT_RUNTIME
