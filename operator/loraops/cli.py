"""The `loraops` command line."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


def _crds(args: argparse.Namespace) -> int:
    from loraops.api.crd import write_crds
    from loraops.api.docs import api_reference

    for path in write_crds(pathlib.Path(args.out)):
        print(f"wrote {path}")
    if args.docs:
        docs = pathlib.Path(args.docs)
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(api_reference(), encoding="utf-8")
        print(f"wrote {docs}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import yaml

    from loraops.api.kinds import KINDS_BY_NAME
    from loraops.api.validation import ManifestInvalid, validate

    def builtin_problem(doc: dict[str, object]) -> str | None:
        try:
            import kubernetes_validate
        except ImportError:
            return None
        try:
            kubernetes_validate.validate(doc, args.kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            return str(err).splitlines()[0]
        return None

    failures = 0
    for file in args.files:
        for path in sorted(pathlib.Path(file).glob("*.yaml")) if pathlib.Path(file).is_dir() else [pathlib.Path(file)]:
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if not doc:
                    continue
                label = f"{path}: {doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
                if doc.get("kind") not in KINDS_BY_NAME:
                    problem = builtin_problem(doc)
                    failures += problem is not None
                    print(f"{label}: INVALID\n  {problem}" if problem else f"{label}: valid")
                    continue
                try:
                    validate(doc)
                except ManifestInvalid as err:
                    failures += 1
                    print(f"{label}: INVALID")
                    for error in err.errors:
                        print(f"  {error}")
                else:
                    print(f"{label}: valid")
    return 1 if failures else 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="loraops", description="LoRA adapters on vLLM, from training to traffic.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Command] = {}

    crds = sub.add_parser("crds", help="write the CRDs (and the API reference) generated from loraops.api")
    crds.add_argument("--out", default="crds", help="folder for the CRD YAML files (default: crds)")
    crds.add_argument("--docs", help="also write the API reference (Markdown) to this file")
    commands["crds"] = _crds

    validate = sub.add_parser("validate", help="check manifests offline as the API server would (schema + CEL)")
    validate.add_argument("-f", "--filename", dest="files", action="append", required=True, help="file or folder")
    validate.add_argument("--kube-version", default="1.33", help="schema version for built-in kinds")
    commands["validate"] = _validate

    from loraops.runtime import add_operator_command

    commands["operator"] = add_operator_command(sub)

    from loraops.agent.cli import add_agent_command, add_digest_command

    commands["agent"] = add_agent_command(sub)
    commands["digest"] = add_digest_command(sub)
    from loraops.signing import add_signing_commands

    commands.update(add_signing_commands(sub))
    from loraops.router.cli import add_router_command

    commands["router"] = add_router_command(sub)
    from loraops.devmode.cli import add_dev_command

    commands["dev"] = add_dev_command(sub)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
