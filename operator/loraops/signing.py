"""`loraops sign DIR --key KEY.pem` and `loraops verify DIR --public-key PUB.pem`: OpenSSF model signing of an
adapter folder, for pipelines that sign in CI before `kubectl apply` (see docs/security.md).

Both wrap `loraops_trainer.signing`, the code the trainer signs with and the agent verifies with, so a folder
signed here verifies in the agent exactly as one signed at training time. Output is one JSON object on stdout;
the exit code is 0 (ok), 1 (verification failed) or 2 (usage).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from loraops.cli import Command


def _sign(args: argparse.Namespace) -> int:
    from loraops_trainer.errors import TrainerError
    from loraops_trainer.manifest import hash_directory
    from loraops_trainer.signing import sign_folder, signature_path

    folder = pathlib.Path(args.directory)
    if not folder.is_dir():
        print(f"loraops sign: {folder}: not a folder", file=sys.stderr)
        return 2
    signature = pathlib.Path(args.signature) if args.signature else None
    try:
        facts = sign_folder(
            folder,
            private_key=pathlib.Path(args.key),
            certificate=pathlib.Path(args.certificate) if args.certificate else None,
            certificate_chain=[pathlib.Path(c) for c in args.certificate_chain or []],
            signature=signature,
        )
    except TrainerError as error:
        print(json.dumps({"event": "sign", "ok": False, "reason": error.reason, "message": error.message}))
        return 1
    digest, _ = hash_directory(folder)
    written = signature_path(folder, signature)
    # The digest is printed too: it is what `source.sha256` pins, unchanged by the signature.
    print(json.dumps({"event": "sign", "ok": True, "signature": str(written), "digest": digest, **facts.as_dict()}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from loraops_trainer.errors import TrainerError
    from loraops_trainer.signing import verify_folder

    folder = pathlib.Path(args.directory)
    if not folder.is_dir():
        print(f"loraops verify: {folder}: not a folder", file=sys.stderr)
        return 2
    if sum(bool(x) for x in (args.public_key, args.certificate_chain, args.sigstore_identity)) != 1:
        print(
            "loraops verify: give exactly one of --public-key, --certificate-chain, --sigstore-identity",
            file=sys.stderr,
        )
        return 2
    try:
        facts = verify_folder(
            folder,
            public_key=pathlib.Path(args.public_key) if args.public_key else None,
            certificate_chain=[pathlib.Path(c) for c in args.certificate_chain or []],
            sigstore_identity=args.sigstore_identity,
            sigstore_issuer=args.sigstore_issuer,
            signature=pathlib.Path(args.signature) if args.signature else None,
        )
    except TrainerError as error:
        print(json.dumps({"event": "verify", "ok": False, "reason": error.reason, "message": error.message}))
        return 1
    print(json.dumps({"event": "verify", "ok": True, **facts.as_dict()}))
    return 0


def add_signing_commands(sub: Any) -> dict[str, Command]:
    sign = sub.add_parser("sign", help="sign an adapter folder (OpenSSF model signing; writes DIR/model.sig)")
    sign.add_argument("directory", help="the adapter folder")
    sign.add_argument("--key", required=True, help="PEM EC private key (P-256/P-384/P-521)")
    sign.add_argument("--signature", help="where to write the signature (default: DIR/model.sig)")
    sign.add_argument("--certificate", help="sign with this certificate for --key (PEM)")
    sign.add_argument("--certificate-chain", action="append", help="intermediate certificates (PEM, repeatable)")

    verify = sub.add_parser("verify", help="verify an adapter folder against its signature (as the agent does)")
    verify.add_argument("directory", help="the adapter folder")
    verify.add_argument("--public-key", help="PEM public key of the signer")
    verify.add_argument("--certificate-chain", action="append", help="PEM CA chain the signer's certificate chains to")
    verify.add_argument("--sigstore-identity", help="Sigstore keyless: the signer identity (needs network)")
    verify.add_argument("--sigstore-issuer", help="Sigstore keyless: the identity's OIDC issuer")
    verify.add_argument("--signature", help="the signature file (default: DIR/model.sig)")
    return {"sign": _sign, "verify": _verify}
