"""`loraops sign` / `loraops verify` and the rules they share with the trainer and the agent."""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from loraops.cli import main
from loraops_trainer.manifest import build_manifest, hash_directory, write_manifest
from loraops_trainer.signing import SIGNATURE_FILE, SignatureError, verify_folder
from tests.signing_support import assert_no_key_material, make_keypair

pytestmark = pytest.mark.adapters


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def test_sign_then_verify_and_the_digest_pin_is_unchanged_by_signing(
    tmp_path: pathlib.Path, new_adapter: Callable[..., tuple[pathlib.Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = make_keypair(tmp_path / "keys")
    root, digest_before = new_adapter(tmp_path / "a", manifest=True)
    code, signed = run(capsys, "sign", str(root), "--key", str(keys.private))
    assert code == 0 and signed["ok"] and (root / SIGNATURE_FILE).is_file()
    assert signed["digest"] == digest_before == hash_directory(root)[0], "a signature must not change the pin"
    assert_no_key_material("sign output", signed, keys)
    code, verified = run(capsys, "verify", str(root), "--public-key", str(keys.public))
    assert code == 0 and verified["subjectDigest"] == signed["subjectDigest"] and verified["signer"] == signed["signer"]
    # The loraops manifest (written or rewritten after signing) is outside the signature, as documented.
    write_manifest(root, build_manifest(root, kind="adapter", merge_state="unmerged"))
    assert run(capsys, "verify", str(root), "--public-key", str(keys.public))[0] == 0

    (root / "adapter_config.json").write_text("{}", encoding="utf-8")
    code, failed = run(capsys, "verify", str(root), "--public-key", str(keys.public))
    assert code == 1 and failed["reason"] == "SignatureInvalid" and "adapter_config.json" in failed["message"]


def test_an_externally_signed_plain_peft_folder_verifies_with_the_signature_copied_in(
    tmp_path: pathlib.Path, new_adapter: Callable[..., tuple[pathlib.Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """An external pipeline signs with model-signing itself, its signature outside the folder, then ships it as
    model.sig: the agent's rule must accept it (the signature's own file is never an unsigned extra)."""
    from model_signing import signing

    keys = make_keypair(tmp_path / "keys")
    root, _ = new_adapter(tmp_path / "peft", manifest=False)
    outside = tmp_path / "pipeline.sig"
    signing.Config().use_elliptic_key_signer(private_key=keys.private).sign(root, outside)
    shutil.copy(outside, root / SIGNATURE_FILE)
    facts = verify_folder(root, public_key=keys.public)
    assert facts.method == "key" and set(facts.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert run(capsys, "verify", str(root), "--public-key", str(keys.public), "--signature", str(outside))[0] == 0


def test_a_signature_that_leaves_out_an_adapter_file_does_not_pass_for_the_adapter(
    tmp_path: pathlib.Path, new_adapter: Callable[..., tuple[pathlib.Path, str]]
) -> None:
    from model_signing import hashing, signing

    keys = make_keypair(tmp_path / "keys")
    root, _ = new_adapter(tmp_path / "peft", manifest=False)
    hashing_config = hashing.Config().set_ignored_paths(paths=["adapter_model.safetensors", SIGNATURE_FILE])
    signing.Config().use_elliptic_key_signer(private_key=keys.private).set_hashing_config(hashing_config).sign(
        root, root / SIGNATURE_FILE
    )
    with pytest.raises(SignatureError) as caught:
        verify_folder(root, public_key=keys.public)
    assert caught.value.reason == "SignatureInvalid" and "adapter_model.safetensors" in caught.value.message


def test_verify_needs_exactly_one_trust_root(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = make_keypair(tmp_path / "keys")
    (tmp_path / "d").mkdir()
    assert main(["verify", str(tmp_path / "d")]) == 2
    assert main(["verify", str(tmp_path / "d"), "--public-key", str(keys.public), "--certificate-chain", "x"]) == 2
    code, missing = run(capsys, "verify", str(tmp_path / "d"), "--public-key", str(keys.public))
    assert code == 1 and missing["reason"] == "SignatureMissing"


def test_sign_with_a_key_that_is_not_a_key_fails_cleanly(
    tmp_path: pathlib.Path, new_adapter: Callable[..., tuple[pathlib.Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = new_adapter(tmp_path / "a")
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a key", encoding="utf-8")
    code, failed = run(capsys, "sign", str(root), "--key", str(bogus))
    assert code == 1 and failed["reason"] == "SigningFailed" and not (root / SIGNATURE_FILE).exists()


def test_the_agent_flag_require_signed_reaches_the_config(tmp_path: pathlib.Path) -> None:
    import argparse

    from loraops.agent.cli import add_agent_command, config_from_args

    parser = argparse.ArgumentParser()
    add_agent_command(parser.add_subparsers())
    base = ["agent", "--adapters-dir", str(tmp_path)]
    assert config_from_args(parser.parse_args(base)).require_signed is False
    assert config_from_args(parser.parse_args([*base, "--require-signed"])).require_signed is True
