"""Keys for signing tests, generated on the fly (EC P-256, as OpenSSF model signing expects), and a scanner
that fails a test when key material shows up where it must not (status, events, logs, Job specs)."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class KeyPair:
    private: pathlib.Path
    public: pathlib.Path

    @property
    def private_pem(self) -> str:
        return self.private.read_text(encoding="utf-8")

    @property
    def public_pem(self) -> str:
        return self.public.read_text(encoding="utf-8")

    def secret_fragments(self) -> list[str]:
        """Pieces of the private key that must never appear anywhere: its base64 body lines and the marker."""
        body = [line for line in self.private_pem.splitlines() if line and not line.startswith("-----")]
        return ["PRIVATE KEY", *body]


def make_keypair(folder: pathlib.Path, name: str = "signer") -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}.key.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return KeyPair(private=private, public=public)


def assert_no_key_material(where: str, value: Any, keys: KeyPair) -> None:
    """Fail when any fragment of the private key is in `value` (serialised as JSON when not a string)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    leaked = [fragment for fragment in keys.secret_fragments() if fragment in text]
    assert not leaked, f"private key material in {where}: {leaked[:1]}"
